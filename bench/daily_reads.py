"""Stripe calls of one daily giftcard_sync run against the size of the Stripe account: the mirror step
(`refresh_mirror_for_range`, what the `stripe_customers` asset runs) and the writes, at N simulated customers,
with and without the Stripe events sensor keeping the mirror fresh. Uses the Stripe simulator directly (no
Dagster, no production stack).

    python bench/daily_reads.py [N ...] [--redemptions 200] [--relist-up-to 10000]

Per N, three runs of the same day against the same account:
- `first`: the mirror was never filled: the whole account is listed (N/100 calls), as once a day at most;
- `daily`: the mirror was listed less than a day ago and no events sensor runs: only the day's e-mails and
  linked ids the mirror lacks are looked up;
- `events`: the events sensor applied customer events within the last 2 minutes: no mirror reads at all.
A whole listing above --relist-up-to customers is not run (it takes minutes against the simulator): its calls are
computed as ceil(N/100) and marked `~`.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from giftflow.adapters.config_files import giftcard_sync_spec  # noqa: E402
from giftflow.adapters.store import GiftflowStore  # noqa: E402
from giftflow.adapters.stripe import StripeClient  # noqa: E402
from giftflow.services.giftcard_sync import plan_giftcard_day, refresh_mirror_for_range  # noqa: E402
from giftflow.services.sync_runner import run_planned  # noqa: E402
from giftflow_simulators import stripe as stripe_sim  # noqa: E402
from giftflow_simulators.server import BackgroundServer  # noqa: E402

DAY = datetime(2026, 11, 20, tzinfo=timezone.utc)


def customers(n: int) -> list[dict]:
    base = int((DAY - timedelta(days=400)).timestamp())
    return [{"id": f"cus_{i:08d}", "email": f"user{i}@example.com", "created": base + i} for i in range(n)]


def redemptions(n_customers: int, n: int, rng: random.Random) -> pd.DataFrame:
    """A day: most redeemers are known customers (their e-mail typed in any case, with spaces), some linked by
    id, a few are new to the mirror (created in Stripe since it was listed), a few have no Stripe customer."""
    rows, pick = [], random.Random(n_customers)  # the same day (kinds, spellings) at every account size
    for i in range(n):
        kind = rng.random()
        who = pick.randrange(n_customers)
        email = f"user{who}@example.com"
        linked = None
        if kind < 0.05:
            email = f"new{i}@example.com"  # a Stripe customer the mirror does not hold yet
        elif kind < 0.10:
            email = f"walkin{i}@example.com"  # not a Stripe customer at all
        elif kind < 0.20:
            linked = f"cus_{who:08d}"
        typed = f"  {email.upper() if rng.random() < 0.3 else email} "
        rows.append(
            {
                "redemption_id": f"rdm_{i:06d}",
                "status": "completed",
                "amount": 500 + i,
                "currency": "usd",
                "card_last4": f"{i % 10000:04d}",
                "gift_card_id": f"gc_{i}",
                "email": typed.strip(),
                "email_norm": email,
                "name": None,
                "phone": None,
                "stripe_customer_id": linked,
                "location": "online",
                "redeemed_at": DAY + timedelta(seconds=60 * i + 1),
                "updated_at": DAY + timedelta(seconds=60 * i + 1),
            }
        )
    return pd.DataFrame(rows)


def new_customers(day: pd.DataFrame) -> list[dict]:
    created = int(DAY.timestamp())
    return [
        {"id": f"cus_new{i:05d}", "email": e, "created": created + i}
        for i, e in enumerate(sorted(e for e in set(day["email_norm"]) if e.startswith("new")))
    ]


def one(n: int, n_redemptions: int, relist_up_to: int, workdir: Path) -> dict[str, str]:
    rng = random.Random(0)
    day = redemptions(n, n_redemptions, rng)
    account = customers(n)
    state = stripe_sim.StripeState([*account, *new_customers(day)])
    out: dict[str, str] = {"customers": f"{n:,}"}
    spec = giftcard_sync_spec("update")
    with BackgroundServer(stripe_sim.create_app(state, api_key="sk_test_bench")) as server:
        api = StripeClient(api_key="sk_test_bench", api_base=server.base_url, max_requests_per_second=1000)
        for case in ("first", "daily", "events"):
            store = GiftflowStore(database_url=f"sqlite:///{workdir}/{n}_{case}.sqlite")
            store.upsert_redemptions(day)
            now = datetime.now(timezone.utc)
            if case != "first":  # a listing of the account an hour ago (before today's new customers)
                store.replace_customers(
                    [{**c, "object": "customer", "metadata": {}} for c in account],
                    listed_from=now - timedelta(hours=1),
                    refreshed_keys=["customers_refreshed_at"],
                )
            if case == "events":  # the sensor has mirrored today's new customers from their customer.created events
                store.upsert_customers(
                    [{**c, "object": "customer", "metadata": {}} for c in new_customers(day)],
                    as_of=now - timedelta(seconds=30),
                )
                store.set_state("customers_events_synced_at", (now - timedelta(seconds=30)).isoformat())
            if case == "first" and n > relist_up_to:
                out[case] = f"~{math.ceil(n / 100) + 1} + writes"
                continue
            state.reset_stats()
            began = time.perf_counter()
            done = refresh_mirror_for_range(api, store, DAY, DAY + timedelta(days=1), now=now)
            reads = state.stats()["requests"]
            result = run_planned(
                spec,
                lambda s=store: plan_giftcard_day(s, DAY, DAY + timedelta(days=1), spec),
                api,
                store,
                dry_run=True,
                run_id=f"bench-{case}",
            )
            would = result.counts.get("would_update", 0) + result.counts.get("would_create", 0)
            out[case] = f"{reads} + {would} writes ({done.how}, {time.perf_counter() - began:.1f} s)"
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sizes", nargs="*", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--redemptions", type=int, default=200)
    parser.add_argument("--relist-up-to", type=int, default=10_000)
    args = parser.parse_args()
    print(f"one daily run of {args.redemptions} redemptions: Stripe reads (mirror) + writes the day needs")
    print(f"{'customers':>10}  {'first run (never listed)':<40}{'daily, no events sensor':<40}{'daily, events sensor':<40}")
    with tempfile.TemporaryDirectory(prefix="giftflow-daily-reads-") as tmp:
        for n in args.sizes:
            row = one(n, args.redemptions, args.relist_up_to, Path(tmp))
            print(f"{row['customers']:>10}  {row['first']:<40}{row['daily']:<40}{row['events']:<40}", flush=True)


if __name__ == "__main__":
    main()
