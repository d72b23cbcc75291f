"""The gift-card sync: Cardivo redemptions -> reconcile with Stripe customers -> Stripe writes."""

from datetime import datetime, timezone
from typing import Any

import dagster as dg
import pandas as pd

from giftflow.adapters.config_files import giftcard_sync_spec
from giftflow.adapters.store import GiftflowStore
from giftflow.domain.giftcard import (
    SKIP,
    customers_frame,
    match_redemptions,
    plan_customer_updates,
    summarize,
)
from giftflow.domain.redemptions import validate_redemptions
from giftflow.orchestration.metadata import markdown_table
from giftflow.orchestration.partitions import daily
from giftflow.orchestration.resources import (
    CardivoResource,
    StoreResource,
    StripeResource,
)
from giftflow.services.customer_writer import apply_sync_plan
from giftflow.services.sync_runner import keep_report
from giftflow.settings import Settings

GROUP = "giftcard_sync"


@dg.asset(
    partitions_def=daily, group_name=GROUP, kinds={"cardivo", "python"},
    description="Cardivo redemptions of the day, validated against the API contract; bad records are "
                "quarantined with their reason and the rest are upserted into giftflow's store.",
)
def cardivo_redemptions(context: dg.AssetExecutionContext, cardivo: CardivoResource,
                        store: StoreResource) -> dg.MaterializeResult:
    cardivo_api, db = cardivo.get_client(), store.get_client()
    window = context.partition_time_window
    fetched = cardivo_api.list_redemptions(redeemed_after=window.start, redeemed_before=window.end)
    valid, bad = validate_redemptions(fetched.records)
    outside = (valid["redeemed_at"] < window.start) | (valid["redeemed_at"] >= window.end)
    bad += [{"record_key": r, "reason": "redeemed_at outside the requested day", "payload": {"id": r}}
            for r in valid.loc[outside, "redemption_id"]]
    valid = valid[~outside]
    db.upsert_redemptions(valid)
    db.quarantine("cardivo", bad, context.partition_key, context.run_id)
    for b in bad:
        context.log.warning("quarantined %s: %s", b["record_key"], b["reason"])
    preview = valid[["redemption_id", "status", "amount", "currency", "card_last4", "email_norm", "redeemed_at"]]
    return dg.MaterializeResult(metadata={
        "fetched": len(fetched.records), "valid": len(valid), "quarantined": len(bad),
        "api_calls": fetched.calls, "preview": markdown_table(preview),
        "quarantine_reasons": markdown_table(pd.DataFrame(bad, columns=["record_key", "reason"])),
    })


@dg.asset(
    partitions_def=daily, group_name=GROUP, kinds={"stripe"},
    description="giftflow's mirror of Stripe customers (id, e-mail, created, metadata). Stripe's e-mail "
                "filter is case-sensitive, so matching by normalised e-mail needs the full list.",
)
def stripe_customers(context: dg.AssetExecutionContext, stripe_api: StripeResource, store: StoreResource,
                     settings: dg.ResourceParam[Settings]) -> dg.MaterializeResult:
    stripe_client, db = stripe_api.get_client(), store.get_client()
    refreshed = db.customers_refreshed_at()
    events_synced = db.get_state("customers_events_synced_at")
    now = datetime.now(timezone.utc)
    age = (now - refreshed).total_seconds() if refreshed else None
    # With the Stripe events sensor keeping the mirror current, a daily full relist is a safety net only.
    kept_fresh = bool(events_synced and age is not None and age < 86_400 and
                      (now - datetime.fromisoformat(events_synced)).total_seconds() < 120)
    if kept_fresh or (age is not None and age < settings.customer_mirror_max_age_s):
        context.log.info(f"customer mirror reused (relisted {age:.0f} s ago, kept fresh by events: {kept_fresh})")
        return dg.MaterializeResult(metadata={"customers": db.count_customers(), "api_calls": 0,
                                              "reused_mirror": True})
    rows, calls = [], 0
    for page, calls in stripe_client.iter_customers():
        rows += page
    db.replace_customers(rows, listed_from=now)
    return dg.MaterializeResult(metadata={"customers": len(rows), "api_calls": calls, "reused_mirror": False})


def _plan_day(window: dg.TimeWindow, store: GiftflowStore, settings: Settings) -> pd.DataFrame:
    customers = customers_frame(store.load_customers())
    day = store.load_redemptions(start=window.start, end=window.end)
    # A customer's values come from all their days: widen to every redemption linked to them.
    touched = match_redemptions(day, customers)["customer_id"].dropna().unique()
    emails = set(customers.loc[customers["customer_id"].isin(touched), "email_norm"].dropna())
    emails |= set(day["email_norm"].dropna())
    ids = set(touched) | set(day["stripe_customer_id"].dropna())
    # The day itself too: anonymous redemptions match neither an e-mail nor an id, and are reported.
    history = store.load_redemptions(start=window.start, end=window.end, emails=emails, customer_ids=ids)
    return plan_customer_updates(history, customers, window.start, window.end, giftcard_sync_spec(settings.sync_mode))


@dg.asset(
    partitions_def=daily, group_name=GROUP, kinds={"pandas"}, deps=[cardivo_redemptions, stripe_customers],
    description="Per customer touched by the day's redemptions: the gift-card metadata Stripe should "
                "hold (from all days seen), the keys that differ from what it holds, and the action: create, "
                "update, none, or skip with a reason (unmatched, anonymous, multi_currency). The diff is the "
                "sync engine's, configured by giftflow/domain/giftcard_sync.yaml.",
)
def giftcard_customer_plan(context: dg.AssetExecutionContext, store: StoreResource,
                           settings: dg.ResourceParam[Settings]) -> dg.Output[pd.DataFrame]:
    db = store.get_client()
    plan = _plan_day(context.partition_time_window, db, settings)
    counts = summarize(plan)
    shown = plan[["customer_id", "email", "action", "reason", "note", "changed_keys",
                  "giftcard_redeemed_total", "giftcard_currency", "giftcard_redemptions"]].assign(
        changed_keys=plan["changed_keys"].str.replace("metadata.", "", regex=False))
    return dg.Output(plan, metadata={
        "customers": len(plan), "mode": settings.sync_mode, **counts, "plan": markdown_table(shown),
    })


@dg.asset(
    partitions_def=daily, group_name=GROUP, kinds={"stripe"}, pool="stripe_customer_writes",
    description="Carries out the plan at Stripe through the sync engine's one customer writer: one idempotent "
                "write per changed customer, each in giftflow's ledger, diffed again at write time (one writer "
                "at a time across runs). A customer Stripe refuses (4xx) is reported as rejected with Stripe's "
                "message; any other failed write fails the step after the others went out, and a retry resends "
                "only what failed. Each run's report is kept (`giftflow syncs report giftcard`). "
                "GIFTFLOW_DRY_RUN=true writes nothing.",
)
def giftcard_customer_updates(context: dg.AssetExecutionContext, giftcard_customer_plan: pd.DataFrame,
                              stripe_api: StripeResource, store: StoreResource,
                              settings: dg.ResourceParam[Settings]) -> dg.MaterializeResult:
    stripe_client, db = stripe_api.get_client(), store.get_client()
    # Runs of other days may have written the same customers since this run planned (the pool lets one
    # writer in at a time): diff again against the db as it is now, so an older plan never overwrites.
    started = datetime.now(timezone.utc)
    plan = _plan_day(context.partition_time_window, db, settings)
    spec = giftcard_sync_spec(settings.sync_mode)
    report = apply_sync_plan(plan[plan["action"] != SKIP], stripe_client, db, spec=spec, dry_run=settings.dry_run,
                             partition=context.partition_key, run_id=context.run_id, log=context.log)
    counts = keep_report(spec, db, report, read=len(plan), run_id=context.run_id, partition=context.partition_key,
                         dry_run=settings.dry_run, started_at=started, left_out=int((plan["action"] == SKIP).sum()))
    metadata: dict[str, Any] = {"dry_run": settings.dry_run, "sent": report.writes, **counts,
                "rows_changed_since_plan": len(_row_set(plan) - _row_set(giftcard_customer_plan))}
    if report.rejections:
        metadata["rejected_rows"] = markdown_table(pd.DataFrame(report.rejections))
    if report.failures:
        raise dg.Failure(
            description=f"{len(report.failures)} Stripe write(s) failed; the others were sent. "
                        "Retry the step to resend only the failed ones.",
            metadata={**metadata, "failures": markdown_table(pd.DataFrame(report.failures))},
        )
    return dg.MaterializeResult(metadata=metadata)


def _row_set(plan: pd.DataFrame) -> set[tuple]:
    return set(zip(plan["customer_id"].fillna(plan["email"]), plan["action"], plan["changed_keys"]))


giftcard_sync = dg.define_asset_job(
    "giftcard_sync", selection=dg.AssetSelection.groups(GROUP), partitions_def=daily,
    tags={"giftflow/job": "giftcard_sync"},  # dagster.yaml limits concurrent runs per job by this tag
    # The steps are short and I/O-bound: one process per run starts in a second instead of one per step.
    executor_def=dg.in_process_executor,
    description="Cardivo redemptions of a UTC day -> Stripe customer gift-card metadata.",
)
