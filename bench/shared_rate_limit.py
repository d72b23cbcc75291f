"""One Stripe budget for every host: processes that share no file (each its own DAGSTER_HOME, as runs in
separate pods would) call Stripe through giftflow's client, 8 writer threads each, drawing from one budget kept
in giftflow's PostgreSQL database. Total calls/s must stay at or under the limit (0 answers of 429 from the
simulator, which enforces the same limit) and reach >= 95 % of it.

    python bench/shared_rate_limit.py [--limit 20] [--seconds 10] [--processes 4] [--threads 8] [--backend postgres]

`--backend sqlite` runs the same with the embedded default (one SQLite file the processes share: one host);
`--backend none` gives each process its own in-memory budget: the baseline that shows why a shared one is needed.
"""

import argparse
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path

from giftflow.adapters.stripe import StripeClient
from giftflow_simulators import stripe
from giftflow_simulators.server import BackgroundServer
from giftflow_tests.harness import create_database, throwaway_postgres


def worker(base: str, limit: int, budget: str | None, seconds: float, threads: int, start_at: float, out) -> None:
    api = StripeClient(
        api_key="sk_test_bench", api_base=base, max_requests_per_second=limit, rate_limit_db=budget, max_network_retries=0
    )
    api.list_customers_by_email("warm@example.com")  # connect and create the budget before the clock starts
    calls = [0] * threads
    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < deadline:
            api.list_customers_by_email("nobody@example.com")
            calls[i] += 1

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put(sum(calls))


def run(base: str, state, limit: int, seconds: float, processes: int, threads: int, budget_for) -> dict:
    out = mp.Queue()
    start_at = time.time() + 3
    procs = [
        mp.Process(target=worker, args=(base, limit, budget_for(i), seconds, threads, start_at, out))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start_at - time.time()))
    state.reset_stats()
    # Stripe's view: what reached it within the window (calls still waiting for a slot at its end come later).
    time.sleep(seconds)
    stats = state.stats()
    for p in procs:
        p.join()
    calls = sum(out.get() for _ in procs)
    return {"calls": calls, "calls_per_s": stats["requests"] / seconds, "rate_limited": stats["rate_limited"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--backend", choices=["postgres", "sqlite", "none"], default="postgres")
    args = parser.parse_args()
    state = stripe.StripeState()
    with (
        BackgroundServer(stripe.create_app(state, api_key="sk_test_bench", rate_limit_per_s=args.limit)) as srv,
        tempfile.TemporaryDirectory() as tmp,
    ):
        if args.backend == "postgres":
            with throwaway_postgres() as url:
                db = create_database(url, "giftflow_bench")
                result = run(srv.base_url, state, args.limit, args.seconds, args.processes, args.threads, lambda i: db)
        elif args.backend == "sqlite":
            result = run(
                srv.base_url,
                state,
                args.limit,
                args.seconds,
                args.processes,
                args.threads,
                lambda i: str(Path(tmp) / "rate.sqlite"),
            )
        else:
            result = run(srv.base_url, state, args.limit, args.seconds, args.processes, args.threads, lambda i: None)
    share = result["calls_per_s"] / args.limit
    print(
        f"backend={args.backend} processes={args.processes} threads={args.threads} limit_per_s={args.limit} "
        f"seconds={args.seconds:g} calls={result['calls']} calls_per_s={result['calls_per_s']:.1f} "
        f"({100 * share:.0f} % of the limit) answers_429={result['rate_limited']}"
    )


if __name__ == "__main__":
    main()
