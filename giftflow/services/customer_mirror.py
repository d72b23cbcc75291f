"""The one mirror of Stripe customers: refreshed by one function, kept fresh between refreshes by the customer
writer's answers and the Stripe events sensor."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

from giftflow.adapters.store import GiftflowStore
from giftflow.adapters.stripe import StripeClient

REFRESHED = "customers_refreshed_at"


def refresh_customer_mirror(
    stripe_api: StripeClient,
    store: GiftflowStore,
    *,
    with_tax_ids: bool = False,
    with_coupons: bool = False,
    max_age_s: float = 0,
) -> int:
    """List every Stripe customer into the mirror, unless a listing with at least these parts is younger than
    `max_age_s`; the Stripe calls it took. Tax ids and coupons are listed only where asked (a sync maps them);
    otherwise the mirrored ones are kept."""
    key = REFRESHED + (":tax_ids" if with_tax_ids else "") + (":coupons" if with_coupons else "")
    refreshed = store.customers_refreshed_at(key)
    if refreshed and (datetime.now(timezone.utc) - refreshed).total_seconds() < max_age_s:
        return 0
    listed_from = datetime.now(timezone.utc)
    rows, calls = [], 0
    for page, calls in stripe_api.iter_customer_objects(with_tax_ids=with_tax_ids):
        rows += page
    for row in rows:
        listed = (row.pop("tax_ids", None) or {}).get("data") if with_tax_ids else None
        if with_tax_ids:
            row["_tax_ids"] = [f"{t['type']}:{t['value']}" for t in listed or []]
    if with_coupons:
        codes, more = stripe_api.list_promotion_codes(active=True)
        calls += more
        coupons: dict[str, list[str]] = defaultdict(list)  # customer -> "COUPON:CODE" of its promotion codes
        for code in codes:
            if code.get("customer"):
                coupons[code["customer"]].append(f"{(code.get('promotion') or {}).get('coupon')}:{code.get('code')}")
        for row in rows:
            row["_coupons"] = coupons.get(row["id"], [])
    # A fuller listing is also a fresh plain one.
    keys = {
        REFRESHED,
        key,
        REFRESHED + (":tax_ids" if with_tax_ids else ""),
        REFRESHED + (":coupons" if with_coupons else ""),
    }
    store.replace_customers(rows, listed_from=listed_from, refreshed_keys=sorted(keys))
    return calls
