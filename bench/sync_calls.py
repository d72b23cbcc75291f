"""Stripe calls for one realistic simulated day: giftflow's batch sync against the per-event approach
(a zap that finds and then updates the customer for every redemption), and writes against customers
whose values really changed (target: equal).

    python bench/sync_calls.py [REDEMPTIONS_PER_DAY] [CUSTOMERS]
"""

import os
import sys
import tempfile
from datetime import date

import dagster as dg

from giftflow_simulators import cardivo, dataset, stripe
from giftflow_simulators.server import BackgroundServer

DAY = date(2026, 11, 20)


def main() -> None:
    per_day = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    n_customers = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    world = dataset.build_world(42, [DAY], redemptions_per_day=per_day, customers=n_customers)
    stripe_state = stripe.StripeState(world.customers)
    with (
        tempfile.TemporaryDirectory() as home,
        BackgroundServer(cardivo.create_app(cardivo.CardivoState.from_world(world), "k")) as c,
        BackgroundServer(stripe.create_app(stripe_state, api_key="sk_test_bench")) as s,
    ):
        os.environ.update(
            CARDIVO_API_BASE=c.base_url,
            CARDIVO_API_KEY="k",
            STRIPE_API_BASE=s.base_url,
            STRIPE_API_KEY="sk_test_bench",
            DAGSTER_HOME=home,
            GIFTFLOW_STRIPE_MAX_RPS="1000",
            GIFTFLOW_DATABASE_URL=f"sqlite:///{home}/giftflow.sqlite",
        )
        from giftflow.orchestration.definitions import build_defs

        job = build_defs().resolve_job_def("giftcard_sync")
        quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
        with dg.DagsterInstance.ephemeral() as instance:
            for label in ("first run", "rerun"):
                stripe_state.reset_stats()
                before = {c["id"]: c["metadata"] for c in stripe_state.customers()}
                job.execute_in_process(partition_key=DAY.isoformat(), instance=instance, run_config=quiet)
                stats = stripe_state.stats()
                # Judged at the server: customers whose stored values differ after the run.
                changed = sum(before.get(c["id"]) != c["metadata"] for c in stripe_state.customers())
                print(
                    f"{label}: redemptions={len(world.redemptions)} customers_in_stripe={len(world.customers)} "
                    f"giftflow_stripe_calls={stats['requests']} (reads={stats['reads']} writes={stats['writes']}) "
                    f"per_event_calls={2 * len(world.redemptions)} "
                    f"customers_really_changed={changed} writes_equal_changed={stats['writes'] == changed}"
                )


if __name__ == "__main__":
    main()
