"""The gift-card sync: Cardivo redemptions -> reconcile with Stripe customers -> Stripe writes."""

from datetime import datetime, timezone
from typing import Any

import dagster as dg
import pandas as pd

from giftflow.adapters.config_files import giftcard_sync_spec
from giftflow.adapters.store import GiftflowStore
from giftflow.domain.giftcard import summarize
from giftflow.domain.redemptions import validate_redemptions
from giftflow.orchestration.errors import failures_named
from giftflow.orchestration.metadata import table
from giftflow.orchestration.partitions import daily
from giftflow.orchestration.resources import (
    CardivoResource,
    StoreResource,
    StripeResource,
)
from giftflow.services.customer_mirror import refresh_customer_mirror
from giftflow.services.giftcard_sync import plan_giftcard_day
from giftflow.services.sync_runner import run_planned
from giftflow.settings import Settings

GROUP = "giftcard_sync"


@dg.asset(
    partitions_def=daily, group_name=GROUP, kinds={"cardivo", "python"},
    description="Cardivo redemptions of the day, validated against the API contract; bad records are "
                "quarantined with their reason and the rest are upserted into giftflow's store.",
)
@failures_named
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
        "api_calls": fetched.calls, "preview": table(preview),
        "quarantine_reasons": table(pd.DataFrame(bad, columns=["record_key", "reason"])),
    })


@dg.asset(
    partitions_def=daily, group_name=GROUP, kinds={"stripe"},
    description="giftflow's one mirror of Stripe customers, shared with every sync: relisted unless the Stripe "
                "events sensor keeps it current (then a daily relisting is a safety net only). Stripe's e-mail "
                "filter is case-sensitive, so matching by normalised e-mail needs the mirror.",
)
@failures_named
def stripe_customers(context: dg.AssetExecutionContext, stripe_api: StripeResource, store: StoreResource,
                     settings: dg.ResourceParam[Settings]) -> dg.MaterializeResult:
    stripe_client, db = stripe_api.get_client(), store.get_client()
    refreshed = db.customers_refreshed_at()
    events_synced = db.get_state("customers_events_synced_at")
    now = datetime.now(timezone.utc)
    age = (now - refreshed).total_seconds() if refreshed else None
    kept_fresh = bool(events_synced and age is not None and age < 86_400 and
                      (now - datetime.fromisoformat(events_synced)).total_seconds() < 120)
    if kept_fresh:
        context.log.info(f"customer mirror reused (relisted {age:.0f} s ago, kept fresh by events)")
        return dg.MaterializeResult(metadata={"customers": db.count_customers(), "api_calls": 0,
                                              "reused_mirror": True})
    calls = refresh_customer_mirror(stripe_client, db, max_age_s=settings.customer_mirror_max_age_s)
    return dg.MaterializeResult(metadata={"customers": db.count_customers(), "api_calls": calls,
                                          "reused_mirror": calls == 0})


def _require_fetched(context: dg.AssetExecutionContext) -> None:
    """A day whose redemptions were never fetched would plan 0 customers and look done: fail and say so."""
    day = context.partition_key
    fetched = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=cardivo_redemptions.key, asset_partitions=[day]), limit=1).records
    if not fetched:
        raise dg.Failure(
            description=f"cardivo_redemptions has not been materialized for {day}, so there is nothing to plan "
                        f"(the plan would show 0 customers). Materialize cardivo_redemptions (and "
                        f"stripe_customers) for {day} first, or run the whole giftcard_sync job for the day.",
            metadata={"missing_upstream": "cardivo_redemptions", "partition": day}, allow_retries=False)


def _planner(window: dg.TimeWindow, db: GiftflowStore, settings: Settings):
    spec = giftcard_sync_spec(settings.sync_mode)
    return spec, lambda: plan_giftcard_day(db, window.start, window.end, spec)


@dg.asset(
    partitions_def=daily, group_name=GROUP, kinds={"pandas"}, deps=[cardivo_redemptions, stripe_customers],
    description="Per customer touched by the day's redemptions: the gift-card metadata Stripe should "
                "hold (from all days seen), the keys that differ from what it holds, and the action: create, "
                "update, none, or skip with a reason (unmatched, anonymous, multi_currency). The diff is the "
                "sync engine's, configured by giftflow/domain/giftcard_sync.yaml.",
)
def giftcard_customer_plan(context: dg.AssetExecutionContext, store: StoreResource,
                           settings: dg.ResourceParam[Settings]) -> dg.Output[pd.DataFrame]:
    _require_fetched(context)
    _, planner = _planner(context.partition_time_window, store.get_client(), settings)
    plan = planner().plan
    counts = summarize(plan)
    shown = plan[["customer_id", "email", "action", "reason", "note", "changed_keys",
                  "giftcard_redeemed_total", "giftcard_currency", "giftcard_redemptions"]].assign(
        changed_keys=plan["changed_keys"].str.replace("metadata.", "", regex=False))
    return dg.Output(plan, metadata={
        "customers": len(plan), "mode": settings.sync_mode, **counts,
        # the rows that will be written first (create, update), then the rest: a table the UI shows as is
        "plan": table(shown.sort_values("action", key=lambda a: ~a.isin(["create", "update"]), kind="stable")),
    })


@dg.asset(
    partitions_def=daily, group_name=GROUP, kinds={"stripe"}, pool="stripe_customer_writes",
    description="Carries out the plan at Stripe through the one sync runner and customer writer that every sync "
                "file uses: one idempotent write per changed customer, each in giftflow's ledger, planned again "
                "at write time (one writer at a time across runs). A customer Stripe refuses (4xx) is reported "
                "as rejected with Stripe's message; any other failed write fails the step after the others went "
                "out, and a retry resends only what failed. Each run's report is kept (`giftflow syncs report "
                "giftcard`). GIFTFLOW_DRY_RUN=true writes nothing.",
)
@failures_named
def giftcard_customer_updates(context: dg.AssetExecutionContext, giftcard_customer_plan: pd.DataFrame,
                              stripe_api: StripeResource, store: StoreResource,
                              settings: dg.ResourceParam[Settings]) -> dg.MaterializeResult:
    stripe_client, db = stripe_api.get_client(), store.get_client()
    # Runs of other days may have written the same customers since this run planned (the pool lets one
    # writer in at a time): the runner plans again against the mirror as it is now.
    spec, planner = _planner(context.partition_time_window, db, settings)
    result = run_planned(spec, planner, stripe_client, db, dry_run=settings.dry_run, run_id=context.run_id,
                         partition=context.partition_key, log=context.log)
    metadata: dict[str, Any] = {"dry_run": settings.dry_run, "sent": result.counts["created"] + result.counts["updated"],
                **result.counts,
                "rows_changed_since_plan": len(_row_set(result.plan) - _row_set(giftcard_customer_plan))}
    if result.rejections:
        metadata["rejected_rows"] = table(pd.DataFrame(result.rejections))
    if result.failures:
        raise dg.Failure(
            description=f"{len(result.failures)} Stripe write(s) failed; the others were sent. "
                        "Retry the step to resend only the failed ones.",
            metadata={**metadata, "failures": table(pd.DataFrame(result.failures))},
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
