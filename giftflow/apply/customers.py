"""Carry out a customer plan at Stripe: ledger first, idempotent write, mirror after.

A failed write is recorded and the rest still go out; the caller fails the step afterwards so Dagster
shows it, and a retry resends only what the ledger does not show as sent.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd
import stripe

from giftflow.core.reconcile import CREATE, NONE, SKIP, UPDATE, metadata_changes
from giftflow.resources.store import GiftflowStore
from giftflow.resources.stripe import StripeResource, idempotency_key

CREATE_KIND, UPDATE_KIND = "create_customer", "update_customer"


@dataclass
class ApplyReport:
    counts: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)
    created: dict[str, str] = field(default_factory=dict)  # e-mail -> new customer id

    @property
    def writes(self) -> int:
        return self.counts["created"] + self.counts["updated"]


def apply_customer_plan(
    plan: pd.DataFrame,
    stripe_api: StripeResource,
    store: GiftflowStore,
    *,
    dry_run: bool,
    partition: str | None,
    run_id: str | None,
    log: logging.Logger | None = None,
) -> ApplyReport:
    log = log or logging.getLogger(__name__)
    report = ApplyReport()
    report.counts["unchanged"] = int((plan["action"] == NONE).sum())
    report.counts["left_out"] = int((plan["action"] == SKIP).sum())
    for row in plan[plan["action"].isin([CREATE, UPDATE])].to_dict("records"):
        if dry_run:
            report.counts[f"would_{row['action']}"] += 1
            continue
        try:
            if row["action"] == UPDATE:
                _update(row, stripe_api, store, partition, run_id, report)
            else:
                _create(row, stripe_api, store, partition, run_id, report)
        except stripe.StripeError as exc:
            target = row["customer_id"] or row["email"]
            message = getattr(exc, "user_message", None) or str(exc)
            report.counts["failed"] += 1
            report.failures.append({"target": target, "action": row["action"], "error": message})
            log.warning("Stripe %s of %s failed: %s", row["action"], target, message)
    return report


def _send(kind, target, params, key, call, store, partition, run_id, report) -> dict | None:
    """Ledger 'planned' before the call, 'sent'/'failed' after: a crash in between is detectable."""
    prior = store.ledger_entries([key]).get(key)
    if prior and prior["status"] == "sent":
        report.counts["already_sent"] += 1
        return None
    store.record_planned(key, kind, target, params, partition, run_id)
    try:
        result = call()
    except stripe.StripeError as exc:
        store.record_result(key, status="failed", request_id=getattr(exc, "request_id", None), error=str(exc)[:1000])
        raise
    store.record_result(key, status="sent", request_id=result.request_id, object_id=result.object.get("id"))
    store.upsert_customers([result.object])
    return result.object


def _update(row, stripe_api, store, partition, run_id, report) -> None:
    params = {"metadata": metadata_changes(row)}
    key = idempotency_key(UPDATE_KIND, row["customer_id"], {**params, "before": row["before"]})
    if _send(UPDATE_KIND, row["customer_id"], params, key,
             lambda: stripe_api.update_customer(row["customer_id"], params, key), store, partition, run_id, report):
        report.counts["updated"] += 1


def _create(row, stripe_api, store, partition, run_id, report) -> None:
    email = row["email"]
    # A planned create that never reached 'sent' may still have happened at Stripe (crash between the
    # call and the ledger): look before creating again. We create with the normalised e-mail, so
    # Stripe's case-sensitive e-mail filter finds it.
    if store.ledger_for_target(email, CREATE_KIND):
        existing = stripe_api.list_customers_by_email(email)
        if existing:
            newest = max(existing, key=lambda c: (c["created"], c["id"]))
            store.upsert_customers([newest])
            report.counts["found_existing"] += 1
            report.created[email] = newest["id"]
            return
    metadata = {k: v for k, v in metadata_changes(row).items() if v != ""}
    params = {"email": email, "metadata": metadata,
              **{k: row[k] for k in ("name", "phone") if isinstance(row.get(k), str) and row[k]}}
    key = idempotency_key(CREATE_KIND, email, params)
    created = _send(CREATE_KIND, email, params, key, lambda: stripe_api.create_customer(params, key),
                    store, partition, run_id, report)
    if created:
        report.counts["created"] += 1
        report.created[email] = created["id"]
