"""Stripe Workflows as code: extract the day's Stripe objects, plan what the rules ask, check, apply."""

from typing import Any

import dagster as dg
import pandas as pd

from giftflow.adapters.config_files import load_rules
from giftflow.adapters.mailer import Mailer
from giftflow.adapters.store import GiftflowStore
from giftflow.domain.rules import (
    FRAUD_WARNING,
    PAYMENT_SUCCEEDED,
    evaluate_rules,
    fraud_triggers,
    payment_triggers,
    plan_violations,
)
from giftflow.orchestration.errors import failures_named
from giftflow.orchestration.metadata import table
from giftflow.orchestration.partitions import daily
from giftflow.orchestration.resources import (
    MailerResource,
    StoreResource,
    StripeResource,
)
from giftflow.services.workflow_actions import apply_workflow_plan
from giftflow.settings import Settings

GROUP = "stripe_workflows"
PI_COLUMNS = ["id", "amount", "currency", "customer", "status", "latest_charge", "created"]
CHARGE_COLUMNS = ["id", "amount", "amount_refunded", "currency", "customer", "disputed", "refunded", "payment_intent"]
CHECKS = {
    "refund_within_unrefunded_amount": "No refund is larger than its charge's unrefunded amount.",
    "no_refund_of_disputed_charge": "No refund of a disputed charge.",
    "refund_caps": "Refund count and refunded money stay under the rules file's per-run caps.",
    "mail_has_recipient": "Every mail has a valid recipient (GIFTFLOW_TEAM_EMAIL or the rule's address).",
}


def _window(context: dg.AssetExecutionContext) -> dict[str, int]:
    window = context.partition_time_window
    return {"gte": int(window.start.timestamp()), "lt": int(window.end.timestamp())}


@dg.asset(
    partitions_def=daily,
    group_name=GROUP,
    kinds={"stripe"},
    description="Payment intents created on the day (Stripe `created`, UTC), stored for the rules.",
)
@failures_named
def stripe_payment_intents(
    context: dg.AssetExecutionContext, stripe_api: StripeResource, store: StoreResource
) -> dg.MaterializeResult:
    stripe_client, db = stripe_api.get_client(), store.get_client()
    rows, calls = stripe_client.list_all("payment_intents", created=_window(context))
    db.upsert_objects("payment_intent", rows)
    return dg.MaterializeResult(
        metadata={
            "payment_intents": len(rows),
            "api_calls": calls,
            "succeeded": sum(r["status"] == "succeeded" for r in rows),
        }
    )


@dg.asset(
    partitions_def=daily,
    group_name=GROUP,
    kinds={"stripe"},
    description="Charges created on the day, stored for reporting and lifetime figures.",
)
@failures_named
def stripe_charges(
    context: dg.AssetExecutionContext, stripe_api: StripeResource, store: StoreResource
) -> dg.MaterializeResult:
    stripe_client, db = stripe_api.get_client(), store.get_client()
    rows, calls = stripe_client.list_all("charges", created=_window(context))
    db.upsert_objects("charge", rows)
    return dg.MaterializeResult(metadata={"charges": len(rows), "api_calls": calls})


@dg.asset(
    partitions_def=daily,
    group_name=GROUP,
    kinds={"stripe"},
    description="Radar early fraud warnings created on the day, each with its charge retrieved fresh "
    "(refunded and disputed state as of now, whatever day the charge is from).",
)
@failures_named
def stripe_early_fraud_warnings(
    context: dg.AssetExecutionContext, stripe_api: StripeResource, store: StoreResource
) -> dg.MaterializeResult:
    stripe_client, db = stripe_api.get_client(), store.get_client()
    warnings, calls = stripe_client.list_all("early_fraud_warnings", created=_window(context))
    charges = [stripe_client.retrieve("charges", cid) for cid in sorted({w["charge"] for w in warnings})]
    db.upsert_objects("early_fraud_warning", warnings)
    db.upsert_objects("charge", charges)
    return dg.MaterializeResult(metadata={"early_fraud_warnings": len(warnings), "api_calls": calls + len(charges)})


@dg.asset(
    partitions_def=daily,
    group_name=GROUP,
    kinds={"pandas"},
    deps=[stripe_payment_intents, stripe_charges, stripe_early_fraud_warnings],
    check_specs=[
        dg.AssetCheckSpec(name, asset="workflow_plan", blocking=True, description=text) for name, text in CHECKS.items()
    ],
    description="Every action the rules file asks for on the day: mails, customer metadata updates and "
    "refunds, with status planned / would_refund / unchanged / done_before / not_applicable. Blocking "
    "checks stop the apply step when the plan breaks an invariant.",
)
@failures_named
def workflow_plan(
    context: dg.AssetExecutionContext, store: StoreResource, stripe_api: StripeResource, settings: dg.ResourceParam[Settings]
):
    stripe_client, db = stripe_api.get_client(), store.get_client()
    rules = load_rules(settings.rules_path)
    window = _window(context)
    pis = pd.DataFrame(
        db.load_objects("payment_intent", created_gte=window["gte"], created_lt=window["lt"]), columns=PI_COLUMNS
    )
    warnings = pd.DataFrame(
        db.load_objects("early_fraud_warning", created_gte=window["gte"], created_lt=window["lt"]), columns=["id", "charge"]
    )
    charges = pd.DataFrame(db.load_objects("charge", ids=list(warnings["charge"])), columns=CHARGE_COLUMNS)
    triggers = {PAYMENT_SUCCEEDED: payment_triggers(pis), FRAUD_WARNING: fraud_triggers(warnings, charges)}
    customers = sorted(set(pis["customer"].dropna()))
    lifetime = _lifetime_spend(db, customers)
    mirror = {c["id"]: c["metadata"] for c in db.load_customers(ids=customers)}

    # What earlier runs carried out, from the ledger: a rerun shows each rule's actions as done_before (a refunded
    # warning stays under its rule instead of becoming "(no rule) / charge fully refunded").
    candidates = [
        f"{rule.name}:{o}:{i}"
        for rule in rules.rules
        for o in triggers[rule.trigger]["object_id"]
        for i in range(len(rule.actions))
    ]
    done = {k for k, e in db.ledger_entries(candidates).items() if e["status"] == "sent"}

    def evaluate(meta):
        return evaluate_rules(
            rules,
            triggers,
            customer_meta=meta,
            lifetime_spend=lifetime,
            team_email=settings.team_email,
            refunds_enabled=settings.refunds_enabled,
            done=done,
        )

    plan = evaluate(mirror)
    # Metadata writes are decided on the customer as Stripe holds it now, not on a possibly stale mirror.
    to_tag = sorted(set(plan.loc[plan["action"] == "update_customer_metadata", "customer_id"].dropna()))
    if to_tag:
        plan = evaluate({**mirror, **{c: stripe_client.retrieve("customers", c).get("metadata") or {} for c in to_tag}})

    per_rule = plan.groupby(["rule", "action", "status"]).size().reset_index(name="count")
    yield dg.Output(
        plan,
        metadata={
            "actions": len(plan),
            **{f"status_{k}": int(v) for k, v in plan["status"].value_counts().sort_index().items()},
            "per_rule": table(per_rule, rows=30),
            "plan": table(
                plan[
                    [
                        "rule",
                        "action",
                        "status",
                        "object_id",
                        "customer_id",
                        "amount",
                        "currency",
                        "refund_amount",
                        "recipient",
                        "reason",
                    ]
                ],
                rows=30,
            ),
        },
    )
    for name, problems in plan_violations(plan, rules.limits).items():
        yield dg.AssetCheckResult(
            check_name=name, passed=not problems, severity=dg.AssetCheckSeverity.ERROR, metadata=_violations(problems)
        )


def _violations(problems: list[str]) -> dict[str, Any]:
    """A blocking check's metadata: the count, and what breaks the invariant as a table the UI shows as is (the
    first 50; a Markdown list would hide them behind "Show Markdown"). A passing check has only the count."""
    metadata: dict[str, Any] = {"violations": len(problems)}
    if problems:
        metadata["details"] = table(pd.DataFrame({"violation": problems}), rows=50)
    return metadata


def _lifetime_spend(store: GiftflowStore, customers: list[str]) -> dict[tuple[str, str], int]:
    spend: dict[tuple[str, str], int] = {}
    for pi in store.load_objects("payment_intent", customer_ids=customers):
        if pi["status"] == "succeeded":
            spend[(pi["customer"], pi["currency"])] = spend.get((pi["customer"], pi["currency"]), 0) + pi["amount"]
    return spend


@dg.asset(
    partitions_def=daily,
    group_name=GROUP,
    kinds={"stripe", "email"},
    pool="stripe_customer_writes",
    description="Carries out the workflow plan exactly once per (rule, object): refunds (only with "
    "GIFTFLOW_REFUNDS_ENABLED=true), customer metadata updates and team mails. Dry run does nothing.",
)
@failures_named
def workflow_actions(
    context: dg.AssetExecutionContext,
    workflow_plan: pd.DataFrame,
    stripe_api: StripeResource,
    store: StoreResource,
    notifier: MailerResource,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    stripe_client, db, mailer = stripe_api.get_client(), store.get_client(), notifier.get_client()
    report = apply_workflow_plan(
        workflow_plan,
        stripe_client,
        db,
        mailer,
        dry_run=settings.dry_run,
        partition=context.partition_key,
        run_id=context.run_id,
        log=context.log,
    )
    summary = pd.DataFrame([{"rule": r, **c} for r, c in report.per_rule().items()]).fillna(0)
    summary = summary.astype({c: "int64" for c in summary.columns if c != "rule"})
    mails = pd.DataFrame(report.mails, columns=["rule", "recipient", "subject", "object", "went_to"])
    metadata: dict[str, Any] = {
        "dry_run": settings.dry_run,
        "refunds_enabled": settings.refunds_enabled,
        "per_rule": table(summary, rows=30),  # one table: no JSON copy of it to read beside it
        "mails_sent": len(mails),
        "mails_went_to": _mail_destination(mailer),
        "mails": table(mails, rows=MAILS_SHOWN),
        "failed": len(report.failures),
    }
    if report.failures:
        raise dg.Failure(
            description=f"{len(report.failures)} workflow action(s) failed; the others were done. "
            "Retry the step to redo only the failed ones.",
            metadata={**metadata, "failures": table(pd.DataFrame(report.failures), rows=30)},
        )
    return dg.MaterializeResult(metadata=metadata)


MAILS_SHOWN = 200  # a day's mails are few; beyond this the count and the outbox/SMTP log tell the rest


def _mail_destination(mailer: Mailer) -> str:
    return f"SMTP {mailer.smtp_host}:{mailer.smtp_port}" if mailer.smtp_host else f"outbox {mailer.outbox}"


stripe_workflows = dg.define_asset_job(
    "stripe_workflows",
    selection=dg.AssetSelection.groups(GROUP),
    partitions_def=daily,
    tags={"giftflow/job": "stripe_workflows"},  # dagster.yaml limits concurrent runs per job by this tag
    # The steps are short and I/O-bound: one process per run starts in a second instead of one per step.
    executor_def=dg.in_process_executor,
    description="Stripe Workflows as code for a UTC day: large-order mails, VIP tags, early-fraud-warning "
    "refunds or escalations.",
)
