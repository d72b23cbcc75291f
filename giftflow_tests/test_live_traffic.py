"""Live traffic on the production shape: redemptions for the same customers keep arriving while the
sensor's runs of their day are queued and running. Every customer must end with all of their redemptions,
with no run of the next day's backfill to mend it.

Real processes: a throwaway PostgreSQL, the repo's dagster.yaml, dagster-daemon and dagster-webserver,
the Cardivo and Stripe simulators on loopback.
"""

import random
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from giftflow_tests.harness import production_stack

CUSTOMERS = 12
REDEMPTIONS = 40
BURST_S = 20.0
SETTLE_S = 150.0
# Cardivo may list a change some seconds after its updated_at (a commit lands late, a till syncs late), and
# not in updated_at order: the sensor must still see every one.
YESTERDAY = (13, 26, 39)

pytestmark = pytest.mark.e2e  # the production stack: Dagster webserver, daemon and code server processes


def _lag(n: int) -> int:
    return 12 if n in YESTERDAY else 6 * (n % 2)


RUNS = """{ runsOrError(filter: {pipelineName: "giftcard_sync"}) { ... on Runs { results { runId status } } } }"""


def _fmt(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _redemption(n: int, email: str, amount: int, redeemed_at: datetime) -> dict:
    now = datetime.now(timezone.utc) - timedelta(seconds=_lag(n))
    return {
        "id": f"rdm_live_{n:03d}",
        "status": "completed",
        "amount": amount,
        "currency": "usd",
        "balance_after": 0,
        "stripe_customer_id": None,
        "location": "online",
        "gift_card": {
            "id": f"gc_live_{n:03d}",
            "code": f"CRDV-LIVE-{n:04d}-{1000 + n}",
            "initial_value": 50000,
            "currency": "usd",
        },
        "customer": {"email": f"  {email.upper()} ", "name": "Live Buyer", "phone": None},
        "redeemed_at": _fmt(redeemed_at),
        "updated_at": _fmt(now),
    }


def _expected(redemptions: list[dict]) -> dict:
    done = [r for r in redemptions if r["status"] == "completed"]
    if not done:
        return {"giftcard_redeemed_total": "0", "giftcard_redemptions": "0"}
    last = max(done, key=lambda r: (r["redeemed_at"], r["id"]))
    return {
        "giftcard_redeemed_total": str(sum(r["amount"] for r in done)),
        "giftcard_currency": "usd",
        "giftcard_redemptions": str(len(done)),
        "giftcard_last_redeemed_at": last["redeemed_at"],
        "giftcard_last4": last["gift_card"]["code"][-4:],
    }


def _gift_keys(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k.startswith("giftcard_")}


@pytest.mark.timeout(600)
def test_a_burst_of_changes_during_runs_reaches_stripe(postgres_url, tmp_path):
    today = datetime.now(timezone.utc).date()
    # Default sensor interval: ticks overlap the runs they start.
    with production_stack(
        postgres_url,
        tmp_path,
        [today - timedelta(days=30)],
        stripe_limit=25,
        redemptions_per_day=1,
        customers=8,
        sensor_interval_s=15,
    ) as stack:
        auth = {"Authorization": "Bearer sk_test_e2e"}
        emails = [f"live.{i}@example.com" for i in range(CUSTOMERS)]
        ids = {
            e: httpx.post(
                f"{stack.stripe_url}/v1/customers", data={"email": e, "metadata[keep]": "me"}, headers=auth
            ).json()["id"]
            for e in emails
        }
        for sensor in ("cardivo_redemptions_sensor", "stripe_events_sensor"):
            started = stack.dagster("sensor", "start", sensor)
            assert started.returncode == 0, started.stdout + started.stderr

        rng = random.Random(10)
        sent: dict[str, dict] = {}
        began = time.monotonic()
        now = datetime.now(timezone.utc)
        for n in range(REDEMPTIONS):
            email = emails[n % CUSTOMERS] if n < CUSTOMERS else rng.choice(emails)
            # Three of yesterday, reported only now; the rest of today (before now: Cardivo never sends the future).
            redeemed = (
                now - timedelta(days=1, minutes=n)
                if n in YESTERDAY
                else datetime.now(timezone.utc) - timedelta(seconds=_lag(n) + 1)
            )
            record = _redemption(n, email, rng.randrange(100, 5000), redeemed)
            httpx.post(f"{stack.cardivo_url}/_sim/redemptions", json=record).raise_for_status()
            sent[record["id"]] = record
            if n in (20, 30, 35):  # voids of earlier redemptions, while runs of their day are in flight
                victim = f"rdm_live_{n - 15:03d}"
                httpx.post(f"{stack.cardivo_url}/_sim/redemptions/{victim}/void").raise_for_status()
                sent[victim] = {**sent[victim], "status": "voided"}
            time.sleep(max(0.0, began + (n + 1) * BURST_S / REDEMPTIONS - time.monotonic()))
        last_change = time.monotonic()

        wanted = {
            ids[e]: _expected([r for r in sent.values() if r["customer"]["email"].strip().lower() == e]) for e in emails
        }
        wrong = wanted
        while time.monotonic() - last_change < SETTLE_S:
            got = {cid: _gift_keys(stack.stripe.get(cid)["metadata"]) for cid in wanted}
            wrong = {cid: (got[cid], want) for cid, want in wanted.items() if got[cid] != want}
            if not wrong:
                break
            time.sleep(1)
        settled = time.monotonic() - last_change
        assert not wrong, f"{len(wrong)} customers not up to date {settled:.0f} s after the last change: {wrong}"
        # Other metadata keys survive every write.
        assert all(stack.stripe.get(cid)["metadata"]["keep"] == "me" for cid in wanted)
        runs = stack.graphql(RUNS)["runsOrError"]["results"]
        print(
            f"\nall {CUSTOMERS} customers right {settled:.1f} s after the last of {REDEMPTIONS} changes; "
            f"{len(runs)} giftcard_sync runs: {sorted(r['status'] for r in runs)}"
        )
