"""Reverse-ETL syncs to Stripe customers: one asset (and optional schedule) per sync file, generated."""

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from giftflow.adapters.config_files import BrokenSync, scan_folder
from giftflow.adapters.sync_sources import describe_source, read_source
from giftflow.domain.sync_plan import describe_mapping
from giftflow.domain.sync_spec import SyncSpec, SyncSpecError
from giftflow.orchestration.errors import failures_named
from giftflow.orchestration.metadata import table
from giftflow.orchestration.partitions import daily
from giftflow.orchestration.resources import StoreResource, StripeResource
from giftflow.services.sync_runner import REPORT_COUNTS, SyncResult, run_sync
from giftflow.settings import Settings

GROUP = "reverse_etl"
TABLE_ROWS = 100


def _rejected_table(result: SyncResult) -> dg.MetadataValue:
    rows = (result.rejections + result.failures)[:TABLE_ROWS]
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord({k: str(r.get(k) or "") for k in ("row_key", "customer_id", "stage", "reason")}) for r in rows
        ],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in ("row_key", "customer_id", "stage", "reason")]),
    )


def _changes_table(plan: pd.DataFrame) -> dg.MetadataValue:
    """The first rows that will be (or were) written: what each changes."""
    return table(plan.loc[plan["action"].isin(["create", "update"]), ["row_key", "customer_id", "action", "changed"]])


def _description(spec: SyncSpec) -> str:
    head = (spec.description + "\n\n") if spec.description else ""
    return (
        f"{head}Reverse ETL: {describe_source(spec)} → Stripe customers; mode `{spec.mode}` by "
        f"`{spec.identifier}`, empty values: `{spec.empty_values}`. Rows are validated, diffed against the "
        f"customer mirror and only changed fields are written, each through giftflow's ledger.\n\n"
        f"{describe_mapping(spec)}"
    )


def build_sync_asset(spec: SyncSpec, base: Path) -> dg.AssetsDefinition:
    """The asset that runs one sync file."""
    partitions = daily if spec.partitions == "daily" else None

    @failures_named
    def body(
        context: dg.AssetExecutionContext,
        stripe_api: StripeResource,
        store: StoreResource,
        settings: dg.ResourceParam[Settings],
        frame: pd.DataFrame | None,
    ) -> dg.MaterializeResult:
        key = context.partition_key if partitions else None
        stripe_client, db = stripe_api.get_client(), store.get_client()
        try:
            if frame is None:
                window = context.partition_time_window if partitions else None
                frame = read_source(
                    spec,
                    base,
                    store_engine=db.engine,
                    partition_key=key,
                    window=(window.start, window.end) if window else None,
                )
            result = run_sync(
                spec,
                frame,
                stripe_client,
                db,
                dry_run=settings.dry_run,
                run_id=context.run_id,
                partition=key,
                mirror_max_age_s=settings.customer_mirror_max_age_s,
                log=context.log,
            )
        except SyncSpecError as exc:  # the message is the whole story (file:line: problem): no traceback
            raise dg.Failure(description=str(exc)) from None
        metadata: dict[str, Any] = {
            **{k: result.counts.get(k, 0) for k in REPORT_COUNTS},
            **{k: v for k, v in result.counts.items() if k not in REPORT_COUNTS},
            "dry_run": settings.dry_run,
            "mirror_api_calls": result.api_calls,
            "diff_seconds": round(result.timings["diff_s"], 3),
            "rejected_rows": _rejected_table(result),
            "changes": _changes_table(result.plan),
        }
        if spec.mapping.promotion_code is not None:  # the codes customers were given, to pass on to them
            metadata["promotion_codes"] = table(
                pd.DataFrame(
                    result.promotion_codes,
                    columns=["row_key", "customer_id", "coupon", "code", "promotion_code", "max_redemptions"],
                ),
                rows=TABLE_ROWS,
            )
        if not result.ok:
            raise dg.Failure(
                description=f"{len(result.failures)} Stripe write(s) failed; the others were sent. "
                "Retry the run to resend only the failed ones.",
                metadata=metadata,
            )
        return dg.MaterializeResult(metadata=metadata)

    common: dict[str, Any] = dict(
        name=spec.asset_name,
        group_name=GROUP,
        kinds={"stripe"},
        description=_description(spec),
        partitions_def=partitions,
        pool="stripe_customer_writes",
    )
    if spec.source.kind == "asset" and spec.source.asset is not None:

        @dg.asset(**common, ins={"source_frame": dg.AssetIn(key=dg.AssetKey.from_user_string(spec.source.asset))})
        def sync_from_asset(
            context: dg.AssetExecutionContext,
            source_frame: pd.DataFrame,
            stripe_api: StripeResource,
            store: StoreResource,
            settings: dg.ResourceParam[Settings],
        ) -> dg.MaterializeResult:
            return body(context, stripe_api, store, settings, source_frame)

        return sync_from_asset

    @dg.asset(**common)
    def sync_from_source(
        context: dg.AssetExecutionContext,
        stripe_api: StripeResource,
        store: StoreResource,
        settings: dg.ResourceParam[Settings],
    ) -> dg.MaterializeResult:
        return body(context, stripe_api, store, settings, None)

    return sync_from_source


def build_broken_sync_asset(broken: BrokenSync) -> dg.AssetsDefinition:
    """A sync file that does not load: an asset that shows the error and fails with it at once, so the rest of
    the code location (the gift-card sync, the workflows, the other syncs) keeps loading."""

    @dg.asset(
        name=broken.asset_name,
        group_name=GROUP,
        kinds={"stripe"},
        description=f"**This sync file does not load; nothing is synced.** Fix `{broken.path.name}`:\n\n"
        f"```\n{broken.error}\n```",
    )
    def broken_sync() -> None:
        raise dg.Failure(description=broken.error)

    return broken_sync


def _daily_schedule(job, name: str, cron: str) -> dg.ScheduleDefinition:
    """A daily-partitioned sync's schedule: at each tick of the file's cron (UTC), the run of the last whole day
    before the tick. (Dagster's build_schedule_from_partitioned_job refuses a cron for a time-partitioned job, and
    raising here took the whole code location down.)"""

    @dg.schedule(name=name, cron_schedule=cron, job=job, execution_timezone="UTC")
    def sync_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        tick = context.scheduled_execution_time or datetime.now(timezone.utc)
        key = (tick.astimezone(timezone.utc) - timedelta(days=1)).date().isoformat()
        return dg.RunRequest(run_key=key, partition_key=key)

    return sync_schedule


def build_sync_definitions(folder: str | Path | None = None) -> dg.Definitions:
    """Every sync file of `folder` (default: giftflow/sync_definitions) as an asset, plus a job and a
    schedule for those that declare one; a file that does not load is an asset failing with its error."""
    loaded, broken = scan_folder(folder)
    assets, jobs, schedules = [build_broken_sync_asset(b) for b in broken], [], []
    for spec, base in loaded:
        asset = build_sync_asset(spec, base)
        assets.append(asset)
        if spec.schedule:
            job = dg.define_asset_job(f"{spec.asset_name}_job", selection=[asset.key], partitions_def=asset.partitions_def)
            jobs.append(job)
            if asset.partitions_def is not None:
                schedules.append(_daily_schedule(job, f"{spec.asset_name}_schedule", spec.schedule))
            else:
                schedules.append(
                    dg.ScheduleDefinition(name=f"{spec.asset_name}_schedule", job=job, cron_schedule=spec.schedule)
                )
    return dg.Definitions(assets=assets, jobs=jobs, schedules=schedules)
