"""One sync run: refresh the customer mirror, plan (pure), write through the one customer writer, keep
the report. Called by the generated Dagster assets, the demo and the bench."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from giftflow.adapters.store import GiftflowStore
from giftflow.adapters.stripe import StripeClient
from giftflow.adapters.sync_sources import check_columns
from giftflow.domain.sync_plan import current_frame, fields_of, plan_sync, wanted_frame
from giftflow.domain.sync_spec import SyncSpec
from giftflow.services.customer_writer import ApplyReport, apply_sync_plan

REPORT_COUNTS = ("read", "created", "updated", "unchanged", "rejected", "failed")


@dataclass
class SyncResult:
    counts: dict[str, int]
    rejections: list[dict]
    failures: list[dict]
    plan: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    api_calls: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


def refresh_mirror(spec: SyncSpec, stripe_api: StripeClient, store: GiftflowStore, max_age_s: int = 0) -> int:
    """Bring the full customer mirror up to date (reused when younger than `max_age_s`); the calls it took."""
    with_coupons = spec.mapping.coupon is not None
    state_key = "customer_objects_refreshed_at" + (":coupons" if with_coupons else "")
    refreshed = store.get_state(state_key)
    if refreshed and (datetime.now(timezone.utc) - datetime.fromisoformat(refreshed)).total_seconds() < max_age_s:
        return 0
    rows, calls = [], 0
    for page, calls in stripe_api.iter_customer_objects(with_tax_ids=spec.mapping.tax_id is not None):
        rows += page
    coupons: dict[str, list[str | None]] = defaultdict(list)
    if with_coupons:
        codes, more = stripe_api.list_promotion_codes(active=True)
        calls += more
        for code in codes:
            if code.get("customer"):
                coupons[code["customer"]].append((code.get("promotion") or {}).get("coupon"))
    for row in rows:
        listed = (row.pop("tax_ids", None) or {}).get("data", [])
        row["_tax_ids"] = [f"{t['type']}:{t['value']}" for t in listed]
        row["_coupons"] = coupons.get(row["id"], [])
    store.replace_customer_objects(rows, refreshed_key=state_key)
    return calls


def run_sync(spec: SyncSpec, frame: pd.DataFrame, stripe_api: StripeClient, store: GiftflowStore, *,
             dry_run: bool, run_id: str, partition: str | None = None, mirror_max_age_s: int = 0,
             log: logging.Logger | None = None) -> SyncResult:
    """Sync `frame` (the source rows) to Stripe and store the run's report."""
    check_columns(spec, frame)  # before anything is fetched, and with a message naming the sync file's line
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    calls = refresh_mirror(spec, stripe_api, store, mirror_max_age_s)
    mirror = store.load_customer_objects()
    t1 = time.perf_counter()
    wanted, invalid = wanted_frame(frame, spec)
    plan = plan_sync(spec, wanted, invalid, current_frame(mirror, fields_of(wanted)), store.sync_ids(spec.name))
    t2 = time.perf_counter()
    report: ApplyReport = apply_sync_plan(plan, stripe_api, store, spec=spec, dry_run=dry_run,
                                          partition=partition, run_id=run_id, log=log)
    t3 = time.perf_counter()
    counts = keep_report(spec, store, report, read=len(frame), run_id=run_id, partition=partition, dry_run=dry_run,
                         started_at=started)
    return SyncResult(counts, report.rejections, report.failures, plan,
                      {"mirror_s": t1 - t0, "diff_s": t2 - t1, "write_s": t3 - t2}, calls)


def keep_report(spec: SyncSpec, store: GiftflowStore, report: ApplyReport, *, read: int, run_id: str,
                partition: str | None, dry_run: bool, started_at: datetime, **extra: int) -> dict[str, int]:
    """Store a run's report (every count, zeros included, and the refused and failed rows); its counts."""
    counts = {"read": read, **dict.fromkeys(REPORT_COUNTS[1:], 0), **extra, **report.counts}
    store.record_sync_run(spec.name, run_id, partition=partition, status="failed" if report.failures else "success",
                          dry_run=dry_run, counts=counts, rejections=report.rejections + report.failures,
                          started_at=started_at)
    return counts


def format_report(sync: str, run: dict) -> str:
    """A stored sync-run report as text, for `giftflow syncs report`."""
    counts = run["counts"]
    lines = [f"sync {sync}  run {run['run_id']}" + (f"  partition {run['partition']}" if run["partition"] else "")
             + f"  {run['status']}" + ("  (dry run)" if run["dry_run"] else ""),
             f"finished {run['finished_at']:%Y-%m-%d %H:%M:%S} UTC", ""]
    shown = [*REPORT_COUNTS, *sorted(k for k in counts if k not in REPORT_COUNTS)]
    lines.append("".join(f"{k:>14}" for k in shown))
    lines.append("".join(f"{counts.get(k, 0):>14}" for k in shown))
    if run["rejections"]:
        lines += ["", f"{'row':<16}{'customer':<22}{'stage':<12}reason"]
        lines += [f"{str(r.get('row_key')):<16}{str(r.get('customer_id') or '-'):<22}{r.get('stage', ''):<12}"
                  f"{r.get('reason') or r.get('error')}" for r in run["rejections"]]
    return "\n".join(lines)
