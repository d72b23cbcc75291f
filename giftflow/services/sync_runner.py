"""Running a sync: plan (pure, against the one customer mirror), write through the one customer writer, keep
the report. One runner for the gift-card sync and every sync file; called by the Dagster assets and the
benches."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from giftflow.adapters.store import GiftflowStore
from giftflow.adapters.stripe import StripeClient
from giftflow.adapters.sync_sources import check_columns
from giftflow.domain.sync_plan import current_frame, fields_of, plan_sync, wanted_frame
from giftflow.domain.sync_spec import SyncSpec
from giftflow.services.customer_mirror import refresh_customer_mirror
from giftflow.services.customer_writer import ApplyReport, apply_sync_plan

SKIP = "skip"  # a row left out with its reason (the gift-card sync's unmatched, anonymous, multi_currency)

REPORT_COUNTS = ("read", "created", "updated", "unchanged", "rejected", "failed")


@dataclass
class SyncResult:
    counts: dict[str, int]
    rejections: list[dict]
    failures: list[dict]
    plan: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    api_calls: int = 0
    promotion_codes: list[dict] = field(default_factory=list)  # created by the run (mapping promotion_code)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class Planned:
    """A sync's plan: the engine's rows (create, update, none, reject) and any rows left out (skip, with the
    reason), and how many source rows it was made from."""

    plan: pd.DataFrame
    read: int
    left_out: int = 0


def run_planned(
    spec: SyncSpec,
    planner: Callable[[], Planned],
    stripe_api: StripeClient,
    store: GiftflowStore,
    *,
    dry_run: bool,
    run_id: str,
    partition: str | None = None,
    mirror_calls: int = 0,
    log: logging.Logger | None = None,
) -> SyncResult:
    """The one runner of every sync, the gift-card sync's and each sync file's: plan (by calling `planner` now,
    so a caller holding the write pool diffs against the mirror as it is now, not as it was when an earlier
    step planned), write through the one customer writer, keep the run's report."""
    started = datetime.now(timezone.utc)
    t1 = time.perf_counter()
    planned = planner()
    t2 = time.perf_counter()
    todo = planned.plan[planned.plan["action"] != SKIP] if planned.left_out else planned.plan
    report: ApplyReport = apply_sync_plan(
        todo, stripe_api, store, spec=spec, dry_run=dry_run, partition=partition, run_id=run_id, log=log
    )
    t3 = time.perf_counter()
    extra = {"left_out": planned.left_out} if planned.left_out or SKIP in set(planned.plan.get("action", [])) else {}
    counts = keep_report(
        spec,
        store,
        report,
        read=planned.read,
        run_id=run_id,
        partition=partition,
        dry_run=dry_run,
        started_at=started,
        **extra,
    )
    return SyncResult(
        counts,
        report.rejections,
        report.failures,
        planned.plan,
        {"diff_s": t2 - t1, "write_s": t3 - t2},
        mirror_calls,
        report.promotion_codes,
    )


def plan_frame_sync(spec: SyncSpec, frame: pd.DataFrame, store: GiftflowStore) -> Planned:
    """A sync file's plan: its source rows validated, matched and diffed against the whole mirror."""
    wanted, invalid = wanted_frame(frame, spec)
    mirror = store.load_customers()
    plan = plan_sync(spec, wanted, invalid, current_frame(mirror, fields_of(wanted)), store.sync_ids(spec.name))
    return Planned(plan, read=len(frame))


def run_sync(
    spec: SyncSpec,
    frame: pd.DataFrame,
    stripe_api: StripeClient,
    store: GiftflowStore,
    *,
    dry_run: bool,
    run_id: str,
    partition: str | None = None,
    mirror_max_age_s: int = 0,
    log: logging.Logger | None = None,
) -> SyncResult:
    """Sync `frame` (a sync file's source rows) to Stripe and store the run's report."""
    check_columns(spec, frame)  # before anything is fetched, and with a message naming the sync file's line
    t0 = time.perf_counter()
    calls = refresh_customer_mirror(
        stripe_api,
        store,
        with_tax_ids=spec.mapping.tax_id is not None,
        with_coupons=spec.mapping.promotion_code is not None,
        max_age_s=mirror_max_age_s,
    )
    mirror_s = time.perf_counter() - t0
    result = run_planned(
        spec,
        lambda: plan_frame_sync(spec, frame, store),
        stripe_api,
        store,
        dry_run=dry_run,
        run_id=run_id,
        partition=partition,
        mirror_calls=calls,
        log=log,
    )
    result.timings["mirror_s"] = mirror_s
    return result


def keep_report(
    spec: SyncSpec,
    store: GiftflowStore,
    report: ApplyReport,
    *,
    read: int,
    run_id: str,
    partition: str | None,
    dry_run: bool,
    started_at: datetime,
    **extra: int,
) -> dict[str, int]:
    """Store a run's report (every count, zeros included, and the refused and failed rows); its counts."""
    counts = {"read": read, **dict.fromkeys(REPORT_COUNTS[1:], 0), **extra, **report.counts}
    store.record_sync_run(
        spec.name,
        run_id,
        partition=partition,
        status="failed" if report.failures else "success",
        dry_run=dry_run,
        counts=counts,
        rejections=report.rejections + report.failures,
        started_at=started_at,
    )
    return counts


def format_report(sync: str, run: dict) -> str:
    """A stored sync-run report as text, for `giftflow syncs report`."""
    counts = run["counts"]
    lines = [
        f"sync {sync}  run {run['run_id']}"
        + (f"  partition {run['partition']}" if run["partition"] else "")
        + f"  {run['status']}"
        + ("  (dry run)" if run["dry_run"] else ""),
        f"finished {run['finished_at']:%Y-%m-%d %H:%M:%S} UTC",
        "",
    ]
    shown = [*REPORT_COUNTS, *sorted(k for k in counts if k not in REPORT_COUNTS)]
    lines.append("".join(f"{k:>14}" for k in shown))
    lines.append("".join(f"{counts.get(k, 0):>14}" for k in shown))
    if run["rejections"]:
        lines += ["", f"{'row':<16}{'customer':<22}{'stage':<12}reason"]
        lines += [
            f"{str(r.get('row_key')):<16}{str(r.get('customer_id') or '-'):<22}{r.get('stage', ''):<12}"
            f"{r.get('reason') or r.get('error')}"
            for r in run["rejections"]
        ]
    return "\n".join(lines)
