"""Stripe Workflows as data: the rules file's schema, and its evaluation on DataFrames into a plan.

Pure: no I/O besides parsing the text it is given. The default rules (default_rules.yaml beside the
package) are the three workflows of Stripe's "Workflows use cases".
"""

from __future__ import annotations

import re
import string
from collections.abc import Collection
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from giftflow.domain.money import CURRENCIES, format_minor
from giftflow.domain.yaml_files import parse_yaml_model

PAYMENT_SUCCEEDED = "payment_intent.succeeded"
FRAUD_WARNING = "radar.early_fraud_warning.created"
TEAM = "team"
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

Minor = Annotated[int, Field(strict=True, ge=0)]


class RulesError(ValueError):
    """A rules file that cannot be used, with where and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _currency(value: str) -> str:
    if value not in CURRENCIES:
        raise ValueError(f"unknown currency {value!r} (lowercase ISO 4217 expected)")
    return value


class Conditions(_Model):
    """All given conditions must hold. Amounts are minor units in the trigger object's currency."""

    currency: list[str] | None = None
    amount_gt: Minor | None = None
    amount_gte: Minor | None = None
    amount_lt: Minor | None = None
    amount_lte: Minor | None = None
    has_customer: bool | None = None
    customer_metadata: dict[str, str] | None = None
    lifetime_spend_gt: Minor | None = None
    unrefunded_below_dispute_fee: bool | None = None
    charge_disputed: bool | None = None
    charge_fully_refunded: bool | None = None

    @field_validator("currency", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("currency")
    @classmethod
    def _known(cls, value):
        return [_currency(c) for c in value] if value is not None else None


# What a mail template may name: the values _context gives each plan row.
TEMPLATE_FIELDS = (
    "payment_intent",
    "customer",
    "charge",
    "early_fraud_warning",
    "amount",
    "amount_minor",
    "currency",
    "unrefunded",
    "object",
    "dashboard_url",
)
MAX_TEMPLATE = 4096  # characters; a mail is a note to a person, not a document


def check_template(value: str) -> str:
    """Plain {field} substitution only: no attribute or index access, no format spec or conversion (`{amount:>
    50000000}` would build a 100 MB mail, `{0}` fail mid-apply), known fields only, bounded size."""
    if len(value) > MAX_TEMPLATE:
        raise ValueError(f"a template is at most {MAX_TEMPLATE} characters, this one has {len(value)}")
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc}); write {{{{ and }}}} for literal braces") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            raise ValueError(f"{{{name}}} is not a template field (known: {', '.join(TEMPLATE_FIELDS)})")
        if spec or conversion:
            raise ValueError(f"{{{name}}}: no format spec or conversion, write {{{name}}} alone")
    return value


class EmailAction(_Model):
    type: Literal["email"]
    to: str = Field(description='"team" (GIFTFLOW_TEAM_EMAIL) or an e-mail address')
    subject: str = Field(min_length=1)
    body: str = Field(min_length=1)
    fields: list[str] = Field(default_factory=list, description="context values appended as label: value")

    @field_validator("to")
    @classmethod
    def _recipient(cls, value: str) -> str:
        if value != TEAM and not EMAIL.fullmatch(value):
            raise ValueError(f'recipient must be "team" or an e-mail address, not {value!r}')
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        if "\r" in value or "\n" in value:  # a header line: a line break would start a header of its own
            raise ValueError("a subject is one line")
        return check_template(value)

    @field_validator("body")
    @classmethod
    def _body(cls, value: str) -> str:
        return check_template(value)

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: list[str]) -> list[str]:
        if unknown := [f for f in value if f not in TEMPLATE_FIELDS]:
            raise ValueError(f"{unknown[0]!r} is not a template field (known: {', '.join(TEMPLATE_FIELDS)})")
        return value


class UpdateCustomerMetadataAction(_Model):
    type: Literal["update_customer_metadata"]
    metadata: dict[str, str] = Field(min_length=1)


class RefundAction(_Model):
    type: Literal["refund"]
    reason: Literal["fraudulent", "duplicate", "requested_by_customer"] = "fraudulent"


Action = Annotated[EmailAction | UpdateCustomerMetadataAction | RefundAction, Field(discriminator="type")]


class Rule(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    description: str = ""
    trigger: Literal["payment_intent.succeeded", "radar.early_fraud_warning.created"]
    conditions: Conditions = Field(default_factory=Conditions)
    unless: str | None = Field(default=None, description="applies only where this earlier rule did not")
    actions: list[Action] = Field(min_length=1)

    @model_validator(mode="after")
    def _refund_needs_charge(self) -> Rule:
        if any(a.type == "refund" for a in self.actions) and self.trigger != FRAUD_WARNING:
            raise ValueError("a refund action needs the radar.early_fraud_warning.created trigger")
        return self


class Limits(_Model):
    max_refunds_per_run: Minor = 20
    max_refund_amount_per_run: dict[str, Minor] = Field(default_factory=lambda: {"usd": 50_000})


class RulesFile(_Model):
    version: Literal[1]
    dispute_fees: dict[str, Annotated[int, Field(strict=True, gt=0)]] = Field(default_factory=lambda: {"usd": 1500})
    limits: Limits = Field(default_factory=Limits)
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> RulesFile:
        for c in [*self.dispute_fees, *self.limits.max_refund_amount_per_run]:
            _currency(c)
        seen: dict[str, Rule] = {}
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            if rule.unless is not None and (rule.unless not in seen or seen[rule.unless].trigger != rule.trigger):
                raise ValueError(
                    f"rule {rule.name!r}: unless {rule.unless!r} must name an earlier rule with the same trigger"
                )
            seen[rule.name] = rule
        return self


_ACTION_TAGS = ("email", "update_customer_metadata", "refund")  # pydantic's union tags, not YAML keys


def parse_rules(text: str, source: str = "<rules>") -> RulesFile:
    """Parse and validate a rules file; a RulesError names the file, the line and the problem."""
    return parse_yaml_model(
        text,
        source,
        RulesFile,
        RulesError,
        shape="a rules file is a mapping with `version` and `rules`",
        loc_part=lambda p: None if p in _ACTION_TAGS else p,
    )


# -- evaluation ------------------------------------------------------------------------------------

PLAN_COLUMNS = [
    "ledger_key",
    "rule",
    "action",
    "status",
    "reason",
    "trigger",
    "object_id",
    "customer_id",
    "charge_id",
    "amount",
    "currency",
    "unrefunded",
    "refund_amount",
    "charge_disputed",
    "recipient",
    "subject",
    "body",
    "metadata",
    "refund_reason",
]
# status, one name per idea (the README lists them; workflow_actions counts them under the same names):
#   planned         will be carried out by this run
#   would_refund    a refund the rules ask for, not made: refunds are disabled (GIFTFLOW_REFUNDS_ENABLED)
#   unchanged       Stripe already holds what the action would write (as in the sync reports): no write
#   done_before     giftflow's ledger shows an earlier run carried this action out: not done again
#   not_applicable  reported only, nothing to do (no customer, charge fully refunded, no rule matched)
PLANNED, WOULD_REFUND, UNCHANGED, DONE_BEFORE, NOT_APPLICABLE = (
    "planned",
    "would_refund",
    "unchanged",
    "done_before",
    "not_applicable",
)


def payment_triggers(payment_intents: pd.DataFrame) -> pd.DataFrame:
    """payment_intent.succeeded trigger rows from payment intents (id, amount, currency, customer, status)."""
    pis = payment_intents[payment_intents["status"] == "succeeded"]
    return pd.DataFrame(
        {
            "object_id": pis["id"],
            "payment_intent": pis["id"],
            "customer_id": pis["customer"],
            "amount": pis["amount"].astype("int64"),
            "currency": pis["currency"],
            "charge_id": pis.get("latest_charge"),
            "unrefunded": pis["amount"].astype("int64"),
            "charge_disputed": False,
            "charge_fully_refunded": False,
        }
    ).reset_index(drop=True)


def fraud_triggers(warnings: pd.DataFrame, charges: pd.DataFrame) -> pd.DataFrame:
    """radar.early_fraud_warning.created trigger rows, each joined to its charge."""
    joined = warnings.merge(charges.add_prefix("charge_"), left_on="charge", right_on="charge_id", how="left")
    missing = joined["charge_id"].isna()
    if missing.any():
        raise ValueError(f"early fraud warnings without their charge: {list(joined.loc[missing, 'id'])}")
    amount = joined["charge_amount"].astype("int64")
    refunded = joined["charge_amount_refunded"].astype("int64")
    return pd.DataFrame(
        {
            "object_id": joined["id"],
            "payment_intent": joined.get("charge_payment_intent"),
            "customer_id": joined["charge_customer"],
            "amount": amount,
            "currency": joined["charge_currency"],
            "charge_id": joined["charge_id"],
            "unrefunded": amount - refunded,
            "charge_disputed": joined["charge_disputed"].astype(bool),
            "charge_fully_refunded": joined["charge_refunded"].astype(bool) | (refunded >= amount),
        }
    ).reset_index(drop=True)


def _mask(
    cond: Conditions, t: pd.DataFrame, rules: RulesFile, customer_meta: dict[str, dict], lifetime: dict[tuple[str, str], int]
) -> np.ndarray:
    m = np.ones(len(t), dtype=bool)
    if cond.currency is not None:
        m &= t["currency"].isin(cond.currency).to_numpy()
    amount = t["amount"].to_numpy()
    for value, op in (
        (cond.amount_gt, np.greater),
        (cond.amount_gte, np.greater_equal),
        (cond.amount_lt, np.less),
        (cond.amount_lte, np.less_equal),
    ):
        if value is not None:
            m &= op(amount, value)
    has_customer = t["customer_id"].notna().to_numpy()
    if cond.has_customer is not None:
        m &= has_customer == cond.has_customer
    if cond.customer_metadata:
        wanted = cond.customer_metadata.items()
        m &= np.array(
            [
                all(customer_meta.get(c, {}).get(k) == v for k, v in wanted) if isinstance(c, str) else False
                for c in t["customer_id"]
            ],
            dtype=bool,
        )
    if cond.lifetime_spend_gt is not None:
        spend = np.array([lifetime.get((c, cur), 0) for c, cur in zip(t["customer_id"], t["currency"])])
        m &= spend > cond.lifetime_spend_gt
    if cond.unrefunded_below_dispute_fee is not None:
        fee = t["currency"].map(rules.dispute_fees).to_numpy(dtype=float)  # NaN: no fee known, never below
        m &= (t["unrefunded"].to_numpy() < fee) == cond.unrefunded_below_dispute_fee
    if cond.charge_disputed is not None:
        m &= t["charge_disputed"].to_numpy(dtype=bool) == cond.charge_disputed
    if cond.charge_fully_refunded is not None:
        m &= t["charge_fully_refunded"].to_numpy(dtype=bool) == cond.charge_fully_refunded
    return m


def dashboard_url(object_id: str) -> str:
    kind = "payments" if object_id.startswith(("pi_", "ch_", "py_")) else "radar/early-fraud-warnings"
    return f"https://dashboard.stripe.com/{kind}/{object_id}"


def _text(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) and value else default  # NaN and None alike


def _context(row: dict) -> dict[str, Any]:
    # A warning is looked into on its charge's page; a payment on its own.
    linked = _text(row.get("charge_id")) if row["object_id"].startswith("issfr_") else row["object_id"]
    return {
        "payment_intent": _text(row.get("payment_intent")),
        "customer": _text(row.get("customer_id"), "(none)"),
        "charge": _text(row.get("charge_id")),
        "early_fraud_warning": row["object_id"],
        "amount": format_minor(int(row["amount"]), row["currency"]),
        "amount_minor": int(row["amount"]),
        "currency": row["currency"].upper(),
        "unrefunded": format_minor(int(row["unrefunded"]), row["currency"]),
        "object": row["object_id"],
        "dashboard_url": dashboard_url(linked or row["object_id"]),
    }


def evaluate_rules(
    rules: RulesFile,
    triggers: dict[str, pd.DataFrame],
    *,
    customer_meta: dict[str, dict] | None = None,
    lifetime_spend: dict[tuple[str, str], int] | None = None,
    team_email: str | None = None,
    refunds_enabled: bool = False,
    done: Collection[str] = (),
) -> pd.DataFrame:
    """Every action the rules ask for on the given trigger rows: one plan row per (rule, object, action).
    `done`: the ledger keys of actions an earlier run carried out. Their rule still counts as matching its object
    although its own action may have changed what the conditions see (a refunded charge is now fully refunded),
    and those actions are `done_before`."""
    customer_meta = customer_meta or {}
    done = frozenset(done)
    rows: list[dict] = []
    matched: dict[str, np.ndarray] = {}
    for rule in rules.rules:
        t = triggers.get(rule.trigger)
        if t is None or t.empty:
            continue
        mask = _mask(rule.conditions, t, rules, customer_meta, lifetime_spend or {})
        if rule.unless:
            mask &= ~matched[rule.unless]
        if done:
            mask |= np.array(
                [any(f"{rule.name}:{o}:{i}" in done for i in range(len(rule.actions))) for o in t["object_id"]], dtype=bool
            )
        matched[rule.name] = mask
        for row in t[mask].to_dict("records"):
            for index, action in enumerate(rule.actions):
                out = _plan_row(rule, index, action, row, customer_meta, team_email, refunds_enabled)
                if out["ledger_key"] in done:
                    out["status"], out["reason"] = DONE_BEFORE, "carried out by an earlier run (giftflow's ledger)"
                rows.append(out)
    # Fraud warnings no rule acted on are reported, so nobody wonders whether they were seen.
    warnings = triggers.get(FRAUD_WARNING)
    if warnings is not None and len(warnings):
        acted = np.zeros(len(warnings), dtype=bool)
        for rule in rules.rules:
            if rule.trigger == FRAUD_WARNING and rule.name in matched:
                acted |= matched[rule.name]
        for row in warnings[~acted].to_dict("records"):
            reason = "charge fully refunded" if row["charge_fully_refunded"] else "no rule matched"
            rows.append({**_base("(no rule)", "none", row, 0), "status": NOT_APPLICABLE, "reason": reason})
    plan = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    return plan.astype({"amount": "int64", "unrefunded": "int64", "refund_amount": "int64"})


def _base(rule_name: str, action: str, row: dict, index: int) -> dict:
    return {
        "ledger_key": f"{rule_name}:{row['object_id']}:{index}",
        "rule": rule_name,
        "action": action,
        "status": PLANNED,
        "reason": "",
        "trigger": "",
        "object_id": row["object_id"],
        "customer_id": row.get("customer_id") if isinstance(row.get("customer_id"), str) else None,
        "charge_id": row.get("charge_id") if isinstance(row.get("charge_id"), str) else None,
        "amount": int(row["amount"]),
        "currency": row["currency"],
        "unrefunded": int(row["unrefunded"]),
        "refund_amount": 0,
        "charge_disputed": bool(row["charge_disputed"]),
        "recipient": None,
        "subject": None,
        "body": None,
        "metadata": None,
        "refund_reason": None,
    }


def _plan_row(
    rule: Rule, index: int, action, row: dict, customer_meta: dict, team_email: str | None, refunds_enabled: bool
) -> dict:
    out = _base(rule.name, action.type, row, index)
    out["trigger"] = rule.trigger
    if isinstance(action, EmailAction):
        ctx = _context(row)  # every field a template may name (checked at load)
        out["recipient"] = team_email if action.to == TEAM else action.to
        out["subject"] = action.subject.format_map(ctx)
        lines = [action.body.format_map(ctx), ""] + [f"{f}: {ctx[f]}" for f in action.fields]
        out["body"] = "\n".join(lines + ["", f"Stripe Dashboard: {ctx['dashboard_url']}"])
        if not out["recipient"]:
            out["reason"] = "no recipient (set GIFTFLOW_TEAM_EMAIL)"
    elif isinstance(action, UpdateCustomerMetadataAction):
        out["metadata"] = dict(action.metadata)
        current = customer_meta.get(out["customer_id"] or "", {})
        if out["customer_id"] is None:
            out["status"], out["reason"] = NOT_APPLICABLE, "payment has no customer"
        elif all(current.get(k) == v for k, v in action.metadata.items()):
            out["status"], out["reason"] = UNCHANGED, "customer already has these values"
    else:
        out["refund_amount"] = int(row["unrefunded"])
        out["refund_reason"] = action.reason
        if row["charge_fully_refunded"] or row["unrefunded"] <= 0:
            out["status"], out["reason"], out["refund_amount"] = NOT_APPLICABLE, "charge fully refunded", 0
        elif not refunds_enabled:
            out["status"], out["reason"] = WOULD_REFUND, "refunds disabled (GIFTFLOW_REFUNDS_ENABLED)"
    return out


# -- invariants (blocking checks on a plan) -------------------------------------------------------


def plan_violations(plan: pd.DataFrame, limits: Limits) -> dict[str, list[str]]:
    """Each invariant's violations (empty lists = the plan may be applied)."""
    refunds = plan[(plan["action"] == "refund") & (plan["status"] == PLANNED)]
    totals = refunds.groupby("currency")["refund_amount"].sum()
    mails = plan[(plan["action"] == "email") & (plan["status"] == PLANNED)]
    return {
        "refund_within_unrefunded_amount": [
            f"{r.ledger_key}: refund {r.refund_amount} > unrefunded {r.unrefunded}"
            for r in refunds.itertuples()
            if r.refund_amount > r.unrefunded or r.refund_amount <= 0
        ],
        "no_refund_of_disputed_charge": [
            f"{r.ledger_key}: charge {r.charge_id} is disputed" for r in refunds.itertuples() if r.charge_disputed
        ],
        "refund_caps": (
            [f"{len(refunds)} refunds > cap {limits.max_refunds_per_run}"]
            if len(refunds) > limits.max_refunds_per_run
            else []
        )
        + [
            f"{format_minor(int(total), cur)} refunded > cap "
            f"{format_minor(limits.max_refund_amount_per_run.get(cur, 0), cur)}"
            for cur, total in totals.items()
            if total > limits.max_refund_amount_per_run.get(cur, 0)
        ],
        "mail_has_recipient": [
            f"{r.ledger_key}: no recipient"
            for r in mails.itertuples()
            if not isinstance(r.recipient, str) or not EMAIL.fullmatch(r.recipient)
        ],
    }
