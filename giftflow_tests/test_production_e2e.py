"""The production shape end to end: a throwaway PostgreSQL, the repo's dagster.yaml, dagster-daemon and
dagster-webserver as real processes on loopback, against the simulators.

1. The Cardivo sensor is switched on, a redemption is created, and the test waits until Stripe shows it.
2. A 12-day backfill of giftcard_sync is launched through the webserver's GraphQL API; the test checks it
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
BACKFILL_DAYS = 12  # more runs than the queue lets run at once (4), in CI time
RUN_LIMIT = 4  # dagster.yaml: giftflow/job=giftcard_sync

pytestmark = pytest.mark.e2e  # the production stack: Dagster webserver, daemon and code server processes


@pytest.mark.timeout(900)
def test_sensor_then_backfill_on_the_production_instance(postgres_url, tmp_path):
    today = datetime.now(timezone.utc).date()
    days = [today - timedelta(days=n) for n in range(BACKFILL_DAYS, 0, -1)]
    with production_stack(postgres_url, tmp_path, days, stripe_limit=STRIPE_LIMIT) as stack:
        # 1. Sensor on: a redemption for a new Stripe customer reaches Stripe with nobody running anything.
        customer = httpx.post(
            f"{stack.stripe_url}/v1/customers",
            data={"email": "e2e.buyer@example.com"},
            headers={"Authorization": "Bearer sk_test_e2e"},
        ).json()
        started = stack.dagster("sensor", "start", "cardivo_redemptions_sensor")
        assert started.returncode == 0, started.stdout + started.stderr
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        redemption = {
            "id": "rdm_e2e_1",
            "status": "completed",
            "amount": 1234,
            "currency": "usd",
            "balance_after": 0,
            "stripe_customer_id": None,
            "location": "online",
            "gift_card": {"id": "gc_e2e", "code": "CRDV-E2E0-E2E0-7777", "initial_value": 5000, "currency": "usd"},
            "customer": {"email": " E2E.Buyer@example.com", "name": "E2E Buyer", "phone": None},
            "redeemed_at": now,
            "updated_at": now,
        }
        httpx.post(f"{stack.cardivo_url}/_sim/redemptions", json=redemption).raise_for_status()
        created, meta = time.monotonic(), {}
        while time.monotonic() - created < 150:
            meta = stack.stripe.get(customer["id"])["metadata"]
            if meta.get("giftcard_redeemed_total") == "1234":
                break
            time.sleep(0.5)
        assert meta == {
            "giftcard_redeemed_total": "1234",
            "giftcard_currency": "usd",
            "giftcard_redemptions": "1",
            "giftcard_last_redeemed_at": now,
            "giftcard_last4": "7777",
        }, stack.log("daemon")
        print(f"\nsensor path: redemption -> Stripe customer updated in {time.monotonic() - created:.1f} s")
        stack.dagster("sensor", "stop", "cardivo_redemptions_sensor")

        # 2. A 12-day backfill through the webserver's GraphQL API.
        stack.stripe.reset_stats()
        began = time.monotonic()
        backfill_id = launch_backfill(stack, "giftcard_sync", [d.isoformat() for d in days])
        status, runs = wait_for_backfill(stack, backfill_id, 1, timeout=600)
        wall = time.monotonic() - began
        assert status in ("COMPLETED", "COMPLETED_SUCCESS"), (status, stack.log("daemon"))
        # The gift-card assets backfill a range as one run (BackfillPolicy.single_run): one run, every day.
        assert len(runs) == 1 and {r["status"] for r in runs} == {"SUCCESS"}
        assert most_at_once(runs) <= RUN_LIMIT
        stats = stack.stripe.stats()
        assert stats["rate_limited"] == 0  # no call past the limit, across every concurrent run
        durations = sorted(r["end"] - r["start"] for r in runs)
        print(f"run durations: median {durations[len(durations) // 2]:.1f} s, max {durations[-1]:.1f} s")
        print(
            f"backfill: {BACKFILL_DAYS} days in {len(runs)} run(s), {wall:.0f} s, at most {most_at_once(runs)} at once, "
            f"{stats['requests']} Stripe calls ({stats['writes']} writes), 0 rate-limit violations"
        )


WEBHOOK_SECRET = "whsec_e2e_grpc"


def _redemption(rid: str, email: str, amount: int) -> dict:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "id": rid,
        "status": "completed",
        "amount": amount,
        "currency": "usd",
        "balance_after": 0,
        "stripe_customer_id": None,
        "location": "online",
        "gift_card": {"id": f"gc_{rid}", "code": f"CRDV-GRPC-E2E0-{amount:04d}", "initial_value": 5000, "currency": "usd"},
        "customer": {"email": email, "name": None, "phone": None},
        "redeemed_at": now,
        "updated_at": now,
    }


def _until_in_stripe(stack, customer_id: str, amount: int, timeout: float = 150) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if stack.stripe.get(customer_id)["metadata"].get("giftcard_redeemed_total") == str(amount):
            return time.monotonic() - began
        time.sleep(0.2)
    raise AssertionError(f"{customer_id} not updated within {timeout} s:\n{stack.log('daemon')}")


@pytest.mark.timeout(900)
def test_the_grpc_topology_end_to_end(postgres_url, tmp_path):
    """deploy/'s shape on one machine: giftflow in its own gRPC code server, webserver and daemon reaching it
    through a `grpc_server` workspace, runs launched by the daemon through it; giftflow's default intervals."""
    import hashlib
    import hmac
    import json

    from giftflow.adapters.store import GiftflowStore
    from giftflow.webhooks import create_app
    from giftflow_simulators.server import BackgroundServer
    from giftflow_tests.harness import run_breakdown, run_timelines

    today = datetime.now(timezone.utc).date()
    days = [today - timedelta(days=n) for n in range(3, 0, -1)]
    with (
        production_stack(
            postgres_url,
            tmp_path,
            days,
            stripe_limit=STRIPE_LIMIT,
            sensor_interval_s=None,
            grpc=True,
            extra_env={"GIFTFLOW_CARDIVO_WEBHOOK_SECRET": WEBHOOK_SECRET},
        ) as stack,
        BackgroundServer(
            create_app(
                GiftflowStore(database_url=stack.env["GIFTFLOW_DATABASE_URL"]),
                cardivo_secret=WEBHOOK_SECRET,
                stripe_secret=None,
            )
        ) as receiver,
    ):
        assert "grpc_server" in stack.workspace.read_text() and stack.workspace.parent == tmp_path
        for sensor in ("cardivo_redemptions_sensor", "cardivo_webhook_sensor"):
            started = stack.dagster("sensor", "start", sensor)
            assert started.returncode == 0, started.stdout + started.stderr
        pushed, polled = (
            httpx.post(
                f"{stack.stripe_url}/v1/customers", data={"email": email}, headers={"Authorization": "Bearer sk_test_e2e"}
            ).json()
            for email in ("grpc.push@example.com", "grpc.poll@example.com")
        )

        # 1. Pushed: the receiver stores the delivery, cardivo_webhook_sensor requests the run within seconds.
        record = _redemption("rdm_grpc_push", "grpc.push@example.com", 1111)
        httpx.post(f"{stack.cardivo_url}/_sim/redemptions", json=record).raise_for_status()
        body = json.dumps(
            {"id": "evt_grpc_1", "type": "redemption.created", "created": record["updated_at"], "data": record}
        ).encode()
        ts = int(time.time())
        signature = hmac.new(WEBHOOK_SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        httpx.post(
            f"{receiver.base_url}/webhooks/cardivo", content=body, headers={"Cardivo-Signature": f"t={ts},v1={signature}"}
        ).raise_for_status()
        webhook_s = _until_in_stripe(stack, pushed["id"], 1111)

        # 2. Polled only: cardivo_redemptions_sensor finds it on its next 15 s tick.
        httpx.post(
            f"{stack.cardivo_url}/_sim/redemptions", json=_redemption("rdm_grpc_poll", "grpc.poll@example.com", 2222)
        ).raise_for_status()
        poll_s = _until_in_stripe(stack, polled["id"], 2222)
        for sensor in ("cardivo_redemptions_sensor", "cardivo_webhook_sensor"):
            stack.dagster("sensor", "stop", sensor)

        # 3. A backfill launched through the webserver, run by the daemon through the code server.
        backfill_id = launch_backfill(stack, "giftcard_sync", [d.isoformat() for d in days])
        status, runs = wait_for_backfill(stack, backfill_id, 1, timeout=300)
        assert status in ("COMPLETED", "COMPLETED_SUCCESS"), (status, stack.log("daemon"))
        assert len(runs) == 1 and {r["status"] for r in runs} == {"SUCCESS"}  # a range is one run

        timelines = run_timelines(stack, "giftcard_sync")
        code_port = int(stack.workspace.read_text().split("port: ")[1].split()[0])
        assert {(t["origin"], t["origin_port"]) for t in timelines} == {("GrpcServerCodeLocationOrigin", code_port)}
        sensor_runs = [t for t in timelines if t["tags"].get("giftflow/trigger")]
        # Whichever tick came first requested the pushed change's run; the other saw it queued or taken in.
        assert {t["tags"]["giftflow/trigger"] for t in sensor_runs} <= {
            "cardivo_webhook_sensor",
            "cardivo_redemptions_sensor",
        }
        assert stack.stripe.stats()["rate_limited"] == 0
        print(
            f"\ngRPC topology: code server on 127.0.0.1:{code_port}, {len(timelines)} giftcard_sync runs, all "
            f"launched by the daemon through it"
        )
        print(f"webhook path: redemption -> Stripe in {webhook_s:.1f} s; poll path: {poll_s:.1f} s")
        for t in timelines:
            parts = run_breakdown(t)
            print(
                f"run {t['tags'].get('giftflow/trigger', 'backfill')}: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
            )
