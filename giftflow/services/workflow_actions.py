"""Carry out a Stripe Workflows plan: refunds, customer metadata updates and team mails, each exactly once.

Each action is keyed in the ledger by (rule, object id, action index). It is recorded as planned before it
is carried out, so a crash leaves a trace: a refund found planned is looked up at Stripe (by the key in its
metadata) before it is tried again, and Stripe writes carry idempotency keys from the same ledger key.
"""

from __future__ import annotations

import logging
import smtplib
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd
import stripe

from giftflow.adapters.mailer import Mailer, MailError
from giftflow.adapters.store import GiftflowStore
from giftflow.adapters.stripe import StripeClient, idempotency_key
from giftflow.domain.rules import DONE_BEFORE, PLANNED


@dataclass
class WorkflowReport:
    counts: Counter = field(default_factory=Counter)  # (rule, outcome) -> n
    failures: list[dict] = field(default_factory=list)
    # every mail this run sent: rule, recipient, subject, the Stripe object, where it went (SMTP host or .eml path)
    mails: list[dict] = field(default_factory=list)

    def per_rule(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (rule, outcome), n in sorted(self.counts.items()):
            out.setdefault(rule, {})[outcome] = n
        return out


# Outcomes counted per rule: matched, mailed, tagged, refunded, escalated, failed, and the plan's statuses
# (would_refund, unchanged, done_before, not_applicable; see giftflow/domain/rules.py) under the same names.
OUTCOME = {"email": "mailed", "update_customer_metadata": "tagged", "refund": "refunded"}
WOULD = {"mailed": "would_mail", "tagged": "would_tag", "refunded": "would_refund", "escalated": "would_escalate"}


def _outcome(row: dict) -> str:
    # A mail about a fraud warning is an escalation to a person, not a courtesy note.
    if row["action"] == "email" and row["trigger"] == "radar.early_fraud_warning.created":
        return "escalated"
    return OUTCOME[row["action"]]


def apply_workflow_plan(
    plan: pd.DataFrame,
    stripe_api: StripeClient,
    store: GiftflowStore,
    notifier: Mailer,
    *,
    dry_run: bool,
    partition: str | None,
    run_id: str | None,
    log: logging.Logger | None = None,
) -> WorkflowReport:
    log = log or logging.getLogger(__name__)
    report = WorkflowReport()
    for rule, objects in plan.groupby("rule")["object_id"].nunique().items():
        report.counts[(rule, "matched")] = int(objects)
    for row in plan.to_dict("records"):
        rule = row["rule"]
        if row["status"] != PLANNED:
            report.counts[(rule, row["status"])] += 1
            continue
        if dry_run:  # would_mail, would_tag, would_refund, would_escalate: as the syncs' would_update
            report.counts[(rule, WOULD[_outcome(row)])] += 1
            continue
        key = row["ledger_key"]
        prior = store.ledger_entries([key]).get(key)
        if prior and prior["status"] == "sent":
            report.counts[(rule, DONE_BEFORE)] += 1
            continue
        try:
            store.record_planned(key, row["action"], row["object_id"], _params(row), partition, run_id)
            request_id, object_id = _carry_out(row, key, prior, stripe_api, store, notifier, report)
        # One action failing (a mail not built or not sent, a Stripe error) fails that action only: the rest of
        # the plan goes on, the step fails afterwards, and a rerun redoes what the ledger does not show as sent.
        except (stripe.StripeError, MailError, smtplib.SMTPException, OSError) as exc:
            store.record_result(key, status="failed", error=str(exc)[:1000])
            report.counts[(rule, "failed")] += 1
            report.failures.append(
                {"rule": rule, "object": row["object_id"], "action": row["action"], "error": str(exc)[:300]}
            )
            log.warning("%s on %s failed: %s", row["action"], row["object_id"], exc)
            continue
        store.record_result(key, status="sent", request_id=request_id, object_id=object_id)
        report.counts[(rule, _outcome(row))] += 1
    return report


def _params(row: dict) -> dict:
    if row["action"] == "refund":
        return {"charge": row["charge_id"], "amount": int(row["refund_amount"]), "reason": row["refund_reason"]}
    if row["action"] == "update_customer_metadata":
        return {"customer": row["customer_id"], "metadata": row["metadata"]}
    return {"to": row["recipient"], "subject": row["subject"]}


def _carry_out(row, key, prior, stripe_api, store, notifier, report) -> tuple[str | None, str | None]:
    """Do one action; returns the Stripe request id and object id where there are any."""
    if row["action"] == "email":
        went = notifier.send(row["recipient"], row["subject"], row["body"], key)
        report.mails.append(
            {
                "rule": row["rule"],
                "recipient": row["recipient"],
                "subject": row["subject"],
                "object": row["object_id"],
                "went_to": went,
            }
        )
        return None, None
    if row["action"] == "update_customer_metadata":
        params = {"metadata": row["metadata"]}
        result = stripe_api.update_customer(row["customer_id"], params, idempotency_key("workflow", key, params))
        store.upsert_customers([result.object])
        return result.request_id, result.object["id"]
    if prior is not None:  # tried before: the refund may exist although the ledger never heard back
        refunds, _ = stripe_api.list_all("refunds", charge=row["charge_id"])
        done = [r for r in refunds if (r.get("metadata") or {}).get("giftflow_key") == key]
        if done:
            return None, done[0]["id"]
    params = {
        "charge": row["charge_id"],
        "amount": int(row["refund_amount"]),
        "reason": row["refund_reason"],
        "metadata": {"giftflow_key": key, "giftflow_rule": row["rule"], "early_fraud_warning": row["object_id"]},
    }
    result = stripe_api.create_refund(params, idempotency_key("refund", key, params))
    return result.request_id, result.object["id"]
