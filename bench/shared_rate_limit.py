"""Four concurrent processes (as four runs of a backfill would) calling Stripe through giftflow's resource with
one shared budget: total calls/s must stay under the limit (0 answers of 429 from the simulator, which
enforces the same limit) and reach >= 90 % of it.

    python bench/shared_rate_limit.py [LIMIT_PER_S] [SECONDS] [PROCESSES]
"""

import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

from giftflow.adapters.stripe import StripeClient
from giftflow_simulators import stripe
from giftflow_simulators.server import BackgroundServer


def worker(base: str, limit: int, db: str, seconds: float, out) -> None:
    api = StripeClient(api_key="sk_test_bench", api_base=base, max_requests_per_second=limit, rate_limit_db=db,
                         max_network_retries=0)
    calls, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        api.list_customers_by_email("nobody@example.com")
        calls += 1
    out.put(calls)


def main() -> None:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10
    procs = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    state = stripe.StripeState()
    with tempfile.TemporaryDirectory() as tmp, \
            BackgroundServer(stripe.create_app(state, api_key="sk_test_bench", rate_limit_per_s=limit)) as srv:
        out = mp.Queue()
        workers = [mp.Process(target=worker, args=(srv.base_url, limit, str(Path(tmp) / "rate.sqlite"), seconds, out))
                   for _ in range(procs)]
        began = time.monotonic()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.monotonic() - began
        stats = state.stats()
    rate = stats["requests"] / seconds
    print(f"processes={procs} limit_per_s={limit} seconds={seconds} calls={stats['requests']} "
          f"calls_per_s={rate:.1f} ({100 * rate / limit:.0f} % of the limit) rate_limited_429={stats['rate_limited']} "
          f"wall_s={wall:.1f}")


if __name__ == "__main__":
    main()
