"""Stripe Workflows rules: the file's schema, and evaluation at every boundary. No server."""

import pandas as pd
import pytest

from giftflow.adapters.config_files import load_rules
from giftflow.domain.rules import (
    FRAUD_WARNING,
    PAYMENT_SUCCEEDED,
    RulesError,
    evaluate_rules,
    fraud_triggers,
    parse_rules,
    payment_triggers,
    plan_violations,
)

RULES = load_rules()
TEAM = "team@shop.example"


def pis(*specs):
    return pd.DataFrame(
        [
            {
                "id": f"pi_{i}",
                "amount": amount,
                "currency": cur,
                "customer": cus,
                "status": status,
                "latest_charge": f"ch_p{i}",
            }
            for i, (amount, cur, cus, status) in enumerate(specs)
        ]
    )


def pi_plan(*specs, meta=None):
    return evaluate_rules(
        RULES, {PAYMENT_SUCCEEDED: payment_triggers(pis(*specs))}, customer_meta=meta or {}, team_email=TEAM
    )


def efw_plan(*charges, refunds_enabled=True, done=()):
    ch = pd.DataFrame(
        [
            {
                "id": f"ch_{i}",
                "amount": a,
                "amount_refunded": r,
                "currency": cur,
                "customer": "cus_1",
                "disputed": d,
                "refunded": a == r,
                "payment_intent": f"pi_c{i}",
            }
            for i, (a, r, cur, d) in enumerate(charges)
        ]
    )
    warnings = pd.DataFrame([{"id": f"issfr_{i}", "charge": f"ch_{i}"} for i in range(len(charges))])
    return evaluate_rules(
        RULES, {FRAUD_WARNING: fraud_triggers(warnings, ch)}, team_email=TEAM, refunds_enabled=refunds_enabled, done=done
    )


@pytest.mark.parametrize("amount,mailed", [(99_999, False), (100_000, False), (100_001, True)])
def test_large_order_mail_boundary(amount, mailed):
    plan = pi_plan((amount, "usd", "cus_1", "succeeded"))
    assert bool((plan["rule"] == "personalise_large_orders").any()) == mailed


@pytest.mark.parametrize("amount,tagged", [(199_999, False), (200_000, False), (200_001, True)])
def test_vip_boundary(amount, tagged):
    plan = pi_plan((amount, "usd", "cus_1", "succeeded"))
    vip = plan[plan["rule"] == "tag_vip_customers"]
    assert bool(len(vip)) == tagged
    if tagged:
        assert vip.iloc[0]["metadata"] == {"Tier": "VIP"} and vip.iloc[0]["status"] == "planned"


def test_other_currencies_and_unsucceeded_payments_do_nothing():
    plan = pi_plan(
        (500_000, "eur", "cus_1", "succeeded"),
        (500_000, "jpy", "cus_1", "succeeded"),
        (500_000, "usd", "cus_1", "requires_payment_method"),
    )
    assert plan.empty


def test_vip_already_tagged_gets_no_write_and_payment_without_customer_is_not_tagged():
    plan = pi_plan(
        (300_000, "usd", "cus_1", "succeeded"),
        (300_000, "usd", None, "succeeded"),
        meta={"cus_1": {"Tier": "VIP", "other": "x"}},
    )
    vip = plan[plan["rule"] == "tag_vip_customers"].set_index("object_id")
    assert vip.loc["pi_0", "status"] == "unchanged"
    assert "pi_1" not in vip.index


def test_large_order_mail_names_customer_amount_and_payment():
    mail = pi_plan((150_000, "usd", "cus_9", "succeeded")).iloc[0]
    assert mail["recipient"] == TEAM and "pi_0" in mail["subject"]
    for text in ("cus_9", "1,500.00 USD", "pi_0", "https://dashboard.stripe.com/payments/pi_0"):
        assert text in mail["body"]


@pytest.mark.parametrize("unrefunded,action", [(1_499, "refund"), (1_500, "email"), (1_501, "email")])
def test_fraud_warning_refund_boundary(unrefunded, action):
    plan = efw_plan((unrefunded, 0, "usd", False))
    assert list(plan["action"]) == [action]
    if action == "refund":
        assert plan.iloc[0]["refund_amount"] == 1_499 and plan.iloc[0]["refund_reason"] == "fraudulent"
    else:
        assert "ch_0" in plan.iloc[0]["body"] and f"{unrefunded / 100:.2f} USD" in plan.iloc[0]["body"]


def test_partly_refunded_charge_compares_the_unrefunded_amount():
    plan = efw_plan((5_000, 4_000, "usd", False))
    assert list(plan["action"]) == ["refund"] and plan.iloc[0]["refund_amount"] == 1_000


def test_fully_refunded_is_reported_and_disputed_is_escalated():
    plan = efw_plan((1_000, 1_000, "usd", False), (1_000, 0, "usd", True)).set_index("object_id")
    assert (plan.loc["issfr_0", "status"], plan.loc["issfr_0", "reason"]) == ("not_applicable", "charge fully refunded")
    assert plan.loc["issfr_1", "action"] == "email"


def test_a_warning_giftflow_refunded_before_stays_under_its_rule_as_done_before():
    # The rerun after the refund: the charge is fully refunded now, yet the plan shows what happened to it.
    plan = efw_plan(
        (1_000, 1_000, "usd", False), (1_000, 1_000, "usd", False), done={"refund_small_fraud_warnings:issfr_0:0"}
    ).set_index("object_id")
    assert (plan.loc["issfr_0", "rule"], plan.loc["issfr_0", "status"]) == ("refund_small_fraud_warnings", "done_before")
    assert (plan.loc["issfr_1", "rule"], plan.loc["issfr_1", "status"]) == ("(no rule)", "not_applicable")
    assert len(plan) == 2  # and no escalation: the rule that acted still counts as matching


def test_a_vip_tag_giftflow_wrote_before_is_done_before_not_unchanged():
    plan = evaluate_rules(
        RULES,
        {PAYMENT_SUCCEEDED: payment_triggers(pis((300_000, "usd", "cus_1", "succeeded")))},
        customer_meta={"cus_1": {"Tier": "VIP"}},
        team_email=TEAM,
        done={"tag_vip_customers:pi_0:0", "personalise_large_orders:pi_0:0"},
    )
    assert set(plan["status"]) == {"done_before"} and len(plan) == 2


def test_small_warning_in_other_currency_is_escalated():
    assert list(efw_plan((100, 0, "eur", False))["action"]) == ["email"]


def test_refunds_are_off_by_default():
    plan = evaluate_rules(
        RULES,
        {
            FRAUD_WARNING: fraud_triggers(
                pd.DataFrame([{"id": "issfr_1", "charge": "ch_1"}]),
                pd.DataFrame(
                    [
                        {
                            "id": "ch_1",
                            "amount": 500,
                            "amount_refunded": 0,
                            "currency": "usd",
                            "customer": None,
                            "disputed": False,
                            "refunded": False,
                            "payment_intent": None,
                        }
                    ]
                ),
            )
        },
        team_email=TEAM,
    )
    assert list(plan["status"]) == ["would_refund"]


def test_checks_catch_each_broken_invariant():
    plan = efw_plan((1_000, 0, "usd", False))
    assert not any(plan_violations(plan, RULES.limits).values())
    over = plan.assign(refund_amount=5_000)
    assert plan_violations(over, RULES.limits)["refund_within_unrefunded_amount"]
    assert plan_violations(plan.assign(charge_disputed=True), RULES.limits)["no_refund_of_disputed_charge"]
    many = efw_plan(*[(1_000, 0, "usd", False)] * 21)
    assert plan_violations(many, RULES.limits)["refund_caps"]
    money = efw_plan(*[(1_400, 0, "usd", False)] * 10)
    tight = RULES.limits.model_copy(update={"max_refund_amount_per_run": {"usd": 10_000}})
    assert plan_violations(money, tight)["refund_caps"] and not plan_violations(money, RULES.limits)["refund_caps"]
    mails = efw_plan((9_000, 0, "usd", False)).assign(recipient=None)
    assert plan_violations(mails, RULES.limits)["mail_has_recipient"]


GOOD = """version: 1
rules:
  - name: r
    trigger: payment_intent.succeeded
    conditions: {currency: usd, amount_gt: 10}
    actions:
      - type: email
        to: team
        subject: s
        body: b
"""


def test_a_custom_rules_file_parses():
    assert parse_rules(GOOD).rules[0].conditions.currency == ["usd"]


@pytest.mark.parametrize(
    "bad,expected",
    [
        (GOOD.replace("type: email", "type: sms"), r"<rules>:7: rules\.0\.actions\.0"),
        (GOOD.replace("to: team", "to: "), r"<rules>:8: rules\.0\.actions\.0\.to"),
        (GOOD.replace("        to: team\n", ""), r"rules\.0\.actions\.0\.to: Field required"),
        (GOOD.replace("amount_gt: 10", "amount_gt: -5"), r"<rules>:5: rules\.0\.conditions\.amount_gt"),
        (GOOD.replace("currency: usd", "currency: USD"), r"unknown currency"),
        (GOOD.replace("trigger: payment_intent.succeeded", "trigger: charge.failed"), r":4: rules\.0\.trigger"),
        (
            GOOD.replace("amount_gt: 10", "amount_gt: 10, colour: red"),
            r"conditions\.colour: Extra inputs are not permitted$",
        ),
        (
            GOOD.replace("amount_gt", "amont_gt"),
            r"<rules>:5: rules\.0\.conditions\.amont_gt: Extra inputs are not "
            r"permitted \(did you mean amount_gt\?\)",
        ),
        (
            GOOD + "  - name: r\n    trigger: payment_intent.succeeded\n    actions: [{type: refund}]\n",
            r"refund action needs",
        ),
        ("version: 1\nrules: [", r"not valid YAML"),
        # Templates: plain {field} only, checked at load with the line.
        (
            GOOD.replace("subject: s", "subject: '{amount:>50000000}'"),
            r"<rules>:9: rules\.0\.actions\.0\.subject: \{amount\}: no format spec or conversion",
        ),
        (GOOD.replace("body: b", "body: '{0}'"), r"<rules>:10: rules\.0\.actions\.0\.body: \{0\} is not a template field"),
        (GOOD.replace("body: b", "body: '{customer.__class__}'"), r":10: .*\{customer\.__class__\} is not a template"),
        (GOOD.replace("body: b", "body: '{charge[0]}'"), r":10: .*\{charge\[0\]\} is not a template field"),
        (GOOD.replace("body: b", "body: '{customer!r}'"), r":10: .*no format spec or conversion"),
        (GOOD.replace("body: b", "body: '{nope}'"), r":10: .*\{nope\} is not a template field"),
        (GOOD.replace("body: b", "body: 'a { b'"), r":10: .*not a valid template"),
        (GOOD.replace("body: b", "body: " + "x" * 5000), r":10: .*at most 4096 characters"),
        (GOOD.replace("subject: s", 'subject: "hi\\r\\nBcc: all@x.com"'), r":9: .*subject: a subject is one line"),
        (GOOD.replace("to: team", 'to: "ops@x.com\\nBcc: all@x.com"'), r":8: .*recipient must be"),
        (GOOD.replace("to: team", 'to: "ops@x.com\\n"'), r":8: .*recipient must be"),
        (GOOD.replace("body: b", "body: b\n        fields: [amount, secret]"), r":11: .*'secret' is not a template field"),
        ("- just a list", r"a rules file is a mapping"),
    ],
)
def test_bad_rules_files_give_clear_errors(bad, expected):
    with pytest.raises(RulesError, match=expected):
        parse_rules(bad)


def test_missing_rules_file_is_a_clear_error(tmp_path):
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "nope.yaml")


def test_every_template_field_has_a_value_and_the_default_templates_use_known_ones():
    from giftflow.domain.rules import TEMPLATE_FIELDS, _context

    row = {
        "object_id": "issfr_1",
        "payment_intent": "pi_1",
        "customer_id": None,
        "charge_id": "ch_1",
        "amount": 5000,
        "currency": "usd",
        "unrefunded": 5000,
    }
    assert set(_context(row)) == set(TEMPLATE_FIELDS)
    mails = efw_plan((90_000, 0, "usd", False))
    assert "{" not in mails.loc[mails["action"] == "email", "body"].iloc[0]
