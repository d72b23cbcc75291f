"""The gift-card sync: Cardivo redemptions -> reconcile with Stripe customers -> Stripe writes."""

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
from giftflow.services.giftcard_sync import plan_giftcard_day, refresh_mirror_for_range
from giftflow.services.sync_runner import run_planned
from giftflow.settings import Settings

GROUP = "giftcard_sync"
# A backfill of any date range is one run: Cardivo read once for the range, the range planned as one (every
# customer touched by any of its redemptions, from all their redemptions), each customer written once with its
# final values; Dagster still records a materialization for every day of the range. A sensor's run of one day
# is a range of one day.
BACKFILL = dg.BackfillPolicy.single_run()


def partition_label(context: dg.AssetExecutionContext) -> str:
    """The run's day, or `first...last` for a range: how the ledger, quarantine and reports name it."""
    keys = context.partition_key_range
    return keys.start if keys.start == keys.end else f"{keys.start}...{keys.end}"


@dg.asset(
    partitions_def=daily,
    group_name=GROUP,
    kinds={"cardivo", "python"},
    backfill_policy=BACKFILL,
    description="Cardivo redemptions of the day (of the whole range in a backfill: one fetch), validated against "
    "the API contract; bad records are quarantined with their reason and the rest are upserted into "
    "giftflow's store.",
)
@failures_named
def cardivo_redemptions(
    context: dg.AssetExecutionContext, cardivo: CardivoResource, store: StoreResource
) -> dg.MaterializeResult:
    db, window, days = store.get_client(), context.partition_time_window, len(context.partition_keys)
    # One fetch for the whole range, with a day's bounds (deadline, pages) for each of its days.
    client = cardivo.get_client()
    cardivo_api = client.model_copy(
        update={"fetch_deadline_s": client.fetch_deadline_s * days, "max_pages_total": client.max_pages_total * days}
    )
    fetched = cardivo_api.list_redemptions(redeemed_after=window.start, redeemed_before=window.end)
    valid, bad = validate_redemptions(fetched.records)
    outside = (valid["redeemed_at"] < window.start) | (valid["redeemed_at"] >= window.end)
    bad += [
        {
            "record_key": r,
            "reason": f"redeemed_at outside the requested {'range' if days > 1 else 'day'}",
            "payload": {"id": r},
        }
        for r in valid.loc[outside, "redemption_id"]
    ]
    valid = valid[~outside]
    db.upsert_redemptions(valid)
    db.quarantine("cardivo", bad, partition_label(context), context.run_id)
    for b in bad:
        context.log.warning("quarantined %s: %s", b["record_key"], b["reason"])
    preview = valid[["redemption_id", "status", "amount", "currency", "card_last4", "email_norm", "redeemed_at"]]
    return dg.MaterializeResult(
        metadata={
            "days": days,
            "fetched": len(fetched.records),
            "valid": len(valid),
            "quarantined": len(bad),
            "api_calls": fetched.calls,
            "preview": table(preview),
            "quarantine_reasons": table(pd.DataFrame(bad, columns=["record_key", "reason"])),
        }
    )


@dg.asset(
    partitions_def=daily,
    group_name=GROUP,
    kinds={"stripe"},
    backfill_policy=BACKFILL,
    deps=[cardivo_redemptions],
    description="giftflow's one mirror of Stripe customers, shared with every sync. Relisted whole only when it "
    "was never filled or its last listing is a day old; otherwise a run looks up only the customers "
    "its redemptions can match and the mirror lacks (one e-mail list or retrieve each), and nothing "
    "while the Stripe events sensor keeps it current. So a day's Stripe reads grow with the day, not "
    "with the account.",
)
@failures_named
def stripe_customers(
    context: dg.AssetExecutionContext, stripe_api: StripeResource, store: StoreResource, settings: dg.ResourceParam[Settings]
) -> dg.MaterializeResult:
    db, window = store.get_client(), context.partition_time_window
    done = refresh_mirror_for_range(
        stripe_api.get_client(), db, window.start, window.end, max_age_s=settings.customer_mirror_max_age_s
    )
    age = "never" if done.age_s is None else f"{done.age_s:.0f} s ago"
    metadata: dict[str, Any] = {
        "customers": db.count_customers(),
        "api_calls": done.calls,
        "reused_mirror": done.how != "relist",
        "refresh": done.how,
    }
    if done.looked_up:
        metadata |= {
            "looked_up_emails": done.looked_up.emails,
            "looked_up_ids": done.looked_up.ids,
            "found": done.looked_up.found,
        }
    context.log.info(f"customer mirror (relisted {age}): {done.how}, {done.calls} Stripe call(s)")
    return dg.MaterializeResult(metadata=metadata)


def _require_fetched(context: dg.AssetExecutionContext) -> None:
    """A day whose redemptions were never fetched would plan 0 customers and look done: fail and say so."""
    days = context.partition_keys
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=cardivo_redemptions.key, asset_partitions=days), limit=len(days)
    ).records
    missing = sorted(set(days) - {r.partition_key for r in records})
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise dg.Failure(
            description=f"cardivo_redemptions has not been materialized for {shown}, so there is nothing to plan "
            f"(the plan would show 0 customers). Materialize cardivo_redemptions (and "
            f"stripe_customers) for those days first, or run the whole giftcard_sync job for them.",
            metadata={"missing_upstream": "cardivo_redemptions", "partitions": ", ".join(missing)},
            allow_retries=False,
        )


def _planner(window: dg.TimeWindow, db: GiftflowStore, settings: Settings):
    spec = giftcard_sync_spec(settings.sync_mode)
    return spec, lambda: plan_giftcard_day(db, window.start, window.end, spec)


@dg.asset(
    partitions_def=daily,
    group_name=GROUP,
    kinds={"pandas"},
    deps=[cardivo_redemptions, stripe_customers],
    backfill_policy=BACKFILL,
    description="Per customer touched by the day's redemptions: the gift-card metadata Stripe should "
    "hold (from all days seen), the keys that differ from what it holds, and the action: create, "
    "update, none, or skip with a reason (unmatched, anonymous, multi_currency). The diff is the "
    "sync engine's, configured by giftflow/domain/giftcard_sync.yaml.",
)
def giftcard_customer_plan(
    context: dg.AssetExecutionContext, store: StoreResource, settings: dg.ResourceParam[Settings]
) -> dg.MaterializeResult:
    _require_fetched(context)
    _, planner = _planner(context.partition_time_window, store.get_client(), settings)
    plan = planner().plan
    counts = summarize(plan)
    # Nothing stored through an IO manager: a range's plan is one frame for many partitions, which Dagster's
    # IO managers cannot persist, and the write step plans again inside the write pool anyway.
    return dg.MaterializeResult(
        metadata={
            "customers": len(plan),
            "mode": settings.sync_mode,
            **counts,
            "plan": table(plan_table(plan), descriptions=PLAN_TABLE_COLUMNS),
            # The rows finance must explain, listed whole even when the writes fill the plan table.
            "left_out": table(left_out_table(plan), rows=LEFT_OUT_SHOWN, descriptions=PLAN_TABLE_COLUMNS),
        }
    )


LEFT_OUT_SHOWN = 200


def left_out_table(plan: pd.DataFrame) -> pd.DataFrame:
    """The customers the plan leaves out (action skip): who, and why."""
    return plan.loc[plan["action"] == "skip", ["customer_id", "email", "reason", "note"]]


# The plan as the UI shows it: short column names (under "Show schema", the Stripe metadata key each stands for),
# so the table fits beside the metadata keys instead of running off the page.
PLAN_TABLE_COLUMNS = {
    "customer_id": "Stripe customer (empty: none matched)",
    "email": "the redemptions' e-mail",
    "action": "create, update, none (Stripe already holds it) or skip",
    "reason": "why skipped: unmatched, anonymous, multi_currency",
    "note": "more on the reason (e.g. the currencies)",
    "redeemed_total": "giftcard_redeemed_total: completed redemptions, minor units",
    "currency": "giftcard_currency",
    "redemptions": "giftcard_redemptions: number of completed redemptions",
    "changed": "the giftcard_* metadata keys (and create fields) this run writes",
}


def plan_table(plan: pd.DataFrame) -> pd.DataFrame:
    """The rows that will be written first (create, update), then the rest, in PLAN_TABLE_COLUMNS: counts as
    integers, the changed keys without their common `metadata.giftcard_` prefix, comma-separated."""
    shown = pd.DataFrame(
        {
            "customer_id": plan["customer_id"],
            "email": plan["email"],
            "action": plan["action"],
            "reason": plan["reason"],
            "note": plan["note"],
            "redeemed_total": pd.to_numeric(plan["giftcard_redeemed_total"], errors="coerce").astype("Int64"),
            "currency": plan["giftcard_currency"],
            "redemptions": pd.to_numeric(plan["giftcard_redemptions"], errors="coerce").astype("Int64"),
            "changed": plan["changed_keys"]
            .fillna("")
            .astype(str)
            .map(lambda keys: ", ".join(k.removeprefix("metadata.").removeprefix("giftcard_") for k in keys.split())),
        }
    )
    return shown.sort_values("action", key=lambda a: ~a.isin(["create", "update"]), kind="stable")


@dg.asset(
    partitions_def=daily,
    group_name=GROUP,
    kinds={"stripe"},
    pool="stripe_customer_writes",
    deps=[giftcard_customer_plan],
    backfill_policy=BACKFILL,
    description="Carries out the plan at Stripe through the one sync runner and customer writer that every sync "
    "file uses: one idempotent write per changed customer, each in giftflow's ledger, planned again "
    "at write time (one writer at a time across runs). A customer Stripe refuses (4xx) is reported "
    "as rejected with Stripe's message; any other failed write fails the step after the others went "
    "out, and a retry resends only what failed. Each run's report is kept (`giftflow syncs report "
    "giftcard`). GIFTFLOW_DRY_RUN=true writes nothing.",
)
@failures_named
def giftcard_customer_updates(
    context: dg.AssetExecutionContext, stripe_api: StripeResource, store: StoreResource, settings: dg.ResourceParam[Settings]
) -> dg.MaterializeResult:
    stripe_client, db = stripe_api.get_client(), store.get_client()
    # Runs of other days may have written the same customers since this run planned (the pool lets one
    # writer in at a time): the runner plans again against the mirror as it is now.
    spec, planner = _planner(context.partition_time_window, db, settings)
    result = run_planned(
        spec,
        planner,
        stripe_client,
        db,
        dry_run=settings.dry_run,
        run_id=context.run_id,
        partition=partition_label(context),
        log=context.log,
    )
    metadata: dict[str, Any] = {
        "dry_run": settings.dry_run,
        "sent": result.counts["created"] + result.counts["updated"],
        **result.counts,
    }
    if result.rejections:
        metadata["rejected_rows"] = table(pd.DataFrame(result.rejections))
    if result.failures:
        raise dg.Failure(
            description=f"{len(result.failures)} Stripe write(s) failed; the others were sent. "
            "Retry the step to resend only the failed ones.",
            metadata={**metadata, "failures": table(pd.DataFrame(result.failures))},
        )
    return dg.MaterializeResult(metadata=metadata)


giftcard_sync = dg.define_asset_job(
    "giftcard_sync",
    selection=dg.AssetSelection.groups(GROUP),
    partitions_def=daily,
    tags={"giftflow/job": "giftcard_sync"},  # dagster.yaml limits concurrent runs per job by this tag
    # The steps are short and I/O-bound: one process per run starts in a second instead of one per step.
    executor_def=dg.in_process_executor,
    description="Cardivo redemptions of a UTC day -> Stripe customer gift-card metadata.",
)
