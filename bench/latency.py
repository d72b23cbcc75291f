"""Redemption created in Cardivo -> Stripe customer updated, through the sensor path of the production shape
(PostgreSQL instance, dagster-daemon, dagster-webserver, simulators). Prints p50 and p95 (target p95 <= 30 s).

    python bench/latency.py [N_REDEMPTIONS] [SPACING_S]
"""

import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from giftflow_tests.harness import production_stack, throwaway_postgres  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    spacing = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    today = datetime.now(timezone.utc).date()
    with throwaway_postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        with production_stack(pg, Path(tmp), [today - timedelta(days=1)], stripe_limit=25) as stack:
            customers = [f"cus_lat{i:04d}" for i in range(n)]
            stack.stripe.load([{"id": cid, "email": f"lat{i}@example.com", "created": int(time.time()), "metadata": {}}
                               for i, cid in enumerate(customers)])
            assert stack.dagster("sensor", "start", "cardivo_redemptions_sensor").returncode == 0
            created: dict[str, float] = {}
            done: dict[str, float] = {}

            def watch():
                while len(done) < n:
                    for i, cid in enumerate(customers):
                        if cid not in done and cid in created and \
                                stack.stripe.get(cid)["metadata"].get("giftcard_redemptions") == "1":
                            done[cid] = time.monotonic()
                    time.sleep(0.2)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            for i, cid in enumerate(customers):
                now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                httpx.post(f"{stack.cardivo_url}/_sim/redemptions", json={
                    "id": f"rdm_lat_{i}", "status": "completed", "amount": 1000 + i, "currency": "usd",
                    "balance_after": 0, "stripe_customer_id": None, "location": "online",
                    "gift_card": {"id": f"gc_lat_{i}", "code": f"CRDV-LAT0-LAT0-{i:04d}", "initial_value": 5000,
                                  "currency": "usd"},
                    "customer": {"email": f"lat{i}@example.com", "name": None, "phone": None},
                    "redeemed_at": now, "updated_at": now}).raise_for_status()
                created[cid] = time.monotonic()
                time.sleep(spacing)
            watcher.join(timeout=300)
            latencies = sorted(done[c] - created[c] for c in customers if c in done)
    if not latencies:
        print("no redemption reached Stripe")
        return
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    print(f"redemptions={n} reached_stripe={len(latencies)} spacing_s={spacing}")
    print(f"latency_p50_s={p(0.5):.1f} latency_p95_s={p(0.95):.1f} max_s={latencies[-1]:.1f} (target p95 <= 30 s)")


if __name__ == "__main__":
    main()
