"""A seeded, coherent world of Stripe customers, payments and fraud warnings and Cardivo redemptions, with the
untidiness of real data."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

FIRST = [
    "Ana",
    "Ben",
    "Chloe",
    "Diego",
    "Elif",
    "Farah",
    "Goran",
    "Hana",
    "Ivan",
    "Jun",
    "Kofi",
    "Lena",
    "Mateo",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tara",
    "Uma",
    "Victor",
    "Wen",
    "Yusuf",
]
LAST = [
    "Silva",
    "Becker",
    "Dubois",
    "Garcia",
    "Kaya",
    "Haddad",
    "Novak",
    "Sato",
    "Petrov",
    "Kim",
    "Mensah",
    "Fischer",
    "Rossi",
    "Khan",
    "Murphy",
    "Patel",
    "Lopez",
    "Berg",
    "Singh",
    "Moreau",
    "Chen",
    "Ali",
]
DOMAINS = ["example.com", "example.org", "mail.example.net", "example.co.uk"]
LOCATIONS = ["online", "online", "store_soho", "store_midtown", "kiosk_airport"]
INITIAL_VALUES = {"usd": [2500, 5000, 10000, 20000], "eur": [2500, 5000, 10000], "jpy": [3000, 5000, 10000, 20000]}
MIN_AMOUNT = 100  # cents, or yen (jpy has no minor unit)
MAX_AMOUNT = {"usd": 15000, "eur": 12000, "jpy": 15000}
FRAUD_TYPES = [
    "made_with_stolen_card",
    "made_with_stolen_card",
    "unauthorized_use_of_card",
    "card_never_received",
    "made_with_lost_card",
    "misc",
]
REFUND_REASONS = ["requested_by_customer", "requested_by_customer", "duplicate", None]
_CODE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no I/O/0/1: codes are read aloud and typed
_ID_CHARS = string.ascii_letters + string.digits


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with `Z`, to the second (as Cardivo sends times)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with a zone (`Z` or an offset) as an aware UTC datetime; ValueError otherwise."""
    if len(text) < 20 or text[10] not in "Tt ":
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    value = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
    if value.tzinfo is None:
        raise ValueError(f"RFC 3339 time without a zone: {text!r}")
    return value.astimezone(timezone.utc)


@dataclass
class World:
    seed: int
    days: list[date]
    customers: list[dict]  # Stripe customers (id, email, name, phone, created, metadata)
    redemptions: list[dict]  # Cardivo Redemptions, oldest first
    gift_cards: list[dict]  # Cardivo "Find Gift Card" objects, balances after every redemption and void
    # Stripe payments, oldest first (`created`, unix seconds, within the world's UTC days); load them with
    # `StripeState.from_world`. Charges carry their refunds in `refunds.data`, newest first, as Stripe does.
    payment_intents: list[dict] = field(default_factory=list)
    charges: list[dict] = field(default_factory=list)
    early_fraud_warnings: list[dict] = field(default_factory=list)


@dataclass
class _Card:
    id: str
    code: str
    currency: str
    initial_value: int
    link: str | None
    created_at: datetime
    owner: _Person | None
    uses: list[tuple[datetime, int, datetime | None]] = field(default_factory=list)  # (at, amount, voided_at)

    def available(self, at: datetime) -> int:
        # a void gives the amount back only from the moment of the void on
        return self.initial_value - sum(a for _, a, voided in self.uses if voided is None or voided > at)


@dataclass
class _Person:
    name: str
    email: str  # canonical, lower case
    phone: str | None
    stripe_ids: list[str]
    currencies: list[str]
    weight: float
    cards: list[_Card] = field(default_factory=list)
    uses: int = 0


class _Ids:
    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def new(self, prefix: str, length: int) -> str:
        while (value := prefix + "".join(self.rng.choices(_ID_CHARS, k=length))) in self.used:
            pass
        self.used.add(value)
        return value


def _mixed_case(email: str) -> str:
    local, _, domain = email.partition("@")
    return ".".join(part.capitalize() for part in local.split(".")) + "@" + domain


def _as_typed(rng: random.Random, email: str) -> str:
    r = rng.random()
    if r < 0.45:
        return email
    if r < 0.70:
        return _mixed_case(email)
    if r < 0.75:
        return email.upper()
    if r < 0.88:
        return rng.choice([f" {email}", f"{email} ", f"  {email}\t"])
    return _mixed_case(email) + " "


def _day_seconds(rng: random.Random, n: int) -> list[int]:
    # every day has a redemption at 00:00:00 and one at 23:59:59, to exercise window boundaries
    if n < 2:
        return sorted(rng.sample(range(86400), n))
    return [0, *sorted(rng.sample(range(1, 86399), n - 2)), 86399]


_NOW = datetime.now(timezone.utc)


def build_world(
    seed: int, days: list[date], redemptions_per_day: int = 40, customers: int = 60, payments_per_day: int = 20
) -> World:
    """One coherent, deterministic world: the same seed and arguments give the same customers and redemptions
    (payments come from a separate random stream: `payments_per_day` does not move them)."""
    if customers < 8:
        raise ValueError("customers must be at least 8")
    rng, days = random.Random(seed), sorted(days)
    ids = _Ids(rng)
    start = datetime.combine(days[0], time(), timezone.utc)
    n_people = customers - 1 + max(3, customers // 6)  # one person has two Stripe customers; some have none
    people: list[_Person] = []
    stripe_customers: list[dict] = []
    for i, (first, last) in enumerate(rng.sample([(f, la) for f in FIRST for la in LAST], n_people)):
        email = f"{first}.{last}@{rng.choice(DOMAINS)}".lower()
        phone = f"+1415555{rng.randrange(10000):04d}" if rng.random() < 0.8 else None
        currencies = [rng.choices(["usd", "eur", "jpy"], [80, 15, 5])[0]]
        # a few fixed people guarantee every currency and some two-currency customers in any world
        forced = {1: ["eur"], 2: ["jpy"], 3: ["usd", "eur"], 4: ["eur", "usd"], 5: ["usd", "jpy"]}
        currencies = forced.get(i, currencies)
        person = _Person(f"{first} {last}", email, phone, [], currencies, 1.5 if i < 6 else rng.uniform(0.3, 3))
        people.append(person)
        if i >= customers - 1:
            continue
        # person 0 is in Stripe twice under one e-mail (different case, different created)
        for email_as_stored in (
            [email, _mixed_case(email)] if i == 0 else [_mixed_case(email) if rng.random() < 0.2 else email]
        ):
            created = int((start - timedelta(days=rng.uniform(1, 400))).timestamp())
            if person.stripe_ids:
                created = stripe_customers[-1]["created"] + rng.randint(86400, 30 * 86400)
            cid = ids.new("cus_", 14)
            person.stripe_ids.append(cid)
            stripe_customers.append(
                {
                    "id": cid,
                    "email": email_as_stored,
                    "name": person.name,
                    "phone": phone,
                    "created": created,
                    "metadata": {},
                }
            )
    # people without a Stripe customer make about 10 % of the non-anonymous redemptions
    stripe_weight = sum(p.weight for p in people if p.stripe_ids)
    extra = [p for p in people if not p.stripe_ids]
    for p in extra:
        p.weight = stripe_weight / 11 / len(extra)
    weights = [p.weight for p in people]

    cards: list[_Card] = []

    def new_card(owner: _Person | None, currency: str, at: datetime) -> _Card:
        groups = ["".join(rng.choices(_CODE_CHARS, k=4)) for _ in range(2)]
        link = owner.stripe_ids[0] if owner and owner.stripe_ids and rng.random() < 0.2 else None
        card = _Card(
            ids.new("gc_", 8),
            f"CRDV-{groups[0]}-{groups[1]}-{rng.randrange(10000):04d}",
            currency,
            rng.choice(INITIAL_VALUES[currency]),
            link,
            at - timedelta(days=rng.randint(1, 120), seconds=rng.randrange(86400)),
            owner,
        )
        cards.append(card)
        if owner:
            owner.cards.append(card)
        return card

    redemptions: list[tuple[dict, _Card]] = []
    for day in days:
        midnight = datetime.combine(day, time(), timezone.utc)
        for second in _day_seconds(rng, redemptions_per_day):
            at = midnight + timedelta(seconds=second)
            person = None if rng.random() < 0.05 else rng.choices(people, weights)[0]
            if person is None:
                card = new_card(None, rng.choices(["usd", "eur"], [9, 1])[0], at)
            else:
                currency = person.currencies[person.uses % len(person.currencies)]
                person.uses += 1
                usable = [c for c in person.cards if c.currency == currency and c.available(at) >= MIN_AMOUNT]
                card = usable[0] if usable and rng.random() < 0.7 else new_card(person, currency, at)
            available = card.available(at)
            amount = rng.randint(MIN_AMOUNT, max(MIN_AMOUNT, min(available, MAX_AMOUNT[card.currency])))
            if card.currency == "jpy":
                amount = max(MIN_AMOUNT, amount // 10 * 10)
            if available - amount < MIN_AMOUNT:
                amount = available  # the rest of the card, as people do
            voided_at = at + timedelta(seconds=rng.randint(120, 2 * 86400)) if rng.random() < 0.05 else None
            if voided_at is not None and voided_at > _NOW:
                voided_at = None  # a void still to come has not happened yet: nothing is stamped in the future
            card.uses.append((at, amount, voided_at))
            customer = None
            if person is not None:
                customer = {
                    "email": _as_typed(rng, person.email) if rng.random() > 0.02 else None,
                    "name": person.name if rng.random() > 0.04 else None,
                    "phone": person.phone,
                }
            redemptions.append(
                (
                    {
                        "id": ids.new("rdm_", 10),
                        "status": "voided" if voided_at else "completed",
                        "amount": amount,
                        "currency": card.currency,
                        "balance_after": available - amount,
                        "gift_card": {
                            "id": card.id,
                            "code": card.code,
                            "initial_value": card.initial_value,
                            "currency": card.currency,
                        },
                        "customer": customer,
                        "stripe_customer_id": None,
                        "location": rng.choice(LOCATIONS) if person else rng.choice(LOCATIONS[2:]),
                        "redeemed_at": format_time(at),
                        "updated_at": format_time(voided_at or at),
                    },
                    card,
                )
            )

    # one card linked to a Stripe customer that no longer exists (deleted, or a typo by the merchant)
    linked = [c for c in cards if c.link]
    if linked:
        linked[-1].link = ids.new("cus_", 14)
    for record, card in redemptions:
        record["stripe_customer_id"] = card.link

    gift_cards = []
    for card in cards:
        balance = card.initial_value - sum(a for _, a, voided in card.uses if voided is None)
        purchaser = rng.choice([None, card.owner, rng.choice(people)])
        gift_cards.append(
            {
                "id": card.id,
                "code": card.code,
                "initial_value": card.initial_value,
                "balance": balance,
                "currency": card.currency,
                "status": "active" if balance else "redeemed",
                "recipient": {"email": card.owner.email, "name": card.owner.name} if card.owner else None,
                "purchaser": {"email": purchaser.email, "name": purchaser.name} if purchaser else None,
                "created_at": format_time(card.created_at),
                "expires_at": format_time(card.created_at + timedelta(days=730)) if rng.random() < 0.7 else None,
            }
        )
    return World(
        seed,
        days,
        stripe_customers,
        [r for r, _ in redemptions],
        gift_cards,
        *_payments(seed, days, stripe_customers, payments_per_day),
    )


def _payments(seed: int, days: list[date], customers: list[dict], per_day: int) -> tuple[list, list, list]:
    """Payment intents (most succeeded, every day some on each side of 100000 and 200000 usd cents, some in eur,
    some without customer), their charges (some partly or fully refunded, a few disputed) and early fraud
    warnings: every day on small (< 1500 unrefunded) and large charges, and once in a world each on a charge
    partly refunded to under 1500, a fully refunded one, a disputed one, a small eur one and one of exactly 1500."""
    rng = random.Random(f"giftflow-payments-{seed}")
    ids = _Ids(rng)
    customer_ids = [c["id"] for c in customers]
    world_end = int(datetime.combine(days[-1], time(23, 59, 59), timezone.utc).timestamp())
    intents: list[dict] = []
    charges: list[dict] = []
    warnings: list[dict] = []

    def pay(at: int, currency: str, amount: int, with_customer: bool = True, status: str = "succeeded") -> dict | None:
        order = f"{rng.randrange(100000, 999999)}"
        pi = {
            "id": ids.new("pi_", 24),
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "currency": currency,
            "customer": rng.choice(customer_ids) if with_customer else None,
            "created": at,
            "status": status,
            "latest_charge": None,
            "payment_method": None,
            "description": f"Order #{order}",
            "metadata": {"order_id": order},
            "canceled_at": None,
            "cancellation_reason": None,
        }
        intents.append(pi)
        if status == "canceled":
            pi.update(canceled_at=min(at + rng.randint(900, 86400), max(at, world_end)), cancellation_reason="abandoned")
        if status != "succeeded":
            return None
        charge_id = ids.new("ch_", 24)
        pi.update(amount_received=amount, latest_charge=charge_id, payment_method=ids.new("pm_", 24))
        charges.append(
            {
                "id": charge_id,
                "object": "charge",
                "amount": amount,
                "amount_captured": amount,
                "amount_refunded": 0,
                "refunded": False,
                "disputed": False,
                "currency": currency,
                "customer": pi["customer"],
                "payment_intent": pi["id"],
                "payment_method": pi["payment_method"],
                "created": at,
                "description": pi["description"],
                "metadata": dict(pi["metadata"]),
                "status": "succeeded",
                "paid": True,
                "refunds": {
                    "object": "list",
                    "data": [],
                    "has_more": False,
                    "total_count": 0,
                    "url": f"/v1/charges/{charge_id}/refunds",
                },
            }
        )
        return charges[-1]

    def refund(charge: dict, amount: int, at: int) -> None:
        charge["refunds"]["data"].insert(
            0,
            {
                "id": ids.new("re_", 24),
                "object": "refund",
                "amount": amount,
                "charge": charge["id"],
                "payment_intent": charge["payment_intent"],
                "currency": charge["currency"],
                "customer": charge["customer"],
                "created": min(at, max(world_end, charge["created"])),
                "reason": rng.choice(REFUND_REASONS),
                "status": "succeeded",
                "metadata": {},
            },
        )
        charge["refunds"]["total_count"] += 1
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]

    def warn(charge: dict, at: int) -> None:
        warnings.append(
            {
                "id": ids.new("issfr_", 24),
                "object": "radar.early_fraud_warning",
                "charge": charge["id"],
                "payment_intent": charge["payment_intent"],
                "fraud_type": rng.choice(FRAUD_TYPES),
                "actionable": not (charge["refunded"] or charge["disputed"]),
                "created": at,
                "livemode": False,
            }
        )

    # once in a world each, on days in turn: (kind, currency, amount, with customer)
    specials = [
        ("partly_refunded", "usd", 3000, True),
        ("fully_refunded", "usd", rng.randint(1000, 8000), True),
        ("disputed", "usd", rng.randint(500, 1499), True),
        ("small", "eur", rng.randint(500, 1499), True),
        ("small", "usd", 1500, True),
        ("small", "usd", rng.randint(500, 1499), False),
    ]
    for i, day in enumerate(days):
        midnight = int(datetime.combine(day, time(), timezone.utc).timestamp())
        specs = [
            ("usd", 100000, True),
            ("usd", rng.randint(100001, 199999), True),
            ("usd", 200000, True),
            ("usd", rng.randint(200001, 900000), True),
            ("usd", rng.randint(200001, 500000), False),
            ("usd", rng.randint(90000, 99999), True),
            ("eur", rng.randint(100001, 400000), True),
            ("usd", rng.randint(200001, 400000), True, "requires_payment_method"),
        ]
        while len(specs) < per_day:
            currency = rng.choices(["usd", "eur"], [85, 15])[0]
            size = rng.choices([(500, 1499), (1500, 25000), (25000, 95000), (100001, 300000)], [25, 52, 20, 3])[0]
            specs.append(
                (
                    currency,
                    rng.randint(*size),
                    rng.random() < 0.88,
                    rng.choices(["succeeded", "requires_payment_method", "canceled"], [88, 7, 5])[0],
                )
            )
        rng.shuffle(specs)
        for second, spec in zip(_day_seconds(rng, len(specs)), specs):
            charge = pay(midnight + second, *spec)
            r = rng.random()
            if charge is None:
                continue
            if r < 0.08:
                refund(
                    charge,
                    max(1, charge["amount"] * rng.choice([10, 25, 50]) // 100),
                    charge["created"] + rng.randint(600, 3 * 86400),
                )
            elif r < 0.12:
                refund(charge, charge["amount"], charge["created"] + rng.randint(600, 3 * 86400))
            elif r < 0.15:
                charge["disputed"] = True
        # warnings arrive hours after their charge: two small, one large and the specials of the day
        targets = [
            ("small", "usd", rng.randint(500, 1499), True),
            ("small", "usd", rng.randint(500, 1499), True),
            ("large", "usd", rng.randint(30000, 95000), True),
        ]
        targets += [s for j, s in enumerate(specials) if j % len(days) == i]
        for kind, currency, amount, with_customer in targets:
            at = midnight + rng.randrange(72000)
            charge = pay(at, currency, amount, with_customer)
            if kind == "partly_refunded":
                refund(charge, 2000, at + rng.randint(60, 3000))
            elif kind == "fully_refunded":
                refund(charge, amount, at + rng.randint(60, 3000))
            elif kind == "disputed":
                charge["disputed"] = True
            warn(charge, at + rng.randint(3600, 14400))
        # and one comes days late, on a charge of an earlier day
        warned = {w["charge"] for w in warnings}
        earlier = [
            c
            for c in charges
            if c["created"] < midnight
            and c["currency"] == "usd"
            and c["amount"] >= 1500
            and not c["amount_refunded"]
            and not c["disputed"]
            and c["id"] not in warned
        ]
        if earlier:
            warn(rng.choice(earlier), midnight + rng.randrange(86400))
    by_created = lambda o: (o["created"], o["id"])  # noqa: E731
    return sorted(intents, key=by_created), sorted(charges, key=by_created), sorted(warnings, key=by_created)
