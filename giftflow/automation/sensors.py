"""Sensors: near-real-time runs from Cardivo and Stripe changes, and the daily late-data backfill.

Poll and push end in the same place: each sensor reads the webhook deliveries the receivers stored, then
polls the API from its cursor, and requests runs only for changes it has not requested before.
"""

import hashlib
import json
import os
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import dagster as dg

from giftflow.assets.giftcard import giftcard_sync
from giftflow.assets.workflows import stripe_workflows
from giftflow.core.redemptions import validate_redemptions
from giftflow.partitions import daily
from giftflow.resources.cardivo import CardivoResource
from giftflow.resources.store import GiftflowStore
from giftflow.resources.stripe import StripeResource

INTERVAL_S = int(os.environ.get("GIFTFLOW_SENSOR_INTERVAL_S", "15"))
# Stay well inside Dagster's 60 s sensor budget; the rest is picked up on the next tick.
TICK_BUDGET_S = 20.0
MAX_PAGES_PER_TICK = 20
STRIPE_EVENT_RETENTION = timedelta(days=30)
WORKFLOW_EVENTS = ("payment_intent.succeeded", "radar.early_fraud_warning.created")
CUSTOMER_EVENTS = ("customer.created", "customer.updated", "customer.deleted")


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _day_keys(days: set[str]) -> list[str]:
    """Days that are partitions (the partition set starts in 2024 and ends tomorrow)."""
    valid = set(daily.get_partition_keys())
    return sorted(d for d in days if d in valid)


def _run_key(prefix: str, day: str, members: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest()[:16]
    return f"{prefix}:{day}:{digest}"


@dg.sensor(job=giftcard_sync, minimum_interval_seconds=INTERVAL_S, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Requests giftcard_sync for every day whose Cardivo redemptions changed (new, or voided "
                       "later), from webhook deliveries and from polling `updated_after`.")
def cardivo_redemptions_sensor(context: dg.SensorEvaluationContext, cardivo: CardivoResource,
                               store: GiftflowStore) -> dg.SensorResult:
    state = json.loads(context.cursor) if context.cursor else {}
    started = time.monotonic()
    # First tick: start a day back; older days are the daily backfill's job.
    after = _utc(state["updated_after"]) if "updated_after" in state else datetime.now(timezone.utc) - timedelta(days=1)
    edge = _utc(state["pending_edge"]) if state.get("pending_edge") else after

    pushed = store.pending_webhook_events("cardivo")
    records = [e["payload"].get("data") for e in pushed]
    page_cursor, pages = state.get("page_cursor"), 0
    while pages < MAX_PAGES_PER_TICK and time.monotonic() - started < TICK_BUDGET_S:
        # updated_after is strict and in whole seconds: ask from a second earlier; the store drops repeats.
        fetched = cardivo.list_redemptions(updated_after=after - timedelta(seconds=1), max_pages=1,
                                           cursor=page_cursor)
        pages += 1
        records += fetched.records
        page_cursor = fetched.next_cursor
        if not page_cursor:
            break

    valid, bad = validate_redemptions(records)
    if bad:
        store.quarantine("cardivo", bad, None, None)
    # A change is new unless a run already stored this exact version, or the last tick requested it at the
    # edge second that polling asks for again. The sensor itself stores nothing: if this tick dies before
    # Dagster commits its requests, the cursor has not moved and the next tick sees the changes anew.
    versions = [f"{rid}@{ts.isoformat()}" for rid, ts in zip(valid["redemption_id"], valid["updated_at"])]
    seen = set(state.get("seen_at_edge", []))
    stored = store.redemption_versions(list(valid["redemption_id"]))
    fresh = [stored.get(rid) != ts and version not in seen
             for rid, ts, version in zip(valid["redemption_id"], valid["updated_at"], versions)]
    by_day: dict[str, list[str]] = defaultdict(list)
    for redeemed, version, new in zip(valid["redeemed_at"], versions, fresh):
        if new:
            by_day[redeemed.strftime("%Y-%m-%d")].append(version)
    days = _day_keys(set(by_day))
    requests = [dg.RunRequest(partition_key=day, run_key=_run_key("cardivo", day, by_day[day]),
                              tags={"giftflow/trigger": "cardivo_redemptions_sensor",
                                    "giftflow/changes": str(len(by_day[day]))}) for day in days]
    store.mark_webhook_events_processed("cardivo", [e["event_id"] for e in pushed])

    new_edge = max([edge, *valid["updated_at"]]) if len(valid) else edge
    # Polling asks again from a second before the edge: remember what this tick saw in that second.
    at_edge = {v for v, ts in zip(versions, valid["updated_at"]) if ts > new_edge - timedelta(seconds=1)} | \
        (seen if new_edge == edge else set())
    # Mid-paging the filters must stay as they were; the cursor moves past the edge only once paging is done.
    new_state = ({"updated_after": after.isoformat(), "page_cursor": page_cursor, "pending_edge": new_edge.isoformat()}
                 if page_cursor else {"updated_after": new_edge.isoformat()})
    new_state["seen_at_edge"] = sorted(at_edge)
    context.log.info(f"{len(records)} records in {pages} page(s), {sum(fresh)} changes, runs for {days or 'no day'}")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(new_state),
                           skip_reason=None if requests else dg.SkipReason("no new Cardivo changes"))


@dg.sensor(jobs=[stripe_workflows], minimum_interval_seconds=INTERVAL_S,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Polls Stripe events (and reads pushed ones): requests stripe_workflows for the days of "
                       "succeeded payments and early fraud warnings, and keeps the customer mirror fresh from "
                       "customer.* events so matching need not relist every customer.")
def stripe_events_sensor(context: dg.SensorEvaluationContext, stripe_api: StripeResource,
                         store: GiftflowStore) -> dg.SensorResult:
    state = json.loads(context.cursor) if context.cursor else {}
    now = datetime.now(timezone.utc)
    since = int(state.get("created_after", (now - timedelta(hours=1)).timestamp()))
    if now - datetime.fromtimestamp(since, timezone.utc) > STRIPE_EVENT_RETENTION:
        # Stripe keeps events 30 days: anything older is gone, so relist instead and say so.
        context.log.warning("Stripe event cursor is older than Stripe's 30-day retention: falling back to a full "
                            "relisting of customers on the next sync; days in the gap are left to backfills")
        store.set_state("customers_refreshed_at", "")
        return dg.SensorResult(cursor=json.dumps({"created_after": int(now.timestamp()), "fell_back": True}),
                               skip_reason=dg.SkipReason("event cursor past retention: fell back to relisting"))

    # After a long stop the events since the cursor may not fit in one tick. Stripe lists newest first, so a
    # partial listing would leave a gap: list a closed window [since, since + span) whole, or halve it.
    span = state.get("span")
    window_end = since + span if span and since + span < now.timestamp() - 1 else None
    polled = _list_events(stripe_api, since, window_end, whole=bool(span and span <= 1))
    if polled is None:
        span = max(1, int((window_end or now.timestamp()) - since) // 2)
        context.log.info(f"catching up: the events since {datetime.fromtimestamp(since, timezone.utc)} do not fit "
                         f"in one tick; next tick lists {span} s of them")
        return dg.SensorResult(cursor=json.dumps({**state, "created_after": since, "span": span}),
                               skip_reason=dg.SkipReason(f"catching up on Stripe events, {span} s per tick"))

    pushed = store.pending_webhook_events("stripe")
    events = [e["payload"] for e in pushed]
    seen = set(state.get("seen_at_edge", []))
    events += [e for e in polled if e["id"] not in seen]
    events = list({e["id"]: e for e in sorted(events, key=lambda e: (e["created"], e["id"]))}.values())

    customers = [e for e in events if e["type"] in CUSTOMER_EVENTS]
    store.upsert_customers([e["data"]["object"] for e in customers if e["type"] != "customer.deleted"])
    store.delete_customers([e["data"]["object"]["id"] for e in customers if e["type"] == "customer.deleted"])
    if store.customers_refreshed_at():
        store.set_state("customers_events_synced_at", now.isoformat())

    by_day: dict[str, list[str]] = defaultdict(list)
    for e in events:
        if e["type"] in WORKFLOW_EVENTS:
            created = datetime.fromtimestamp(e["data"]["object"]["created"], timezone.utc)
            by_day[created.strftime("%Y-%m-%d")].append(e["id"])
    days = _day_keys(set(by_day))
    requests = [dg.RunRequest(job_name="stripe_workflows", partition_key=day,
                              run_key=_run_key("stripe", day, by_day[day]),
                              tags={"giftflow/trigger": "stripe_events_sensor"}) for day in days]
    store.mark_webhook_events_processed("stripe", [e["event_id"] for e in pushed])

    if window_end is not None:  # a closed window, listed whole: the next one starts at its end, twice as long
        cursor = {"created_after": window_end, "span": span * 2}
    else:
        edge = max([since, *(e["created"] for e in polled)])
        # `created` is in whole seconds: keep asking from the edge second and drop the ids already handled there.
        at_edge = {e["id"] for e in polled if e["created"] == edge} | (seen if edge == since else set())
        cursor = {"created_after": edge, "seen_at_edge": sorted(at_edge)}
    context.log.info(f"{len(events)} events ({len(pushed)} pushed), {len(customers)} customer changes, "
                     f"runs for {days or 'no day'}")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor),
                           skip_reason=None if requests else dg.SkipReason("no new Stripe events for the workflows"))


def _list_events(stripe_api: StripeResource, since: int, until: int | None, whole: bool) -> list[dict] | None:
    """The events created in [since, until) (until None: up to now), or None when they take more than a
    tick's pages or time; `whole` lists them regardless (one second cannot be split further)."""
    created = {"gte": since, **({"lt": until} if until is not None else {})}
    started, polled = time.monotonic(), []
    for page, calls in stripe_api.iter_pages("events", created=created, types=[*WORKFLOW_EVENTS, *CUSTOMER_EVENTS]):
        polled += page
        if not whole and (calls > MAX_PAGES_PER_TICK or time.monotonic() - started > TICK_BUDGET_S):
            return None
    return polled


RERUN_DAYS = int(os.environ.get("GIFTFLOW_RERUN_DAYS", "7"))
BACKFILL_HOUR_UTC = int(os.environ.get("GIFTFLOW_BACKFILL_HOUR_UTC", "1"))
PARTITIONED_GROUPS = ("giftcard_sync", "stripe_workflows")


@dg.sensor(asset_selection=dg.AssetSelection.groups(*PARTITIONED_GROUPS), minimum_interval_seconds=300,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description=f"Daily at {BACKFILL_HOUR_UTC:02d}:00 UTC: one backfill that runs yesterday and re-runs the "
                       f"{RERUN_DAYS} days before it for every partitioned job, to catch late voids and events.")
def late_data_backfill(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    now = datetime.now(timezone.utc)
    today = now.date().isoformat()
    if context.cursor == today or now.hour < BACKFILL_HOUR_UTC:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"next backfill after {BACKFILL_HOUR_UTC:02d}:00 UTC"))
    return dg.SensorResult(run_requests=[backfill_request(context, now.date(), RERUN_DAYS)], cursor=today)


def backfill_request(context: dg.SensorEvaluationContext, today, rerun_days: int) -> dg.RunRequest:
    """One backfill (visible under Backfills in the UI) of yesterday and the `rerun_days` days before it."""
    # A sensor with an asset selection may launch a backfill from an asset-graph subset: Dagster's own
    # automation does the same. Pinned dagster keeps this internal constructor stable for us.
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.definitions.events import AssetKeyPartitionKey

    graph = context.repository_def.asset_graph
    days = [(today - timedelta(days=n)).isoformat() for n in range(1, rerun_days + 2)]
    keys = dg.AssetSelection.groups(*PARTITIONED_GROUPS).resolve(graph)
    subset = AssetGraphSubset.from_asset_partition_set({AssetKeyPartitionKey(k, d) for k in keys for d in days}, graph)
    return dg.RunRequest.for_asset_graph_subset(subset, tags={"giftflow/trigger": "late_data_backfill"})
