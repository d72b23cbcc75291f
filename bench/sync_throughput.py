"""A reverse-ETL sync at scale: N source rows of which a share changed, against the rate-limited Stripe
simulator. Prints Stripe writes against changed rows (target: equal), write throughput against the configured
rate limit (target: >= 95 %, 0 answers of 429) and the time to diff N rows (target: <= 1 s for 100,000).

    python bench/sync_throughput.py [--rows 100000] [--changed 0.10] [--rate 200]
"""

import argparse
import gc
import tempfile
import time

import pandas as pd

from giftflow.adapters.store import GiftflowStore
from giftflow.adapters.stripe import StripeClient
from giftflow.domain.sync_plan import current_frame, fields_of, plan_sync, wanted_frame
from giftflow.domain.sync_spec import parse_sync
from giftflow.services.customer_mirror import refresh_customer_mirror
from giftflow.services.sync_runner import run_sync
from giftflow_simulators import stripe
from giftflow_simulators.server import BackgroundServer

SPEC = parse_sync(
    """
version: 1
name: bench
source: {csv: unused.csv}
mode: upsert
identifier: email
primary_key: user_id
mapping:
  email: email
  name: name
  phone: phone
  address: {city: city, country: country}
  metadata: {columns: {plan: plan, user_id: user_id}}
""",
    "bench",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.10, help="share of rows whose values changed")
    parser.add_argument("--rate", type=int, default=200, help="requests/s: the simulator's limit and giftflow's")
    args = parser.parse_args()

    n = args.rows
    users = pd.DataFrame(
        {
            "user_id": [f"u{i:07d}" for i in range(n)],
            "email": [f"user{i}@example.com" for i in range(n)],
            "name": [f"User {i}" for i in range(n)],
            "phone": [f"+4420{i:08d}" for i in range(n)],
            "city": "London",
            "country": "GB",
            "plan": ["pro" if i % 3 else "free" for i in range(n)],
        }
    )
    customers = [
        {
            "id": f"cus_{i:010d}",
            "email": r.email,
            "name": r.name,
            "phone": r.phone,
            "created": 1_700_000_000 + i,
            "address": {
                "city": r.city,
                "country": r.country,
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "metadata": {"plan": r.plan, "user_id": r.user_id},
        }
        for i, r in enumerate(users.itertuples())
    ]
    changed = users.sample(frac=args.changed, random_state=1).index
    source = users.copy()
    source.loc[changed, "plan"] = "enterprise"
    t = time.perf_counter()
    state = stripe.StripeState(customers)
    # The simulator's millions of objects share this process; in production they live at Stripe. Keep them out
    # of the garbage collector's way so the diff is timed, not the collector scanning the simulator.
    gc.collect()
    gc.freeze()
    print(
        f"{n:,} Stripe customers loaded into the simulator in {time.perf_counter() - t:.1f} s; "
        f"{len(changed):,} source rows changed ({args.changed:.0%})"
    )

    with (
        tempfile.TemporaryDirectory() as tmp,
        BackgroundServer(stripe.create_app(state, api_key="sk_test_bench", rate_limit_per_s=args.rate)) as srv,
    ):
        api = StripeClient(api_key="sk_test_bench", api_base=srv.base_url, max_requests_per_second=args.rate)
        store = GiftflowStore(database_url=f"sqlite:///{tmp}/bench.sqlite")
        t = time.perf_counter()
        calls = refresh_customer_mirror(
            api, store, with_tax_ids=SPEC.mapping.tax_id is not None, with_coupons=SPEC.mapping.promotion_code is not None
        )
        print(f"customer mirror: {calls:,} list calls in {time.perf_counter() - t:.1f} s")

        mirror = store.load_customers()
        t = time.perf_counter()
        wanted, invalid = wanted_frame(source, SPEC)
        plan = plan_sync(SPEC, wanted, invalid, current_frame(mirror, fields_of(wanted)), {})
        diff_s = time.perf_counter() - t
        planned = int((plan["action"] == "update").sum())
        print(
            f"diff of {n:,} rows (validate, match by e-mail, compare {len(fields_of(wanted))} fields): "
            f"{diff_s:.2f} s (target <= 1 s) -> {planned:,} updates planned"
        )

        state.reset_stats()
        result = run_sync(SPEC, source, api, store, dry_run=False, run_id="bench", mirror_max_age_s=3600)
        stats = state.stats()
        writes, write_s = stats["writes"], result.timings["write_s"]
        print(
            f"Stripe writes counted at the server: {writes:,} for {len(changed):,} changed rows "
            f"({'equal' if writes == len(changed) else 'NOT equal'}); 429s seen: {stats['rate_limited']}"
        )
        print(
            f"write throughput: {writes / write_s:.1f} writes/s over {write_s:.1f} s = "
            f"{writes / write_s / args.rate:.1%} of the configured {args.rate}/s (target >= 95 %)"
        )
        print(f"run_sync report: { ({k: v for k, v in result.counts.items() if v}) }")


if __name__ == "__main__":
    main()
