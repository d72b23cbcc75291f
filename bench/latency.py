"""Seconds to Stripe on the defaults: a redemption created in Cardivo -> its Stripe customer updated, on the
production shape (the repo's dagster.yaml on PostgreSQL, dagster-daemon, dagster-webserver, the simulators) with
giftflow's default sensor intervals. Two paths, one after the other:

- webhook: the redemption is created in Cardivo and its `redemption.created` delivery is pushed to the webhook
  receiver (giftflow's ASGI app, in this process, storing into giftflow's PostgreSQL database);
- poll: the redemption is only created in Cardivo; the sensor finds it by polling the API.

Prints p50/p95/max per path against the targets (webhook p95 <= 8 s, poll p95 <= poll interval + 10 s), then where
the `giftcard_sync` runs' time went (median and max per phase: queued, launch = run process start and code load,
each step, end) and their duration end to end (target <= 10 s).

    python bench/latency.py [--n 10] [--spacing 4] [--paths webhook,poll] [--grpc]
"""

import argparse
import hashlib
import hmac
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from giftflow.adapters.store import GiftflowStore  # noqa: E402
from giftflow.orchestration.sensors import INTERVAL_S  # noqa: E402
from giftflow.webhooks import create_app  # noqa: E402
from giftflow_simulators.server import BackgroundServer  # noqa: E402
from giftflow_tests.harness import (  # noqa: E402
    production_stack,
    run_breakdown,
    run_timelines,
    throwaway_postgres,
)

SECRET = "whsec_latency_bench"


def signed(body: bytes) -> str:
    ts = int(time.time())
    return f"t={ts},v1={hmac.new(SECRET.encode(), f'{ts}.'.encode() + body, hashlib.sha256).hexdigest()}"


def measure(stack, receiver_url: str | None, path: str, n: int, spacing: float) -> list[float]:
    """Creates `n` redemptions `spacing` s apart (pushing each to the receiver on the webhook path); the seconds
    each took to show in its Stripe customer's metadata."""
    customers = [f"cus_{path}{i:04d}" for i in range(n)]
    stack.stripe.load(
        [
            {"id": cid, "email": f"{path}{i}@example.com", "created": int(time.time()), "metadata": {}}
            for i, cid in enumerate(customers)
        ]
    )
    created: dict[str, float] = {}
    done: dict[str, float] = {}

    def watch():
        deadline = time.monotonic() + n * spacing + 180
        while len(done) < n and time.monotonic() < deadline:
            for cid in customers:
                if (
                    cid not in done
                    and cid in created
                    and stack.stripe.get(cid)["metadata"].get("giftcard_redemptions") == "1"
                ):
                    done[cid] = time.monotonic()
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for i, cid in enumerate(customers):
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        record = {
            "id": f"rdm_{path}_{i}",
            "status": "completed",
            "amount": 1000 + i,
            "currency": "usd",
            "balance_after": 0,
            "stripe_customer_id": None,
            "location": "online",
            "gift_card": {
                "id": f"gc_{path}_{i}",
                "code": f"CRDV-LAT0-LAT0-{i:04d}",
                "initial_value": 5000,
                "currency": "usd",
            },
            "customer": {"email": f"{path}{i}@example.com", "name": None, "phone": None},
            "redeemed_at": now,
            "updated_at": now,
        }
        httpx.post(f"{stack.cardivo_url}/_sim/redemptions", json=record).raise_for_status()
        created[cid] = time.monotonic()
        if receiver_url:
            body = json.dumps(
                {"id": f"evt_{path}_{i}", "type": "redemption.created", "created": now, "data": record}
            ).encode()
            httpx.post(
                f"{receiver_url}/webhooks/cardivo",
                content=body,
                headers={"Cardivo-Signature": signed(body), "Content-Type": "application/json"},
            ).raise_for_status()
        time.sleep(spacing)
    watcher.join()
    return sorted(done[c] - created[c] for c in customers if c in done)


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10, help="redemptions per path")
    parser.add_argument("--spacing", type=float, default=4.0, help="seconds between two redemptions")
    parser.add_argument("--paths", default="webhook,poll")
    parser.add_argument("--grpc", action="store_true", help="giftflow in its own gRPC code server (deploy/'s shape)")
    args = parser.parse_args()
    today = datetime.now(timezone.utc).date()
    results: dict[str, list[float]] = {}
    with throwaway_postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        # sensor_interval_s=None: giftflow's defaults, as a production install has them.
        with production_stack(
            pg,
            Path(tmp),
            [today],
            stripe_limit=25,
            sensor_interval_s=None,
            grpc=args.grpc,
            extra_env={"GIFTFLOW_CARDIVO_WEBHOOK_SECRET": SECRET},
        ) as stack:
            store = GiftflowStore(database_url=stack.env["GIFTFLOW_DATABASE_URL"])
            listed = stack.dagster("sensor", "list")
            for sensor in ("cardivo_redemptions_sensor", "cardivo_webhook_sensor"):
                if sensor in listed.stdout:
                    assert stack.dagster("sensor", "start", sensor).returncode == 0, sensor
            with BackgroundServer(create_app(store, cardivo_secret=SECRET, stripe_secret=None)) as receiver:
                for path in args.paths.split(","):
                    results[path] = measure(
                        stack, receiver.base_url if path == "webhook" else None, path, args.n, args.spacing
                    )
                    time.sleep(3)  # the last runs finish before the next path starts
            runs = [r for r in run_timelines(stack, "giftcard_sync") if r["status"] == "SUCCESS"]
    targets = {"webhook": 8.0, "poll": INTERVAL_S + 10.0}
    print(
        f"topology={'grpc code server' if args.grpc else 'workspace.yaml (python_module)'} "
        f"redemptions_per_path={args.n} spacing_s={args.spacing} poll_interval_s={INTERVAL_S}"
    )
    for path, latencies in results.items():
        if not latencies:
            print(f"{path}: no redemption reached Stripe")
            continue
        print(
            f"{path}: reached_stripe={len(latencies)}/{args.n} p50_s={pct(latencies, 0.5):.1f} "
            f"p95_s={pct(latencies, 0.95):.1f} max_s={latencies[-1]:.1f} (target p95 <= {targets[path]:.0f} s)"
        )
    parts = [run_breakdown(r) for r in runs]
    print(f"giftcard_sync runs: {len(parts)} succeeded; seconds per phase, median / max:")
    for phase in dict.fromkeys(k for p in parts for k in p):
        values = [p[phase] for p in parts if phase in p]
        print(f"  {phase:<28} {statistics.median(values):6.2f} / {max(values):6.2f}")


if __name__ == "__main__":
    main()
