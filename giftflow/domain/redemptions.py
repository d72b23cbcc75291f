"""The Cardivo redemption record: validation against cardivo-api.md and normalisation to rows.

Pure: no I/O. A record that breaks the contract is returned with a reason instead of raising, so one
bad record never stops a day's sync.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from giftflow.domain.money import CURRENCIES

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
# Deliberately loose: the mail provider is the authority; this only rejects what cannot be an address.
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

REDEMPTION_COLUMNS = [
    "redemption_id",
    "status",
    "amount",
    "currency",
    "card_last4",
    "gift_card_id",
    "email",
    "email_norm",
    "name",
    "phone",
    "stripe_customer_id",
    "location",
    "redeemed_at",
    "updated_at",
]
# Every column but the amount and the two times: strings, or None.
TEXT_COLUMNS = [c for c in REDEMPTION_COLUMNS if c not in ("amount", "redeemed_at", "updated_at")]

NonEmpty = Annotated[str, StringConstraints(min_length=1)]
Minor = Annotated[int, Field(strict=True, ge=0)]


def _utc(value: Any) -> datetime:
    if not isinstance(value, str) or not RFC3339_UTC.match(value):
        raise ValueError("must be an RFC 3339 UTC time ending in Z")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def _currency(value: Any) -> str:
    if value not in CURRENCIES:
        raise ValueError(f"unknown currency {value!r} (lowercase ISO 4217 expected)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class GiftCard(_Strict):
    id: NonEmpty
    code: Annotated[str, StringConstraints(min_length=4)]
    initial_value: Annotated[int, Field(strict=True, gt=0)]
    currency: str

    @model_validator(mode="after")
    def _check(self) -> GiftCard:
        _currency(self.currency)
        return self


class Person(_Strict):
    email: str | None = None
    name: str | None = None
    phone: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Person:
        if self.email is not None and not EMAIL.match(self.email.strip()):
            raise ValueError("customer.email is not an e-mail address")
        return self


class Redemption(_Strict):
    id: NonEmpty
    status: Literal["completed", "voided"]
    amount: Annotated[int, Field(strict=True, gt=0)]
    currency: str
    balance_after: Minor
    gift_card: GiftCard
    customer: Person | None
    stripe_customer_id: str | None = None
    location: str | None = None
    redeemed_at: str
    updated_at: str

    @model_validator(mode="after")
    def _check(self) -> Redemption:
        _currency(self.currency)
        if self.gift_card.currency != self.currency:
            raise ValueError("gift_card.currency differs from currency")
        if self.amount + self.balance_after > self.gift_card.initial_value:
            raise ValueError("amount + balance_after exceeds the card's initial_value")
        if self.stripe_customer_id is not None and not self.stripe_customer_id.startswith("cus_"):
            raise ValueError("stripe_customer_id is not a Stripe customer id")
        if _utc(self.updated_at) < _utc(self.redeemed_at):
            raise ValueError("updated_at is before redeemed_at")
        return self


def _reason(error: ValidationError) -> str:
    parts = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "record"
        parts.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def redact(record: Any) -> Any:
    """The record with the gift-card code cut to its last 4 characters: the code is a bearer secret."""
    if not isinstance(record, dict):
        return record
    out = dict(record)
    card = out.get("gift_card")
    if isinstance(card, dict) and isinstance(card.get("code"), str):
        out["gift_card"] = {**card, "code": "…" + card["code"][-4:]}
    return out


def record_key(record: Any) -> str:
    """A stable key for a bad record: its id where it has a usable one, else a hash of its content."""
    if isinstance(record, dict) and isinstance(record.get("id"), str) and record["id"]:
        return record["id"]
    blob = json.dumps(redact(record), sort_keys=True, default=str).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()[:16]


def validate_redemptions(records: list[Any]) -> tuple[pd.DataFrame, list[dict]]:
    """Split raw API records into a normalised DataFrame and quarantined records with reasons.

    The same id twice keeps the most recently updated version (a void arrives as a newer copy).
    """
    rows: list[dict] = []
    bad: list[dict] = []
    for raw in records:
        try:
            r = Redemption.model_validate(raw)
        except ValidationError as exc:
            bad.append({"record_key": record_key(raw), "reason": _reason(exc), "payload": redact(raw)})
            continue
        person = r.customer or Person()
        email = person.email.strip() if person.email else None
        rows.append(
            {
                "redemption_id": r.id,
                "status": r.status,
                "amount": r.amount,
                "currency": r.currency,
                "card_last4": r.gift_card.code[-4:],
                "gift_card_id": r.gift_card.id,
                "email": email,
                "email_norm": email.lower() if email else None,
                "name": person.name,
                "phone": person.phone,
                "stripe_customer_id": r.stripe_customer_id,
                "location": r.location,
                "redeemed_at": _utc(r.redeemed_at),
                "updated_at": _utc(r.updated_at),
            }
        )
    frame = redemptions_frame(rows)
    if len(frame):
        frame = frame.sort_values(["updated_at", "redemption_id"]).drop_duplicates("redemption_id", keep="last")
    return frame.reset_index(drop=True), bad


def redemptions_frame(rows: list[dict]) -> pd.DataFrame:
    """A redemption DataFrame with the canonical columns and dtypes, from row dicts."""
    frame = pd.DataFrame(rows, columns=REDEMPTION_COLUMNS)
    frame["amount"] = frame["amount"].astype("int64")
    for col in ("redeemed_at", "updated_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    for col in TEXT_COLUMNS:
        frame[col] = frame[col].astype("object")
    return frame
