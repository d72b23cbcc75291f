"""The contract's gift-card sync rules, on DataFrames only: no server, no Dagster."""

import pandas as pd
import pytest

from giftflow.adapters.config_files import giftcard_sync_spec
from giftflow.domain.giftcard import customers_frame, summarize
from giftflow.domain.redemptions import validate_redemptions
from giftflow.domain.sync_plan import request
from giftflow.services.giftcard_sync import plan_customer_updates
from giftflow_tests.factories import customer, day, redemption

D = "2026-11-20"


def plan_for(records, custs, d=D, mode="update"):
    frame, bad = validate_redemptions(records)
    assert bad == []
    return plan_customer_updates(frame, customers_frame(custs), *day(d), giftcard_sync_spec(mode))


def metadata_changes(row: dict) -> dict:
    """The `metadata` the engine would send for a plan row: changed keys only, "" deletes a key."""
    return request(giftcard_sync_spec(), row).params.get("metadata", {})


def row(plan, **match):
    hits = plan
    for k, v in match.items():
        hits = hits[hits[k] == v]
    assert len(hits) == 1, plan
    return hits.iloc[0].to_dict()


def test_matching_by_email_is_trimmed_and_case_insensitive():
    plan = plan_for(
        [redemption(email="  ANA.Silva@EXAMPLE.com ", amount=1234)], [customer("cus_A", "ana.silva@example.com")]
    )
    r = row(plan, customer_id="cus_A")
    assert r["action"] == "update"
    assert metadata_changes(r) == {
        "giftcard_redeemed_total": "1234",
        "giftcard_currency": "usd",
        "giftcard_redemptions": "1",
        "giftcard_last_redeemed_at": "2026-11-20T14:03:11Z",
        "giftcard_last4": r["giftcard_last4"],
    }
    assert len(r["giftcard_last4"]) == 4


def test_linked_stripe_customer_id_wins_over_email():
    plan = plan_for(
        [redemption(stripe_customer_id="cus_L", email="a@x.com")],
        [customer("cus_L", "l@x.com"), customer("cus_E", "a@x.com")],
    )
    assert list(plan["customer_id"]) == ["cus_L"]


def test_unknown_linked_id_falls_back_to_email():
    plan = plan_for([redemption(stripe_customer_id="cus_GONE", email="a@x.com")], [customer("cus_E", "a@x.com")])
    assert list(plan["customer_id"]) == ["cus_E"]


def test_ambiguous_email_picks_newest_and_reports_it():
    plan = plan_for(
        [redemption(email="dup@x.com")],
        [customer("cus_old", "DUP@x.com", created=100), customer("cus_new", "dup@x.com", created=200)],
    )
    r = row(plan, customer_id="cus_new")
    assert r["note"] == "ambiguous_email" and r["action"] == "update"
    assert summarize(plan)["ambiguous_email"] == 1


def test_totals_count_only_completed_across_all_days():
    records = [
        redemption(email="a@x.com", amount=1000, redeemed_at="2026-11-18T09:00:00Z"),
        redemption(email="a@x.com", amount=500, redeemed_at="2026-11-20T08:00:00Z"),
        redemption(
            email="a@x.com",
            amount=700,
            status="voided",
            redeemed_at="2026-11-20T09:00:00Z",
            updated_at="2026-11-21T09:00:00Z",
        ),
    ]
    r = row(plan_for(records, [customer("cus_A", "a@x.com")]), customer_id="cus_A")
    assert (r["giftcard_redeemed_total"], r["giftcard_redemptions"]) == ("1500", "2")
    assert r["giftcard_last_redeemed_at"] == "2026-11-20T08:00:00Z"
    assert r["giftcard_last4"] == records[1]["gift_card"]["code"][-4:]


def test_all_voided_writes_zeros_and_removes_the_other_keys():
    current = {
        "giftcard_redeemed_total": "900",
        "giftcard_currency": "usd",
        "giftcard_redemptions": "1",
        "giftcard_last_redeemed_at": "2026-11-01T00:00:00Z",
        "giftcard_last4": "1234",
        "crm": "keep",
    }
    records = [redemption(email="a@x.com", status="voided", updated_at="2026-11-21T00:00:00Z")]
    r = row(plan_for(records, [customer("cus_A", "a@x.com", metadata=current)]), customer_id="cus_A")
    assert metadata_changes(r) == {
        "giftcard_redeemed_total": "0",
        "giftcard_redemptions": "0",
        "giftcard_currency": "",
        "giftcard_last_redeemed_at": "",
        "giftcard_last4": "",
    }


def test_already_right_customer_gets_no_write_and_other_keys_are_not_touched():
    records = [redemption(email="a@x.com", amount=300)]
    first = row(plan_for(records, [customer("cus_A", "a@x.com")]), customer_id="cus_A")
    settled = {**metadata_changes(first), "crm_id": "77"}
    again = row(plan_for(records, [customer("cus_A", "a@x.com", metadata=settled)]), customer_id="cus_A")
    assert again["action"] == "none" and metadata_changes(again) == {}
    assert "crm_id" not in metadata_changes(first)


def test_empty_string_metadata_counts_as_absent():
    # localstripe keeps "" instead of deleting: a removed key must not look like a change forever.
    records = [redemption(email="a@x.com", status="voided", updated_at="2026-11-21T00:00:00Z")]
    meta = {
        "giftcard_redeemed_total": "0",
        "giftcard_redemptions": "0",
        "giftcard_currency": "",
        "giftcard_last_redeemed_at": "",
        "giftcard_last4": "",
    }
    assert row(plan_for(records, [customer("cus_A", "a@x.com", metadata=meta)]), customer_id="cus_A")["action"] == "none"


def test_multi_currency_customer_is_reported_not_written():
    records = [redemption(email="m@x.com", currency="eur"), redemption(email="m@x.com", currency="usd")]
    r = row(plan_for(records, [customer("cus_M", "m@x.com")]), customer_id="cus_M")
    assert (r["action"], r["reason"], r["note"]) == ("skip", "multi_currency", "eur,usd")
    assert pd.isna(r["giftcard_redeemed_total"]) and r["changed_keys"] == ""


def test_voided_other_currency_does_not_make_multi_currency():
    records = [
        redemption(email="m@x.com", currency="eur", status="voided", updated_at="2026-11-21T00:00:00Z"),
        redemption(email="m@x.com", currency="usd"),
    ]
    assert row(plan_for(records, [customer("cus_M", "m@x.com")]), customer_id="cus_M")["action"] == "update"


def test_anonymous_and_unmatched_are_left_out_with_reasons():
    plan = plan_for(
        [
            redemption(customer=None),
            redemption(email="nobody@x.com"),
            redemption(customer={"email": None, "name": "X", "phone": None}),
        ],
        [customer("cus_A", "a@x.com")],
    )
    assert sorted(plan["reason"]) == ["anonymous", "anonymous", "unmatched"]
    assert set(plan["action"]) == {"skip"}


def test_upsert_creates_missing_customer_with_name_and_phone():
    plan = plan_for([redemption(email=" New@X.com", amount=900)], [], mode="upsert")
    r = row(plan, action="create")
    assert (r["email"], r["name"], r["phone"]) == ("new@x.com", "Ana Silva", "+14155550100")
    assert metadata_changes(r)["giftcard_redeemed_total"] == "900"


def test_upsert_does_not_create_for_voided_only():
    plan = plan_for([redemption(email="v@x.com", status="voided", updated_at="2026-11-21T00:00:00Z")], [], mode="upsert")
    assert row(plan, email="v@x.com")["action"] == "skip"


@pytest.mark.parametrize(
    "moment,in_day",
    [
        ("2026-11-20T00:00:00Z", True),
        ("2026-11-20T23:59:59Z", True),
        ("2026-11-19T23:59:59Z", False),
        ("2026-11-21T00:00:00Z", False),
    ],
)
def test_day_boundaries(moment, in_day):
    plan = plan_for([redemption(email="a@x.com", redeemed_at=moment)], [customer("cus_A", "a@x.com")])
    assert (len(plan) == 1) is in_day


def test_other_days_customers_are_not_in_the_plan():
    records = [redemption(email="a@x.com", redeemed_at="2026-11-19T12:00:00Z"), redemption(email="b@x.com")]
    plan = plan_for(records, [customer("cus_A", "a@x.com"), customer("cus_B", "b@x.com")])
    assert list(plan["customer_id"]) == ["cus_B"]


def test_money_stays_integer_for_zero_decimal_currency():
    records = [
        redemption(
            email="j@x.com",
            currency="jpy",
            amount=5000,
            gift_card={"id": "gc", "code": "CRDV-JJJJ-0001", "initial_value": 10000, "currency": "jpy"},
        )
    ]
    r = row(plan_for(records, [customer("cus_J", "j@x.com")]), customer_id="cus_J")
    assert (r["giftcard_redeemed_total"], r["giftcard_currency"]) == ("5000", "jpy")


def test_empty_inputs_give_an_empty_plan():
    assert plan_for([], []).empty


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        plan_for([], [], mode="merge")


def test_plan_is_one_row_per_customer():
    records = [redemption(email="a@x.com") for _ in range(5)]
    plan = plan_for(records, [customer("cus_A", "a@x.com")])
    assert len(plan) == 1 and row(plan, customer_id="cus_A")["redemptions_in_day"] == 5
    assert isinstance(plan, pd.DataFrame)
