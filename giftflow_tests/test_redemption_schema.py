"""Every malformed Cardivo record is quarantined with a reason; good records pass untouched."""

import copy

import pytest

from giftflow.domain.redemptions import redact, validate_redemptions
from giftflow_tests.factories import redemption


def _drop(path):
    def mutate(r):
        *parents, last = path.split(".")
        target = r
        for p in parents:
            target = target[p]
        del target[last]

    return mutate


def _set(path, value):
    def mutate(r):
        *parents, last = path.split(".")
        target = r
        for p in parents:
            target = target[p]
        target[last] = value

    return mutate


MALFORMED = {
    "missing id": _drop("id"),
    "empty id": _set("id", ""),
    "numeric id": _set("id", 12345),
    "unknown status": _set("status", "refunded"),
    "missing status": _drop("status"),
    "amount as string": _set("amount", "2500"),
    "amount as float": _set("amount", 25.0),
    "amount negative": _set("amount", -5),
    "amount zero": _set("amount", 0),
    "amount boolean": _set("amount", True),
    "missing amount": _drop("amount"),
    "currency uppercase": _set("currency", "USD"),
    "currency unknown": _set("currency", "xyz"),
    "missing currency": _drop("currency"),
    "card currency differs": _set("gift_card.currency", "eur"),
    "missing gift_card": _drop("gift_card"),
    "missing card code": _drop("gift_card.code"),
    "card code too short": _set("gift_card.code", "12"),
    "initial_value zero": _set("gift_card.initial_value", 0),
    "amount beyond card value": _set("amount", 20000),
    "balance_after negative": _set("balance_after", -1),
    "customer is a string": _set("customer", "ana@example.com"),
    "e-mail not an address": _set("customer.email", "not-an-email"),
    "name not a string": _set("customer.name", 42),
    "missing redeemed_at": _drop("redeemed_at"),
    "redeemed_at with offset": _set("redeemed_at", "2026-11-20T14:03:11+02:00"),
    "redeemed_at without zone": _set("redeemed_at", "2026-11-20T14:03:11"),
    "redeemed_at garbage": _set("redeemed_at", "yesterday"),
    "updated_at before redeemed_at": _set("updated_at", "2026-11-19T00:00:00Z"),
    "missing updated_at": _drop("updated_at"),
    "stripe id of another object": _set("stripe_customer_id", "ch_123"),
    "stripe id not a string": _set("stripe_customer_id", 7),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_record_is_quarantined_with_reason(kind):
    good, bad_record = redemption(), redemption()
    MALFORMED[kind](bad_record)
    frame, bad = validate_redemptions([good, bad_record])
    assert list(frame["redemption_id"]) == [good["id"]]
    assert len(bad) == 1 and bad[0]["reason"]
    assert (
        bad_record["gift_card"]["code"] not in str(bad)
        if isinstance(bad_record.get("gift_card"), dict)
        and isinstance(bad_record["gift_card"].get("code"), str)
        and len(bad_record["gift_card"]["code"]) > 4
        else True
    )


@pytest.mark.parametrize("junk", [None, "rdm_1", 42, ["rdm_1"]])
def test_non_object_records_are_quarantined(junk):
    frame, bad = validate_redemptions([junk])
    assert frame.empty and len(bad) == 1 and bad[0]["record_key"].startswith("sha256:")


def test_there_are_at_least_thirty_kinds():
    assert len(MALFORMED) >= 30


def test_reason_names_the_field():
    record = redemption()
    record["amount"] = "lots"
    _, bad = validate_redemptions([record])
    assert bad[0]["reason"].startswith("amount:")


def test_card_code_is_cut_to_last_four_everywhere():
    record = redemption()
    code = record["gift_card"]["code"]
    frame, _ = validate_redemptions([record])
    assert frame.loc[0, "card_last4"] == code[-4:]
    assert code not in str(frame.to_dict())
    assert redact(record)["gift_card"]["code"].endswith(code[-4:]) and code not in str(redact(record))
    assert record["gift_card"]["code"] == code  # redact copies


def test_null_customer_fields_and_extra_fields_are_fine():
    record = redemption(customer={"email": None, "name": None, "phone": None})
    record["new_field_from_cardivo"] = {"x": 1}
    frame, bad = validate_redemptions([record])
    assert bad == [] and frame.loc[0, "email_norm"] is None


def test_a_void_replaces_the_earlier_copy():
    first = redemption()
    void = copy.deepcopy(first)
    void.update(status="voided", updated_at="2026-11-21T10:00:00Z")
    frame, _ = validate_redemptions([void, first])
    assert list(frame["status"]) == ["voided"]
