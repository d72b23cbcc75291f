"""Gift-card plan time (match, wanted metadata, and the sync engine's diff) and peak RSS for N redemptions x M
customers (target: 1,000,000 x 1,000,000 in <= 3 s, <= 1.5 GiB on 2 cores).

    python bench/reconcile.py [N] [M]
"""

import resource
import sys
import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from giftflow.adapters.config_files import giftcard_sync_spec
from giftflow.domain.giftcard import CUSTOMER_COLUMNS, METADATA_KEYS
from giftflow.domain.redemptions import REDEMPTION_COLUMNS
from giftflow.services.giftcard_sync import plan_customer_updates


def inputs(n: int, m: int, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    cust_ids = np.char.add("cus_", np.arange(m).astype(str)).astype(object)
    emails = np.char.add(np.char.add("c", np.arange(m).astype(str)), "@example.com").astype(object)
    customers = pd.DataFrame({"customer_id": cust_ids, "email_norm": emails,
                              "created": rng.integers(1.6e9, 1.7e9, m)})
    for key in METADATA_KEYS:
        customers[key] = None
    who = rng.integers(0, int(m * 1.1), n)  # ~10 % of redemptions have no Stripe customer
    start = pd.Timestamp("2026-11-20", tz="UTC")
    redemptions = pd.DataFrame({
        "redemption_id": np.char.add("rdm_", np.arange(n).astype(str)).astype(object),
        "status": np.where(rng.random(n) < 0.05, "voided", "completed").astype(object),
        "amount": rng.integers(100, 20000, n),
        "currency": "usd",
        "card_last4": np.char.zfill(rng.integers(0, 9999, n).astype(str), 4).astype(object),
        "gift_card_id": None,
        "email": None,
        "email_norm": np.char.add(np.char.add("c", who.astype(str)), "@example.com").astype(object),
        "name": None, "phone": None,
        "stripe_customer_id": np.where(rng.random(n) < 0.15, np.char.add("cus_", who.astype(str)), None).astype(object),
        "location": None,
        "redeemed_at": start + pd.to_timedelta(rng.integers(0, 86_400, n), unit="s"),
    })
    redemptions["updated_at"] = redemptions["redeemed_at"]
    return redemptions[REDEMPTION_COLUMNS], customers[CUSTOMER_COLUMNS]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    m = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    redemptions, customers = inputs(n, m)
    day = datetime(2026, 11, 20, tzinfo=timezone.utc), datetime(2026, 11, 21, tzinfo=timezone.utc)
    t0 = time.perf_counter()
    plan = plan_customer_updates(redemptions, customers, *day, giftcard_sync_spec("upsert"))
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(f"redemptions={n:,} customers={m:,} plan_rows={len(plan):,} "
          f"actions={plan['action'].value_counts().to_dict()}")
    print(f"reconcile_seconds={elapsed:.2f} peak_rss_gib={peak:.2f} (whole process, inputs included)")


if __name__ == "__main__":
    main()
