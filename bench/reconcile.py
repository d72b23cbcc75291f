"""Gift-card plan time (match, wanted metadata, and the sync engine's diff) and peak RSS for N redemptions x M
customers, against a straightforward pandas version of the same computation timed in the same process (issue 12's
target: giftflow <= 0.25 x the straightforward time, 1,000,000 x 1,000,000, <= 1.5 GiB, with and without pyarrow).

    python bench/reconcile.py [N] [M] [--giftflow-only]

The two plans are checked to agree: the same customers to update and to create, with the same five values, and
the same number of rows left out per reason. Whether pyarrow is importable decides how pandas stores strings
(pandas 3: Arrow strings with it, Python objects without), so run it in an environment with and one without.
"""

from __future__ import annotations

import importlib.util
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
    customers = pd.DataFrame({"customer_id": cust_ids, "email_norm": emails, "created": rng.integers(1.6e9, 1.7e9, m)})
    for key in METADATA_KEYS:
        customers[key] = None
    who = rng.integers(0, int(m * 1.1), n)  # ~10 % of redemptions have no Stripe customer
    start = pd.Timestamp("2026-11-20", tz="UTC")
    redemptions = pd.DataFrame(
        {
            "redemption_id": np.char.add("rdm_", np.arange(n).astype(str)).astype(object),
            "status": np.where(rng.random(n) < 0.05, "voided", "completed").astype(object),
            "amount": rng.integers(100, 20000, n),
            "currency": "usd",
            "card_last4": np.char.zfill(rng.integers(0, 9999, n).astype(str), 4).astype(object),
            "gift_card_id": None,
            "email": None,
            "email_norm": np.char.add(np.char.add("c", who.astype(str)), "@example.com").astype(object),
            "name": None,
            "phone": None,
            "stripe_customer_id": np.where(rng.random(n) < 0.15, np.char.add("cus_", who.astype(str)), None).astype(object),
            "location": None,
            "redeemed_at": start + pd.to_timedelta(rng.integers(0, 86_400, n), unit="s"),
        }
    )
    redemptions["updated_at"] = redemptions["redeemed_at"]
    return redemptions[REDEMPTION_COLUMNS], customers[CUSTOMER_COLUMNS]


def straightforward(
    redemptions: pd.DataFrame, customers: pd.DataFrame, day_start: datetime, day_end: datetime, mode: str
) -> pd.DataFrame:
    """The same plan as a pandas user would write it from the contract (giftflow-contract.md): merge on the id,
    then on the e-mail (the newest customer wins), group by customer, compare with what Stripe holds. One row
    per customer or e-mail touched by the day (and per anonymous redemption): customer_id, email, action
    (create / update / none / skip), reason and the five values."""
    r = redemptions.copy()
    ids = customers[["customer_id"]].drop_duplicates().assign(by_id=lambda d: d["customer_id"])
    r = r.merge(ids, how="left", left_on="stripe_customer_id", right_on="customer_id").drop(columns="customer_id")
    newest = (
        customers.dropna(subset=["email_norm"])
        .sort_values(["created", "customer_id"])
        .drop_duplicates("email_norm", keep="last")[["email_norm", "customer_id"]]
        .rename(columns={"customer_id": "by_email"})
    )
    r = r.merge(newest, how="left", on="email_norm")
    r["customer_id"] = r["by_id"].fillna(r["by_email"])
    r["in_day"] = (r["redeemed_at"] >= pd.Timestamp(day_start)) & (r["redeemed_at"] < pd.Timestamp(day_end))

    def wanted(rows: pd.DataFrame, by: str, keys: pd.Index) -> pd.DataFrame:
        """The five values per `by` from all its rows (all voided: total and count 0, the rest removed)."""
        done = rows[rows["status"] == "completed"].sort_values(["redeemed_at", "redemption_id"])
        g = done.groupby(by)
        out = pd.DataFrame(
            {
                "giftcard_redeemed_total": g["amount"].sum(),
                "giftcard_redemptions": g["amount"].size(),
                "currencies": g["currency"].nunique(),
                "giftcard_currency": g["currency"].first(),
                "giftcard_last_redeemed_at": g["redeemed_at"].last().dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "giftcard_last4": g["card_last4"].last(),
            }
        ).reindex(keys)
        out["currencies"] = out["currencies"].fillna(0)
        for col in ("giftcard_redeemed_total", "giftcard_redemptions"):
            out[col] = out[col].fillna(0).astype("int64").astype(str)
        multi = out["currencies"] > 1
        out.loc[multi, list(METADATA_KEYS)] = None
        return out

    # Matched customers: update where a value differs from what Stripe holds.
    touched = pd.Index(r.loc[r["in_day"], "customer_id"].dropna().unique(), name="customer_id")
    matched = wanted(r[r["customer_id"].isin(touched)], "customer_id", touched)
    held = customers.drop_duplicates("customer_id").set_index("customer_id").reindex(touched)
    differs = pd.Series(False, index=touched)
    for key in METADATA_KEYS:
        want, have = matched[key].astype(object), held[key].replace("", None).astype(object)
        differs |= (want.notna() | have.notna()) & (want.fillna("") != have.fillna(""))
    matched["email"] = held["email_norm"]
    matched["action"] = np.where(matched["currencies"] > 1, "skip", np.where(differs, "update", "none"))
    matched["reason"] = np.where(matched["currencies"] > 1, "multi_currency", "")

    # Unmatched e-mails: created in upsert mode.
    lost = r[r["customer_id"].isna()]
    mails = pd.Index(lost.loc[lost["in_day"], "email_norm"].dropna().unique(), name="email_norm")
    unmatched = wanted(lost[lost["email_norm"].isin(mails)], "email_norm", mails)
    single = unmatched["currencies"] == 1
    unmatched["action"] = np.where((mode == "upsert") & single, "create", "skip")
    unmatched["reason"] = np.where(
        unmatched["action"] == "create",
        "",
        np.where((mode == "upsert") & (unmatched["currencies"] > 1), "multi_currency", "unmatched"),
    )
    anonymous = lost[lost["in_day"] & lost["email_norm"].isna()]
    plan = pd.concat(
        [
            matched.reset_index(),
            unmatched.reset_index().rename(columns={"email_norm": "email"}),
            pd.DataFrame({"action": "skip", "reason": ["anonymous"] * len(anonymous)}),
        ],
        ignore_index=True,
    )
    return plan[["customer_id", "email", "action", "reason", *METADATA_KEYS]]


def check_same(plan: pd.DataFrame, simple: pd.DataFrame) -> None:
    """Both plans write the same customers with the same values and leave out as many rows for each reason."""

    def writes(frame: pd.DataFrame, action: str, key: str) -> pd.DataFrame:
        rows = frame[frame["action"] == action]
        out = rows[[key, *METADATA_KEYS]].astype(object)
        return out.where(out.notna(), None).sort_values(key).reset_index(drop=True)

    for action, key in (("update", "customer_id"), ("create", "email")):
        ours, theirs = writes(plan, action, key), writes(simple, action, key)
        assert len(ours) == len(theirs), f"{action}: {len(ours)} rows against {len(theirs)}"
        pd.testing.assert_frame_equal(ours, theirs, check_dtype=False, obj=f"{action} rows")
    skipped = [
        frame.loc[frame["action"] == "skip", "reason"].value_counts().sort_index().to_dict() for frame in (plan, simple)
    ]
    assert skipped[0] == skipped[1], f"rows left out per reason: {skipped[0]} against {skipped[1]}"


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if len(args) > 0 else 1_000_000
    m = int(args[1]) if len(args) > 1 else 1_000_000
    day = datetime(2026, 11, 20, tzinfo=timezone.utc), datetime(2026, 11, 21, tzinfo=timezone.utc)
    arrow = importlib.util.find_spec("pyarrow") is not None
    redemptions, customers = inputs(n, m)
    print(
        f"pandas {pd.__version__}, pyarrow {'importable' if arrow else 'not installed'}; "
        f"strings stored as {customers['customer_id'].dtype!r}"
    )
    t0 = time.perf_counter()
    plan = plan_customer_updates(redemptions, customers, *day, giftcard_sync_spec("upsert"))
    ours = time.perf_counter() - t0
    peak_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(f"redemptions={n:,} customers={m:,} plan_rows={len(plan):,} actions={plan['action'].value_counts().to_dict()}")
    print(f"giftflow_seconds={ours:.2f} peak_rss_gib={peak_ours:.2f} (whole process, inputs included)")
    if "--giftflow-only" in sys.argv:
        return
    # Fresh inputs: Python caches a string's hash in the string, so the second version must not inherit them.
    del redemptions, customers
    redemptions, customers = inputs(n, m)
    t0 = time.perf_counter()
    simple = straightforward(redemptions, customers, *day, "upsert")
    theirs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    check_same(plan, simple)
    print(f"straightforward_seconds={theirs:.2f} peak_rss_gib={peak:.2f} (the process's peak so far)")
    print(f"ratio giftflow/straightforward={ours / theirs:.2f} (target <= 0.25); the plans agree")


if __name__ == "__main__":
    main()
