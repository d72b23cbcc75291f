"""Property tests: the vectorised plan (wanted_frame + plan_sync) decides, row by row, exactly what the plain
reference written from the README decides (giftflow_tests/sync_plan_reference.py): same action, same reasons,
same changed fields, same customer or create identity.

Inputs are drawn from small pools so that collisions are common: e-mails differing in case and whitespace,
customers sharing an e-mail and a `created`, ids and written-back ids of missing customers, empty and blank
cells, duplicate rows and keys, create_only fields, update and upsert modes, empty frames.
"""

from __future__ import annotations

import pandas as pd
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from giftflow.domain.sync_plan import current_frame, fields_of, plan_sync, request, wanted_frame
from giftflow.domain.sync_spec import parse_sync
from giftflow.domain.vocabulary import Action
from giftflow_tests import sync_plan_reference as reference

# Optional mapping entries: Stripe field -> the source column the tests use.
OPTIONAL = {
    "name": "full_name",
    "phone": "phone",
    "description": "notes",
    "balance": "bal",
    "source": "tok",
    "address": {"city": "city", "country": "country"},
    "shipping": {"name": "ship_name", "city": "ship_city"},
    "metadata": {"columns": {"tier": "tier", "plan": "plan"}},
    "tax_id": {"type": "eu_vat", "value": "vat"},
}
CUSTOMER_IDS = ["cus_A", "cus_B", "cus_C", "cus_D"]
LONG = "x" * 501


def cell(valid, odd=(), blank=True):
    """A cell: mostly one of `valid`, sometimes one of `odd` (invalid, or unusual), nothing or blank."""
    return st.sampled_from([*valid * 3, *odd, *([None, "", "  "] if blank else [None])])


CELLS = {
    "key": cell(["k1", "k2", "k3", "k4", "k5", "k6"], [" k1 "], blank=False),
    "cid": cell(CUSTOMER_IDS, ["cus_GONE", " cus_A "]),
    "email": cell(
        [
            "ann@example.com",
            "ANN@Example.com",
            " ann@example.com\t",
            "bob@example.com",
            "Bob@example.com ",
            "cy@example.com",
        ],
        ["not-an-email", "ann@example"],
    ),
    "full_name": cell(["Ann", " Ann ", "Bob"]),
    "phone": cell(["+442012345678", "+44 20 1234 5678", "+15551234567"], ["12345"]),
    "notes": cell(["vip", "VIP"]),
    "bal": cell(["0", "-0", "00", "+007", "7", "-250"], ["1.5", "x"]),
    "tok": cell(["tok_visa"]),
    "city": cell(["London", "Paris"]),
    "country": cell(["GB", "gb", "FR"], ["XX"]),
    "ship_name": cell(["Ann", "Bob"]),
    "ship_city": cell(["London", "Leeds"]),
    "tier": cell(["gold", "silver"], [LONG]),
    "plan": cell(["pro", "free"]),
    "vat": cell(["DE123456789", "DE 123 456 789", "FR999"]),
}


@st.composite
def specs(draw):
    identifier = draw(st.sampled_from(["email", "id"]))
    mapping: dict = {"email": "email"} if identifier == "email" else {"id": "cid"}
    if identifier == "email" and draw(st.booleans()):
        mapping["id"] = "cid"
    if identifier == "id" and draw(st.booleans()):
        mapping["email"] = "email"
    for field in draw(st.lists(st.sampled_from(sorted(OPTIONAL)), unique=True, max_size=len(OPTIONAL))):
        mapping[field] = OPTIONAL[field]
    tops = sorted(f for f in mapping if f != "id")
    text = yaml.safe_dump(
        {
            "version": 1,
            "name": "prop",
            "source": {"csv": "unused.csv"},
            "mode": draw(st.sampled_from(["update", "upsert"])),
            "identifier": identifier,
            "primary_key": draw(st.sampled_from(["key", None])),
            "empty_values": draw(st.sampled_from(["leave", "clear"])),
            "create_only": draw(st.lists(st.sampled_from(tops), unique=True, max_size=3)) if tops else [],
            "mapping": mapping,
        }
    )
    return parse_sync(text, "prop.yaml")


def rows(max_size: int):
    row = st.fixed_dictionaries({column: cell for column, cell in CELLS.items()})
    # Duplicate rows: some rows repeat an earlier one exactly.
    return st.lists(row, max_size=max_size).flatmap(
        lambda drawn: (
            st.lists(st.sampled_from(drawn), max_size=3).map(lambda again: drawn + again) if drawn else st.just(drawn)
        )
    )


@st.composite
def customers(draw, max_size: int = 5):
    ids = draw(st.lists(st.sampled_from(CUSTOMER_IDS), unique=True, max_size=max_size))
    out = []
    for cid in ids:

        def opt(*values):
            return draw(st.sampled_from([*values, None, ""]))

        out.append(
            {
                "id": cid,
                "email": opt("ann@example.com", "Ann@Example.com", " ann@example.com ", "bob@example.com"),
                "created": draw(st.sampled_from([1_700_000_000, 1_700_000_001])),  # ties are common
                "name": opt("Ann", "Bob"),
                "phone": opt("+442012345678", "+44 20 1234 5678"),
                "description": opt("vip"),
                "balance": draw(st.sampled_from([0, 7, -250, None])),
                "default_source": opt("card_1"),
                "address": {"city": opt("London"), "country": opt("GB", "gb")},
                "shipping": draw(st.sampled_from([None, {"name": "Ann", "phone": None, "address": {"city": "London"}}])),
                "metadata": {k: v for k, v in {"tier": opt("gold"), "plan": opt("pro")}.items() if v is not None},
                "_tax_ids": draw(st.sampled_from([[], ["eu_vat:DE123456789"]])),
            }
        )
    return out


def written_back():
    return st.dictionaries(
        st.sampled_from(["k1", "k2", "k3", "k4", "ann@example.com"]),
        st.sampled_from([*CUSTOMER_IDS, "cus_GONE"]),
        max_size=3,
    )


def decisions_of(spec, source_rows: list[dict], mirror: list[dict], back: dict) -> list[reference.Decision]:
    """The production plan, read back as the reference's decisions."""
    source = pd.DataFrame(source_rows, columns=list(CELLS), dtype=object)
    wanted, invalid = wanted_frame(source, spec)
    plan = plan_sync(spec, wanted, invalid, current_frame(mirror, fields_of(wanted)), back)
    assert len(plan) == len(source_rows)
    out = []
    for row in plan.to_dict("records"):
        action = row["action"]
        out.append(
            reference.Decision(
                action=action,
                reasons=frozenset(row["reason"].split("; ")) if action == Action.REJECT else frozenset(),
                changed=frozenset(row["changed"].split()),
                customer_id=row["customer_id"] if action in (Action.UPDATE, Action.NONE) else None,
                identity=row["identity"] if action == Action.CREATE else None,
            )
        )
    return out


def check(spec, source_rows, mirror, back) -> None:
    got = decisions_of(spec, source_rows, mirror, back)
    expected = reference.plan(spec, source_rows, mirror, back)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"row {i} {source_rows[i]}\nplan_sync: {g}\nreference: {e}"
    for decision in expected:  # what the examples covered (pytest --hypothesis-show-statistics)
        event(f"{decision.action}: {'; '.join(sorted(r[:40] for r in decision.reasons))}")


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _spec(**fields):
    return parse_sync(yaml.safe_dump({"version": 1, "name": "prop", "source": {"csv": "unused.csv"}, **fields}))


def _row(**cells):
    return {column: cells.get(column) for column in CELLS}


_TIED = [
    {"id": cid, "email": email, "created": 1_700_000_000, "balance": 0}
    for cid, email in (("cus_B", " Ann@Example.com"), ("cus_A", "ann@example.com"), ("cus_C", "ann@example.com"))
]


@settings(max_examples=200, **SETTINGS)
@given(spec=specs(), source_rows=rows(max_size=6), mirror=customers(), back=written_back())
# Rare in random draws: a given id Stripe lacks and no e-mail; three customers tied on `created` (cus_C wins);
# a written-back id of a deleted customer (falls back to the e-mail); a cleared balance of 0; "-0".
@example(
    spec=_spec(mode="upsert", identifier="email", primary_key="key", mapping={"email": "email", "id": "cid"}),
    source_rows=[_row(key="k1", cid="cus_GONE", email=" ")],
    mirror=[],
    back={},
)
@example(
    spec=_spec(mode="update", identifier="email", empty_values="clear", mapping={"email": "email", "balance": "bal"}),
    source_rows=[_row(email=" ANN@example.com "), _row(email="bob@example.com", bal="-0")],
    mirror=_TIED,
    back={"ann@example.com": "cus_GONE"},
)
def test_plan_sync_decides_what_the_reference_decides(spec, source_rows, mirror, back):
    check(spec, source_rows, mirror, back)


@settings(max_examples=80, **SETTINGS)
@given(spec=specs(), source_rows=rows(max_size=1), mirror=customers(max_size=4))
def test_plan_sync_on_empty_and_single_row_frames(spec, source_rows, mirror):
    check(spec, source_rows, mirror, {})


@settings(max_examples=80, **SETTINGS)
@given(spec=specs(), source_rows=rows(max_size=8))
def test_plan_sync_against_an_empty_mirror_creates_or_rejects(spec, source_rows):
    check(spec, source_rows, [], {})
    assert {d.action for d in decisions_of(spec, source_rows, [], {})} <= {Action.CREATE, Action.REJECT}


def test_a_balance_of_minus_zero_or_cleared_is_zero_and_costs_no_write_when_zero():
    """Found by the property test: "-0" and a cleared balance were planned as an update of a customer whose
    balance is 0 on every run (and a clear sent balance=""). Both are 0: no write when Stripe holds 0, and
    clearing another balance sends 0."""
    spec = _spec(mode="update", identifier="email", empty_values="clear", mapping={"email": "email", "balance": "bal"})
    mirror = [
        {"id": "cus_A", "email": "ann@example.com", "created": 1, "balance": 0},
        {"id": "cus_B", "email": "bob@example.com", "created": 1, "balance": 250},
    ]
    source = pd.DataFrame(
        [_row(email="ann@example.com", bal="-0"), _row(email="bob@example.com", bal=" ")], columns=list(CELLS), dtype=object
    )
    source.loc[0, "key"], source.loc[1, "key"] = "k1", "k2"
    wanted, invalid = wanted_frame(source, spec)
    plan = plan_sync(spec, wanted, invalid, current_frame(mirror, fields_of(wanted)))
    assert plan["action"].tolist() == ["none", "update"] and plan.loc[1, "changed"] == "balance"
    assert request(spec, plan.iloc[1].to_dict()).params == {"balance": 0}
