"""The production shape end to end: a throwaway PostgreSQL, the repo's dagster.yaml, dagster-daemon and
dagster-webserver as real processes on loopback, against the simulators.

1. The Cardivo sensor is switched on, a redemption is created, and the test waits until Stripe shows it.
2. A 30-day backfill of giftcard_sync is launched through the webserver's GraphQL API; the test checks it
   completes, that no more runs ran at once than dagster.yaml allows, and that the Stripe simulator (limit
   set to giftflow's own) saw no rate-limit violation.
"""

import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from giftflow_tests.harness import (
    launch_backfill,
    most_at_once,
    production_stack,
    wait_for_backfill,
)

STRIPE_LIMIT = 10  # requests/s the simulator allows; giftflow is given the same budget
BACKFILL_DAYS = 30
RUN_LIMIT = 4  # dagster.yaml: giftflow/job=giftcard_sync

pytestmark = pytest.mark.e2e  # the production stack: Dagster webserver, daemon and code server processes


@pytest.mark.timeout(900)
def test_sensor_then_backfill_on_the_production_instance(postgres_url, tmp_path):
    today = datetime.now(timezone.utc).date()
    days = [today - timedelta(days=n) for n in range(BACKFILL_DAYS, 0, -1)]
    with production_stack(postgres_url, tmp_path, days, stripe_limit=STRIPE_LIMIT) as stack:
        # 1. Sensor on: a redemption for a new Stripe customer reaches Stripe with nobody running anything.
        customer = httpx.post(f"{stack.stripe_url}/v1/customers", data={"email": "e2e.buyer@example.com"},
                              headers={"Authorization": "Bearer sk_test_e2e"}).json()
        started = stack.dagster("sensor", "start", "cardivo_redemptions_sensor")
        assert started.returncode == 0, started.stdout + started.stderr
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        redemption = {"id": "rdm_e2e_1", "status": "completed", "amount": 1234, "currency": "usd",
                      "balance_after": 0, "stripe_customer_id": None, "location": "online",
                      "gift_card": {"id": "gc_e2e", "code": "CRDV-E2E0-E2E0-7777", "initial_value": 5000,
                                    "currency": "usd"},
                      "customer": {"email": " E2E.Buyer@example.com", "name": "E2E Buyer", "phone": None},
                      "redeemed_at": now, "updated_at": now}
        httpx.post(f"{stack.cardivo_url}/_sim/redemptions", json=redemption).raise_for_status()
        created, meta = time.monotonic(), {}
        while time.monotonic() - created < 150:
            meta = stack.stripe.get(customer["id"])["metadata"]
            if meta.get("giftcard_redeemed_total") == "1234":
                break
            time.sleep(0.5)
        assert meta == {"giftcard_redeemed_total": "1234", "giftcard_currency": "usd", "giftcard_redemptions": "1",
                        "giftcard_last_redeemed_at": now, "giftcard_last4": "7777"}, stack.log("daemon")
        print(f"\nsensor path: redemption -> Stripe customer updated in {time.monotonic() - created:.1f} s")
        stack.dagster("sensor", "stop", "cardivo_redemptions_sensor")

        # 2. A 30-day backfill through the webserver's GraphQL API.
        stack.stripe.reset_stats()
        began = time.monotonic()
        backfill_id = launch_backfill(stack, "giftcard_sync", [d.isoformat() for d in days])
        status, runs = wait_for_backfill(stack, backfill_id, BACKFILL_DAYS, timeout=600)
        wall = time.monotonic() - began
        assert status in ("COMPLETED", "COMPLETED_SUCCESS"), (status, stack.log("daemon"))
        assert len(runs) == BACKFILL_DAYS and {r["status"] for r in runs} == {"SUCCESS"}
        assert most_at_once(runs) <= RUN_LIMIT
        stats = stack.stripe.stats()
        assert stats["rate_limited"] == 0  # no call past the limit, across every concurrent run
        durations = sorted(r["end"] - r["start"] for r in runs)
        print(f"run durations: median {durations[len(durations) // 2]:.1f} s, max {durations[-1]:.1f} s")
        print(f"backfill: {BACKFILL_DAYS} runs in {wall:.0f} s, at most {most_at_once(runs)} at once, "
              f"{stats['requests']} Stripe calls ({stats['writes']} writes), 0 rate-limit violations")
