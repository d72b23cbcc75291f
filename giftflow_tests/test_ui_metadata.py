"""What the Dagster UI shows of the gift-card plan: a real table that fits beside the metadata keys."""

import dagster as dg
import pandas as pd

from giftflow.orchestration.giftcard import PLAN_TABLE_COLUMNS, left_out_table, plan_table
from giftflow.orchestration.metadata import table


def _plan() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [None, "cus_B", "cus_A", "cus_C"],
            "email": ["x@example.com", "b@example.com", "a@example.com", "c@example.com"],
            "action": ["skip", "update", "none", "create"],
            "reason": ["unmatched", None, None, None],
            "note": [None, None, None, None],
            "changed_keys": [
                "",
                "metadata.giftcard_redeemed_total metadata.giftcard_last4",
                "",
                "email name metadata.giftcard_redemptions",
            ],
            "giftcard_redeemed_total": [None, "13693", "500", "700"],
            "giftcard_currency": [None, "usd", "eur", "usd"],
            "giftcard_redemptions": [None, "5", "1", "1"],
        },
        dtype=object,
    )


def test_the_plan_table_has_short_typed_columns_and_the_writes_first():
    shown = table(plan_table(_plan()), descriptions=PLAN_TABLE_COLUMNS)
    assert isinstance(shown, dg.TableMetadataValue)
    columns = {c.name: c for c in shown.schema.columns}
    assert list(columns) == list(PLAN_TABLE_COLUMNS)
    assert columns["redeemed_total"].type == columns["redemptions"].type == "int"
    # the short names say under "Show schema" which Stripe metadata key they stand for
    assert "giftcard_redeemed_total" in columns["redeemed_total"].description
    rows = [r.data for r in shown.records]
    assert [r["action"] for r in rows] == ["update", "create", "skip", "none"]
    assert rows[0]["changed"] == "redeemed_total, last4" and rows[1]["changed"] == "email, name, redemptions"
    assert rows[0]["redeemed_total"] == 13693 and rows[0]["redemptions"] == 5
    skipped = rows[2]
    assert skipped["reason"] == "unmatched" and skipped["redeemed_total"] is None and skipped["changed"] == ""


def test_an_empty_plan_is_an_empty_table():
    shown = table(plan_table(_plan().iloc[0:0]), descriptions=PLAN_TABLE_COLUMNS)
    assert shown.records == [] and [c.name for c in shown.schema.columns] == list(PLAN_TABLE_COLUMNS)


def test_the_left_out_customers_have_their_own_table_with_the_reason():
    shown = table(left_out_table(_plan()), descriptions=PLAN_TABLE_COLUMNS)
    assert [c.name for c in shown.schema.columns] == ["customer_id", "email", "reason", "note"]
    assert [r.data for r in shown.records] == [
        {"customer_id": None, "email": "x@example.com", "reason": "unmatched", "note": None}
    ]
