"""Warnings on the gift-card sync for finance: Stripe values giftflow knows are stale but may not write."""

import dagster as dg
import pandas as pd

from giftflow.domain.giftcard import METADATA_KEYS, SKIP
from giftflow.orchestration.giftcard import _planner, giftcard_customer_updates
from giftflow.orchestration.metadata import table
from giftflow.orchestration.resources import StoreResource
from giftflow.settings import Settings

STALE_COLUMNS = ["customer_id", "email", "reason", "note", *METADATA_KEYS]
# As the UI shows them: the Stripe keys without their common `giftcard_` prefix, so the customer's id and e-mail
# keep their width; "Show schema" names the Stripe metadata key of each.
SHOWN = {k: k.removeprefix("giftcard_") for k in METADATA_KEYS}
SHOWN_ABOUT = {
    "customer_id": "Stripe customer",
    "email": "the redemptions' e-mail",
    "reason": "why the plan leaves the customer out",
    "note": "more on the reason (e.g. the currencies)",
    **{short: f"what Stripe holds now in metadata {key}" for key, short in SHOWN.items()},
}


def stale_customers(plan: pd.DataFrame, customers: list[dict]) -> pd.DataFrame:
    """Customers the plan leaves out (skip: e.g. multi_currency) while Stripe still holds gift-card values from an
    earlier day: one row each, with the plan's reason and note and the values Stripe holds now."""
    skipped = plan[(plan["action"] == SKIP) & plan["customer_id"].notna()]
    held = {c["id"]: {k: (c.get("metadata") or {}).get(k) for k in METADATA_KEYS} for c in customers}
    rows = [
        {
            "customer_id": r["customer_id"],
            "email": r["email"],
            "reason": r["reason"],
            "note": r["note"],
            **held[r["customer_id"]],
        }
        for r in skipped.to_dict("records")
        if any(v not in (None, "") for v in held.get(r["customer_id"], {}).values())
    ]
    return pd.DataFrame(rows, columns=STALE_COLUMNS)


@dg.asset_check(
    asset=giftcard_customer_updates,
    blocking=False,
    name="no_stale_giftcard_values",
    description="Warns (does not block) about customers whose Stripe gift-card values are now stale but may not be "
    "written: e.g. written on one day, multi-currency after a later one, so the plan skips them while "
    "Stripe still shows the earlier total. Lists them, with the values Stripe holds, for finance.",
)
def no_stale_giftcard_values(
    context: dg.AssetCheckExecutionContext, store: StoreResource, settings: dg.ResourceParam[Settings]
) -> dg.AssetCheckResult:
    db = store.get_client()
    _, planner = _planner(context.partition_time_window, db, settings)
    plan = planner().plan
    ids = plan.loc[plan["action"] == SKIP, "customer_id"].dropna().unique()
    stale = stale_customers(plan, db.load_customers(ids=list(ids)) if len(ids) else [])
    return dg.AssetCheckResult(
        passed=stale.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=None
        if stale.empty
        else f"{len(stale)} customer(s) touched on {_days(context)} keep out-of-date gift-card values in Stripe that "
        "this sync leaves as they are (see `stale_customers`); fix the data at Cardivo or correct them by hand.",
        metadata={
            "stale": len(stale),
            "stale_customers": table(stale.rename(columns=SHOWN), rows=100, descriptions=SHOWN_ABOUT),
        },
    )


def _days(context: dg.AssetCheckExecutionContext) -> str:
    """The run's day (a range: `first...last`): the UI shows no partition for an asset check's evaluation."""
    keys = context.partition_key_range
    return keys.start if keys.start == keys.end else f"{keys.start}...{keys.end}"
