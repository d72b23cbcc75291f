"""A plain reference of the sync plan, written from the README's rules for sync files ("Reverse ETL to Stripe
customers"): row by row, dicts and `re`, no pandas or numpy. The property tests check that
giftflow.domain.sync_plan (wanted_frame + plan_sync) decides exactly what this decides.

It covers the fields the tests generate: id, email, name, phone, description, balance, address, shipping,
metadata columns, tax_id with a fixed type, source. Not covered: a JSON metadata column, tax-id types from a
column, coupons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from giftflow.domain.stripe_fields import ISO_COUNTRIES, METADATA_MAX_VALUE_LEN
from giftflow.domain.sync_spec import SyncSpec
from giftflow.domain.vocabulary import Action, RejectReason

EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
PHONE = re.compile(r"\+[1-9][0-9]{6,14}")
PHONE_SEPARATORS = re.compile(r"[\s().\-/]")
BALANCE = re.compile(r"[+-]?[0-9]{1,15}")


@dataclass(frozen=True)
class Decision:
    action: str
    reasons: frozenset[str]  # a reject's reasons (each validation problem, or one RejectReason); empty otherwise
    changed: frozenset[str]  # update: the fields that differ; create: the fields (address / shipping whole) sent
    customer_id: str | None  # update / none: the customer matched
    identity: str | None  # create: what the create is known by


def text(value) -> str | None:
    """A cell as trimmed text; missing or blank is no value."""
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def wanted_row(spec: SyncSpec, row: dict) -> tuple[dict, list[str]]:
    """What one source row wants, field by field (None: empty), and its validation problems (README: e-mail,
    + international phone, ISO countries, tax-id types, whole balance in minor units, metadata values <= 500
    characters, a shipping address needs a name)."""
    problems: list[str] = []
    want: dict = {}
    for field, column in spec.mapping.columns().items():
        want[field] = text(row[column])
    if "tax_id.value" in want:
        value = want.pop("tax_id.value")
        value = re.sub(r"\s", "", value) if value is not None else None
        want["tax_id"] = f"{spec.mapping.tax_id.type}:{value}" if value else None
    if want.get("email") is not None and (not EMAIL.fullmatch(want["email"]) or len(want["email"]) > 512):
        problems.append("email: not a valid e-mail address")
    for field in ("phone", "shipping.phone"):
        if want.get(field) is not None:
            want[field] = PHONE_SEPARATORS.sub("", want[field])
            if not PHONE.fullmatch(want[field]):
                problems.append(f"{field}: not an international phone number (+ country code, 7-15 digits)")
    for field in ("address.country", "shipping.address.country"):
        if want.get(field) is not None:
            want[field] = want[field].upper()
            if want[field] not in ISO_COUNTRIES:
                problems.append(f"{field}: not an ISO 3166-1 alpha-2 code")
    if want.get("balance") is not None:
        if BALANCE.fullmatch(want["balance"]):
            want["balance"] = int(want["balance"])
        else:
            problems.append("balance: not a whole amount in minor units (cents)")
    for field, value in want.items():
        if field.startswith("metadata.") and value is not None and len(value) > METADATA_MAX_VALUE_LEN:
            problems.append(f"{field}: longer than {METADATA_MAX_VALUE_LEN} characters")
    if any(f.startswith("shipping.") for f in want):
        if not any(v is not None for f, v in want.items() if f.startswith("shipping.address.")):
            # A shipping name or phone alone is no shipping address: the row sends no shipping.
            for f in ("shipping.name", "shipping.phone"):
                if f in want:
                    want[f] = None
        elif want.get("shipping.name") is None:
            problems.append("shipping: a shipping address needs shipping.name")
    return want, problems


def current_value(customer: dict, field: str):
    """What Stripe holds for a field (None: nothing; balance: an int, 0 when none)."""
    if field == "balance":
        return int(customer.get("balance") or 0)
    if field == "tax_id":
        return set(customer.get("_tax_ids") or [])
    if field == "source":
        return customer.get("default_source") or None
    parts = field.split(".")
    if parts[0] == "metadata":
        return (customer.get("metadata") or {}).get(parts[1]) or None
    if parts[0] == "address":
        return (customer.get("address") or {}).get(parts[1]) or None
    if parts[0] == "shipping":
        shipping = customer.get("shipping") or {}
        if parts[1] == "address":
            return (shipping.get("address") or {}).get(parts[2]) or None
        return shipping.get(parts[1]) or None
    return customer.get(field) or None


def differs(spec: SyncSpec, field: str, want, have) -> bool:
    """Does the customer need this field written? empty_values leave: an empty cell changes nothing; clear: it
    clears the field (but never the e-mail a sync matches on). Tax ids are added when missing, never removed; a
    payment source is sent only while the customer has none. E-mails compare case-insensitively."""
    if field.split(".")[0] in spec.create_only:
        return False
    if field == "tax_id":
        return want is not None and want not in have
    if field == "source":
        return want is not None and have is None
    if field == "balance":  # a cleared balance is 0
        return (want is not None or spec.empty_values == "clear") and (want or 0) != have
    if want is None:
        return spec.empty_values == "clear" and have is not None and not (field == "email" and spec.identifier == "email")
    if field == "email":
        return have is None or want.lower() != have.lower()
    return want != have


def created_fields(want: dict) -> frozenset[str]:
    """The fields a create sends: those with a value, address and shipping as a whole."""
    return frozenset(
        f.split(".")[0] if f.startswith(("address.", "shipping.")) else f
        for f, v in want.items()
        if v is not None and f != "id"
    )


def norm_email(value) -> str | None:
    value = text(value)
    return value.lower() if value else None


def plan(
    spec: SyncSpec, rows: list[dict], customers: list[dict], written_back: dict[str, str] | None = None
) -> list[Decision]:
    """One decision per source row, in order."""
    written_back = written_back or {}
    by_id: dict[str, dict] = {}
    for customer in customers:
        by_id.setdefault(customer["id"], customer)

    def newest_with_email(email: str | None) -> dict | None:
        same = [c for c in by_id.values() if norm_email(c.get("email")) == email] if email else []
        return max(same, key=lambda c: (int(c.get("created") or 0), c["id"]), default=None)

    out: list[Decision] = []
    seen_keys: set[str] = set()
    claimed_customers: set[str] = set()
    created_emails: set[str] = set()
    for row in rows:
        want, problems = wanted_row(spec, row)
        key = text(row[spec.key_column])
        if key is None:
            problems.append(f"no value in the primary key column {spec.key_column!r}")
        elif key in seen_keys:
            problems.append(f"duplicate {spec.key_column!r}: an earlier row has the same value")
        if key is not None:
            seen_keys.add(key)
        given_id = want.get("id")
        email = want["email"].lower() if want.get("email") else None
        if spec.identifier == "email" and email is None and given_id is None:
            problems.append("no e-mail to match on")

        # Matching: the mapped id, else an id written back by this sync's earlier create, else the newest
        # customer with that e-mail (identifier email).
        customer = by_id.get(given_id) if given_id else None
        if customer is None and key is not None and written_back.get(key):
            customer = by_id.get(written_back[key])
        if customer is None and spec.identifier == "email":
            customer = newest_with_email(email)

        def reject(*reasons: str) -> Decision:
            return Decision(Action.REJECT, frozenset(reasons), frozenset(), None, None)

        if problems:
            out.append(reject(*problems))
        elif customer is not None:
            if customer["id"] in claimed_customers:
                out.append(reject(RejectReason.SAME_CUSTOMER))
                continue
            claimed_customers.add(customer["id"])
            fields = [f for f in want if f != "id"]
            changed = frozenset(f for f in fields if differs(spec, f, want[f], current_value(customer, f)))
            out.append(Decision(Action.UPDATE if changed else Action.NONE, frozenset(), changed, customer["id"], None))
        elif spec.mode == "update":
            out.append(
                reject(
                    RejectReason.NO_CUSTOMER_WITH_ID_UPDATE
                    if spec.identifier == "id"
                    else RejectReason.NO_CUSTOMER_WITH_EMAIL_UPDATE
                )
            )
        elif spec.identifier == "id":
            if given_id is not None:
                out.append(reject(RejectReason.NO_CUSTOMER_WITH_ID))
            else:
                out.append(Decision(Action.CREATE, frozenset(), created_fields(want), None, f"sync:{spec.name}:{key}"))
        elif email is None:
            out.append(reject(RejectReason.NO_CUSTOMER_NO_EMAIL))
        elif email in created_emails:
            out.append(reject(RejectReason.SAME_EMAIL_CREATE))
        else:
            created_emails.add(email)
            out.append(Decision(Action.CREATE, frozenset(), created_fields(want), None, email))
    return out
