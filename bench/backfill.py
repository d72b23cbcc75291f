"""A backfill of DAYS days of giftcard_sync through the production shape (PostgreSQL instance, daemon,
webserver, simulators): wall time, runs at once, and Stripe calls/s against the configured limit.

    python bench/backfill.py [DAYS] [STRIPE_LIMIT_PER_S]
"""

import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from giftflow_tests.harness import (  # noqa: E402
    launch_backfill,
    most_at_once,
    production_stack,
    throwaway_postgres,
    wait_for_backfill,
)


def main() -> None:
    days_n = int(sys.argv[1]) if len(sys.argv) > 1 else 365
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    today = datetime.now(timezone.utc).date()
    days = [today - timedelta(days=n) for n in range(days_n, 0, -1)]
    tmp = tempfile.mkdtemp(prefix="giftflow-backfill-")  # kept: daemon.log and webserver.log for a failed run
    with throwaway_postgres() as pg:
        with production_stack(pg, Path(tmp), days, stripe_limit=limit, redemptions_per_day=20, customers=300) as stack:
            stack.stripe.reset_stats()
            began = time.monotonic()
            backfill_id = launch_backfill(stack, "giftcard_sync", [d.isoformat() for d in days])
            status, runs = wait_for_backfill(stack, backfill_id, days_n, timeout=6 * 3600)
            wall = time.monotonic() - began
            stats = stack.stripe.stats()
    ok = sum(r["status"] == "SUCCESS" for r in runs)  # retried runs count once per attempt
    print(f"logs: {tmp}")
    print(f"days={days_n} status={status} runs_ok={ok}/{len(runs)} wall_s={wall:.0f} "
          f"most_runs_at_once={most_at_once(runs)}")
    print(f"stripe_calls={stats['requests']} writes={stats['writes']} calls_per_s={stats['requests'] / wall:.2f} "
          f"limit_per_s={limit} rate_limited={stats['rate_limited']}")


if __name__ == "__main__":
    main()
