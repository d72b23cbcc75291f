"""The fast reconcile (giftflow/domain/giftcard.py, vectorised past easy reading) against a plain version written
from giftflow-contract.md ("The gift-card sync"), row by row with dicts: on random inputs both must decide the
same customers, actions, reasons and metadata values."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from giftflow.domain.giftcard import METADATA_KEYS, customers_frame, wanted_by_customer
from giftflow.domain.redemptions import redemptions_frame

DAY = datetime(2026, 11, 20, tzinfo=timezone.utc)
EMAILS = ["ana@x.com", "ben@x.com", "cy@x.com", "dee@x.com"]


def reference(redemptions: list[dict], customers: list[dict], start: datetime, end: datetime, mode: str) -> set:
    """The contract, plainly: what Stripe should hold per customer touched by the day, or why it is left out."""
    by_id = {c["id"]: c for c in customers}
    by_mail: dict[str, list[dict]] = {}
    for c in customers:
        mail = (c["email"] or "").strip().lower()
        if mail:
            by_mail.setdefault(mail, []).append(c)

    def match(r: dict) -> tuple[str | None, bool]:
        if r["stripe_customer_id"] in by_id:
            return r["stripe_customer_id"], False
        sharing = by_mail.get(r["email_norm"] or "", [])
        if not sharing:
            return None, False
        newest = max(sharing, key=lambda c: (c["created"], c["id"]))
        return newest["id"], len(sharing) > 1

    matched = [(r, *match(r)) for r in redemptions]
    in_day = [start <= r["redeemed_at"] < end for r in redemptions]

    def values(rs: list[dict]) -> tuple[dict, int]:
        done = [r for r in rs if r["status"] == "completed"]
        currencies = {r["currency"] for r in done}
        if len(currencies) > 1:  # sums across currencies are not money: nothing is written
            return dict.fromkeys(METADATA_KEYS), len(currencies)
        if not done:
            return {
                "giftcard_redeemed_total": "0",
                "giftcard_redemptions": "0",
                "giftcard_currency": None,
                "giftcard_last_redeemed_at": None,
                "giftcard_last4": None,
            }, 0
        last = max(done, key=lambda r: (r["redeemed_at"], r["redemption_id"]))
        return {
            "giftcard_redeemed_total": str(sum(r["amount"] for r in done)),
            "giftcard_currency": done[0]["currency"],
            "giftcard_redemptions": str(len(done)),
            "giftcard_last_redeemed_at": last["redeemed_at"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "giftcard_last4": last["card_last4"],
        }, 1

    def listed(rs: list[tuple[dict, bool]]) -> str:  # the currencies a multi-currency customer has, shown
        return ",".join(sorted({r["currency"] for r, _ in rs if r["status"] == "completed"}))

    out = set()
    touched = {cid for (r, cid, _), day in zip(matched, in_day) if cid and day}
    for cid in touched:
        mine = [(r, amb) for r, c, amb in matched if c == cid]
        meta, currencies = values([r for r, _ in mine])
        action, reason = ("skip", "multi_currency") if currencies > 1 else ("sync", "")
        note = listed(mine) if currencies > 1 else "ambiguous" if any(amb for _, amb in mine) else ""
        out.add((cid, by_id[cid]["email_norm"], action, reason, note, *(meta[k] for k in METADATA_KEYS)))
    unmatched = [r for r, c, _ in matched if c is None]
    lost_mails = {
        r["email_norm"] for r, c, _ in matched if c is None and r["email_norm"] and start <= r["redeemed_at"] < end
    }
    for mail in lost_mails:
        meta, currencies = values([r for r in unmatched if r["email_norm"] == mail])
        if mode == "upsert" and currencies == 1:
            action, reason = "sync", ""
        else:
            action, reason = "skip", "multi_currency" if currencies > 1 and mode == "upsert" else "unmatched"
        note = listed([(r, False) for r in unmatched if r["email_norm"] == mail]) if currencies > 1 else ""
        out.add((None, mail, action, reason, note, *(meta[k] for k in METADATA_KEYS)))
    for r, c, _ in matched:
        if c is None and not r["email_norm"] and start <= r["redeemed_at"] < end:
            out.add((None, None, "skip", "anonymous", r["redemption_id"], *(None for _ in METADATA_KEYS)))
    return out


def fast(redemptions: list[dict], customers: list[dict], start: datetime, end: datetime, mode: str) -> set:
    frame = redemptions_frame(redemptions)
    custs = customers_frame(customers)
    plan = wanted_by_customer(frame, custs, start, end, mode)
    out = set()
    for row in plan.to_dict("records"):
        note = "ambiguous" if row["note"] == "ambiguous_email" else (row["note"] or "")
        clean = {k: (None if pd.isna(v) else v) for k, v in row.items() if k in (*METADATA_KEYS, "customer_id", "email")}
        out.add(
            (
                clean["customer_id"],
                clean["email"],
                row["action"],
                row["reason"] or "",
                note,
                *(clean[k] for k in METADATA_KEYS),
            )
        )
    return out


customers_st = st.lists(
    st.tuples(st.sampled_from([*EMAILS, None]), st.sampled_from([" ", "", "  "]), st.booleans(), st.integers(0, 3)),
    max_size=6,
).map(
    lambda specs: [
        {"id": f"cus_{i}", "email": (pad + (e.upper() if up else e)) if e else None, "created": created, "metadata": {}}
        for i, (e, pad, up, created) in enumerate(specs)
    ]
)

redemptions_st = st.lists(
    st.tuples(
        st.sampled_from([*EMAILS, None]),
        st.sampled_from([None, None, "cus_0", "cus_1", "cus_9"]),
        st.sampled_from(["completed", "completed", "voided"]),
        st.integers(1, 5000),
        st.sampled_from(["usd", "usd", "eur"]),
        st.integers(-1, 1),
        st.integers(0, 3),
    ),
    max_size=14,
).map(
    lambda specs: [
        {
            "redemption_id": f"rdm_{i:02d}",
            "status": status,
            "amount": amount,
            "currency": currency,
            "card_last4": f"{1000 + i}",
            "gift_card_id": f"gc_{i}",
            "email": email,
            "email_norm": email,
            "name": None,
            "phone": None,
            "stripe_customer_id": link,
            "location": "online",
            # Same-second times on purpose: ties on redeemed_at are broken by the redemption id.
            "redeemed_at": DAY + timedelta(days=day, seconds=sec * 3600),
            "updated_at": DAY + timedelta(days=2),
        }
        for i, (email, link, status, amount, currency, day, sec) in enumerate(specs)
    ]
)


@settings(max_examples=120, deadline=None)
@given(redemptions=redemptions_st, customers=customers_st, mode=st.sampled_from(["update", "upsert"]))
def test_the_fast_reconcile_decides_what_the_contract_says(redemptions, customers, mode):
    start, end = DAY, DAY + timedelta(days=1)
    for c in customers:
        c["email_norm"] = (c["email"] or "").strip().lower() or None
    assert fast(redemptions, customers, start, end, mode) == reference(redemptions, customers, start, end, mode)
