"""A backfill of DAYS days of giftcard_sync through the production shape (PostgreSQL instance, daemon,
webserver, simulators): wall time, runs, Stripe calls/s against the configured limit, and the target
wall <= 1.2 x (Stripe calls / limit) + 60 s.

    python bench/backfill.py [DAYS] [STRIPE_LIMIT_PER_S] [--job] [--event-batch=N] [--planned-per-day] [--grpc]

The backfill is launched as the UI's *Materialize* of the gift-card assets over the date range does (an asset
backfill, which follows the assets' BackfillPolicy: one run); `--job` launches the job's partition-set backfill
instead (one run per day, as before the policy). `wall_s` runs from the launch to the backfill's end as Dagster
records it (the backfill daemon looks every 30 s, both to start the backfill and to mark it done), `runs_done_s` to
its last run's end (every day materialized). The stack has the production settings (README, Scale):
`--event-batch=N` sets DAGSTER_EVENT_BATCH_SIZE (default 200; 0 writes a range run's per-day materializations one
by one); `--planned-per-day` unsets DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS, so the daemon logs a planned
event per day and asset when it submits the range run (one by one on PostgreSQL: 28-55 s for 365 days).
`--grpc` runs giftflow in its own code server (deploy/'s shape): with the repo's workspace.yaml (python_module) the
daemon replaces its code server process every 60 s, and a backfill evaluated meanwhile waits for the new one.
"""

import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from giftflow_tests.harness import (  # noqa: E402
    Stack,
    launch_backfill,
    most_at_once,
    production_stack,
    throwaway_postgres,
    wait_for_backfill,
)

GIFTCARD_ASSETS = ("cardivo_redemptions", "stripe_customers", "giftcard_customer_plan", "giftcard_customer_updates")
LAUNCH_ASSET_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
  }
}"""


def launch_asset_backfill(stack: Stack, assets: tuple[str, ...], partitions: list[str]) -> str:
    """What the UI's Materialize -> date range launches: a backfill of the assets, following their policy."""
    launched = stack.graphql(
        LAUNCH_ASSET_BACKFILL, {"params": {"assetSelection": [{"path": [a]} for a in assets], "partitionNames": partitions}}
    )["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(launched)
    return launched["backfillId"]


def backfill_facts(stack: Stack, backfill_id: str, asset: str) -> dict:
    """From the instance: when the backfill was created and marked done (Dagster's own timestamps, so the
    bench's polling adds nothing to the wall time), and how many days of `asset` are materialized."""
    code = (
        "import json, sys, dagster as dg\n"
        "with dg.DagsterInstance.get() as i:\n"
        "    b = i.get_backfill(sys.argv[1])\n"
        "    print(json.dumps({'created': b.backfill_timestamp, 'ended': b.backfill_end_timestamp,\n"
        "                      'days': len(i.get_materialized_partitions(dg.AssetKey(sys.argv[2])))}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, backfill_id, asset],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    as_job = "--job" in sys.argv
    grpc = "--grpc" in sys.argv
    planned_subset = "false" if "--planned-per-day" in sys.argv else "true"
    batch = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--event-batch=")), "200")
    days_n = int(args[0]) if args else 365
    limit = int(args[1]) if len(args) > 1 else 10
    today = datetime.now(timezone.utc).date()
    days = [today - timedelta(days=n) for n in range(days_n, 0, -1)]
    tmp = tempfile.mkdtemp(prefix="giftflow-backfill-")  # kept: daemon.log and webserver.log for a failed run
    with throwaway_postgres() as pg:
        with production_stack(
            pg,
            Path(tmp),
            days,
            stripe_limit=limit,
            redemptions_per_day=20,
            customers=300,
            extra_env={"DAGSTER_EVENT_BATCH_SIZE": batch, "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": planned_subset},
            grpc=grpc,
        ) as stack:
            stack.stripe.reset_stats()
            began = time.monotonic()
            began_at = time.time()
            keys = [d.isoformat() for d in days]
            backfill_id = (
                launch_backfill(stack, "giftcard_sync", keys)
                if as_job
                else launch_asset_backfill(stack, GIFTCARD_ASSETS, keys)
            )
            status, runs = wait_for_backfill(stack, backfill_id, days_n if as_job else 1, timeout=6 * 3600)
            polled = time.monotonic() - began
            stats = stack.stripe.stats()
            cardivo_calls = stack.cardivo.stats()["total"]
            facts = backfill_facts(stack, backfill_id, "giftcard_customer_updates")
    ok = sum(r["status"] == "SUCCESS" for r in runs)  # retried runs count once per attempt
    days_done = facts["days"]
    wall = (facts["ended"] or began_at + polled) - began_at  # launch -> the backfill marked done
    runs_done = max((r["end"] or 0 for r in runs), default=began_at) - began_at
    bound = 1.2 * stats["requests"] / limit + 60
    print(f"logs: {tmp}")
    print(
        f"days={days_n} launched_as={'job' if as_job else 'assets'} event_batch={batch} "
        f"planned_per_day={planned_subset == 'false'} "
        f"topology={'grpc code server' if grpc else 'workspace.yaml (python_module)'} status={status} "
        f"runs_ok={ok}/{len(runs)} "
        f"most_runs_at_once={most_at_once(runs)} days_materialized={days_done}/{days_n} cardivo_calls={cardivo_calls}"
    )
    print(
        f"stripe_calls={stats['requests']} writes={stats['writes']} calls_per_s={stats['requests'] / wall:.2f} "
        f"limit_per_s={limit} rate_limited={stats['rate_limited']}"
    )
    print(
        f"wall_s={wall:.0f} runs_done_s={runs_done:.0f} bound_s={bound:.0f} (1.2 x calls/limit + 60) "
        f"{'OK' if wall <= bound else 'OVER'}  (seen done by the bench's polling after {polled:.0f} s)"
    )


if __name__ == "__main__":
    main()
