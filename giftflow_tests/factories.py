"""Small builders for Cardivo redemption records and Stripe customers used across tests."""

from __future__ import annotations

from datetime import datetime, timezone
from itertools import count

_ids = count(1)


def redemption(**over) -> dict:
    n = next(_ids)
    base = {
        "id": f"rdm_t{n:05d}",
        "status": "completed",
        "amount": 2500,
        "currency": "usd",
        "balance_after": 0,
        "gift_card": {"id": f"gc_t{n}", "code": f"CRDV-AAAA-BBBB-{n:04d}", "initial_value": 10000, "currency": "usd"},
        "customer": {"email": "ana.silva@example.com", "name": "Ana Silva", "phone": "+14155550100"},
        "stripe_customer_id": None,
        "location": "online",
        "redeemed_at": "2026-11-20T14:03:11Z",
        "updated_at": "2026-11-20T14:03:11Z",
    }
    for key, value in over.items():
        if key == "email":
            base["customer"] = {**base["customer"], "email": value}
        else:
            base[key] = value
    if "currency" in over and "gift_card" not in over:
        base["gift_card"] = {**base["gift_card"], "currency": over["currency"]}
    if "redeemed_at" in over and "updated_at" not in over:
        base["updated_at"] = over["redeemed_at"]
    return base


def customer(cid: str, email: str | None, created: int = 1_700_000_000, metadata: dict | None = None) -> dict:
    return {"id": cid, "email": email, "created": created, "metadata": metadata or {}}


def day(d: str) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(d).replace(tzinfo=timezone.utc)
    return start, start.replace(day=start.day + 1)
