"""Sensors: near-real-time runs from Cardivo and Stripe changes, and the daily late-data backfill.

Poll and push end in the same place: each sensor reads the webhook deliveries the receivers stored, then
polls the API from its cursor, and requests runs only for changes it has not requested before.
"""

import hashlib
import json
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import dagster as dg

from giftflow.adapters.cardivo import CardivoError
from giftflow.adapters.stripe import StripeClient
from giftflow.domain.redemptions import validate_redemptions
from giftflow.orchestration.dagster_internals import backfill_run_request
from giftflow.orchestration.giftcard import giftcard_sync
from giftflow.orchestration.partitions import daily
from giftflow.orchestration.resources import (
    CardivoResource,
    StoreResource,
    StripeResource,
)
from giftflow.orchestration.workflows import stripe_workflows

# Defaults of GIFTFLOW_SENSOR_INTERVAL_S, GIFTFLOW_CARDIVO_LOOKBACK_S, GIFTFLOW_RERUN_DAYS and
# GIFTFLOW_BACKFILL_HOUR_UTC: the Definitions build the sensors with Settings' values (`build_sensors`).
INTERVAL_S = 15
# The pushed-deliveries sensor reads only giftflow's own store (one indexed query, no API call), so it can tick as
# often as dagster-daemon evaluates sensors at all (its loop runs every 5 s at most).
WEBHOOK_INTERVAL_S = 2
# Stay well inside Dagster's 60 s sensor budget; the rest is picked up on the next tick.
TICK_BUDGET_S = 20.0
MAX_PAGES_PER_TICK = 20
MAX_PAGES_PER_WINDOW = 2000  # 200,000 changes behind: far past any outage; a paging loop, not a backlog
STRIPE_EVENT_RETENTION = timedelta(days=30)
EVENT_LOOKBACK_S = 60
WORKFLOW_EVENTS = ("payment_intent.succeeded", "radar.early_fraud_warning.created")
CUSTOMER_EVENTS = ("customer.created", "customer.updated", "customer.deleted")


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"time without a zone: {text!r}")
    return value


def _day_keys(days: set[str]) -> list[str]:
    """Days that are partitions (the partition set starts in 2024 and ends tomorrow)."""
    valid = set(daily.get_partition_keys())
    return sorted(d for d in days if d in valid)


def _run_key(prefix: str, day: str, members: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest()[:16]
    return f"{prefix}:{day}:{digest}"


# Cardivo's list may show a change a little after its `updated_at` (a commit lands late, a clock lags): every
# poll asks again for the last LOOKBACK_S before the edge and drops the versions it already requested.
LOOKBACK_S = 60
_WAITING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]


def _version(record) -> str:
    """A short fingerprint of one version of a record: `id@updated_at`, or the whole record where those are
    missing (a bad record is requested once, for its run to quarantine it, not on every tick)."""
    if isinstance(record, dict) and isinstance(record.get("id"), str) and isinstance(record.get("updated_at"), str):
        text = f"{record['id']}@{record['updated_at']}"
    else:
        text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _redeemed_day(record) -> str | None:
    try:
        return _utc(record["redeemed_at"]).astimezone(timezone.utc).strftime("%Y-%m-%d")
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


def _waiting_days(instance: dg.DagsterInstance) -> set[str]:
    """Days with a giftcard_sync run that has not started: it fetches Cardivo later, so it takes in any change
    seen now, and another run of that day would only repeat it."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="giftcard_sync", statuses=_WAITING), limit=1000)
    return {r.tags["dagster/partition"] for r in runs if "dagster/partition" in r.tags}


def build_cardivo_sensor(interval_s: int = INTERVAL_S, lookback_s: int = LOOKBACK_S) -> dg.SensorDefinition:
    @dg.sensor(
        job=giftcard_sync,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Requests giftcard_sync for every day whose Cardivo redemptions changed (new, or voided "
        "later), from webhook deliveries and from polling `updated_after`.",
    )
    def cardivo_redemptions_sensor(
        context: dg.SensorEvaluationContext, cardivo: CardivoResource, store: StoreResource
    ) -> dg.SensorResult:
        return _cardivo_tick(context, cardivo, store, lookback_s)

    return cardivo_redemptions_sensor


def build_cardivo_webhook_sensor(interval_s: int = WEBHOOK_INTERVAL_S, lookback_s: int = LOOKBACK_S) -> dg.SensorDefinition:
    @dg.sensor(
        job=giftcard_sync,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Requests giftcard_sync for the days of Cardivo webhook deliveries the receiver stored, "
        "within seconds; reads only giftflow's store (cardivo_redemptions_sensor polls the API).",
    )
    def cardivo_webhook_sensor(context: dg.SensorEvaluationContext, store: StoreResource) -> dg.SensorResult:
        return _cardivo_tick(context, None, store, lookback_s)

    return cardivo_webhook_sensor


def _taken_in_after_push(instance: dg.DagsterInstance, pushed_days: dict[str, dict[str, float]]) -> set[str]:
    """The pushed versions (day -> version -> receipt epoch) that a giftcard_sync run of their day started at or
    after their receipt has taken in (as `cardivo_webhook_sensor` requests one for each): it fetched Cardivo after
    the delivery, as a run requested on the delivery by this sensor would have."""
    taken: set[str] = set()
    for day, versions in pushed_days.items():
        runs = instance.get_run_records(
            filters=dg.RunsFilter(job_name="giftcard_sync", tags={"dagster/partition": day}), limit=20
        )
        starts = [r.start_time for r in runs if r.start_time is not None]
        if starts:
            taken |= {v for v, received in versions.items() if max(starts) >= received}
    return taken


def _cardivo_tick(
    context: dg.SensorEvaluationContext, cardivo: CardivoResource | None, store: StoreResource, lookback_s: int
) -> dg.SensorResult:
    """Every change Cardivo shows leads to a run of its day that starts after the change was seen: a run already
    running may have fetched before it, so only a run still queued counts as taking it in. A pushed change is
    also taken in by a run of its day that started after its delivery arrived (`cardivo_webhook_sensor` requests
    one within seconds), so polling the same change later requests no second run.

    Without `cardivo` this is `cardivo_webhook_sensor`: the pushed deliveries only, no call to Cardivo.

    The tick writes nothing: all it knows lives in its cursor (the edge, the versions requested in the last
    LOOKBACK_S, the receipt time of the last pushed delivery read), which Dagster stores with the tick's run
    requests. A tick that dies before that commit leaves the cursor where it was, and the next tick sees the
    same changes and requests the same runs (same run keys). Bad records are quarantined by their day's run.
    """
    db = store.get_client()
    state = json.loads(context.cursor) if context.cursor else {}
    if "edge" not in state:  # first tick, or a cursor of an older giftflow: start from its edge, paging anew
        state = {"edge": state.get("updated_after")}
    now = datetime.now(timezone.utc)
    started = time.monotonic()
    lookback = timedelta(seconds=lookback_s)
    # First tick: start a day back; older days are the daily backfill's job.
    edge = _utc(state["edge"]) if state["edge"] else now - timedelta(days=1)
    requested: dict[str, list] = state.get("requested", {})  # version -> [updated_at epoch, seen epoch]

    # Pushed deliveries are read again for LOOKBACK_S after their receipt, like polled changes.
    pushed_edge = _utc(state["pushed_edge"]) if state.get("pushed_edge") else now - lookback
    pushed = db.webhook_events_since("cardivo", pushed_edge - lookback)
    records = [e["payload"].get("data") if isinstance(e["payload"], dict) else None for e in pushed]
    receipts = {_version(r): e["received_at"].timestamp() for e, r in zip(pushed, records)}

    # Mid-paging the query must stay as it was; the edge moves only once the window is paged whole.
    page_cursor = state.get("page_cursor")
    query_from = _utc(state["query_from"]) if page_cursor else edge - lookback
    pages, polled, cursors = 0, [], set(state.get("cursors", []))
    poll = cardivo is not None
    cardivo_api = cardivo.get_client() if cardivo is not None else None
    while cardivo_api and pages < MAX_PAGES_PER_TICK and time.monotonic() - started < TICK_BUDGET_S:
        try:
            fetched = cardivo_api.list_redemptions(
                updated_after=query_from, max_pages=1, cursor=page_cursor, deadline=started + TICK_BUDGET_S
            )
        except CardivoError as exc:
            if pages == 0 or exc.error_type != "deadline_exceeded":
                raise
            break  # a slow Cardivo: keep the pages this tick got, go on from there next tick
        pages += 1
        polled += fetched.records
        page_cursor = fetched.next_cursor
        if not page_cursor:
            break
        seen_cursor = hashlib.sha256(page_cursor.encode()).hexdigest()[:12]
        if seen_cursor in cursors or len(cursors) >= MAX_PAGES_PER_WINDOW:
            raise CardivoError(
                None,
                "bad_response",
                "Cardivo's paging does not end (a next_cursor came back "
                f"again, or more than {MAX_PAGES_PER_WINDOW} pages): the cursor stays where it was",
            )
        cursors.add(seen_cursor)
    records += polled

    valid, bad = validate_redemptions(records)
    by_day: dict[str, set[str]] = defaultdict(set)
    seen_now = {}
    for record in records:
        version = _version(record)
        if version in requested or version in seen_now:
            continue
        seen_now[version] = record
        day = _redeemed_day(record)
        if day is None:
            context.log.warning(
                "a Cardivo record without a usable redeemed_at was left out; "
                "its day's run or the daily backfill quarantines it"
            )
            continue
        by_day[day].add(version)
    pushed_days = {day: {v: receipts[v] for v in versions if v in receipts} for day, versions in by_day.items()}
    taken = _taken_in_after_push(context.instance, {d: v for d, v in pushed_days.items() if v}) if poll else set()
    by_day = defaultdict(set, {day: versions - taken for day, versions in by_day.items() if versions - taken})
    days = _day_keys(set(by_day))
    waiting = _waiting_days(context.instance) if days else set()
    sensor_name = "cardivo_redemptions_sensor" if poll else "cardivo_webhook_sensor"
    requests = [
        dg.RunRequest(
            partition_key=day,
            run_key=_run_key("cardivo", day, sorted(by_day[day])),
            tags={"giftflow/trigger": sensor_name, "giftflow/changes": str(len(by_day[day]))},
        )
        for day in days
        if day not in waiting
    ]

    stamp = now.timestamp()
    # A time in the future (a skewed or hostile clock) must not carry the edge past changes still to come.
    polled_times = [min(t, stamp) for t in (_updated_epoch(r) for r in polled) if t is not None]
    new_edge = max(edge.timestamp(), *polled_times) if polled_times and not page_cursor else edge.timestamp()
    if page_cursor:  # remember the largest time paged so far; the edge moves there when paging ends
        pending = max([state.get("pending_edge", edge.timestamp()), *polled_times])
    elif state.get("pending_edge"):
        new_edge = max(new_edge, state["pending_edge"])
    requested.update({v: [_updated_epoch(r) or stamp, stamp] for v, r in seen_now.items()})
    # Keep a version while polling (from the edge less LOOKBACK_S) or the pushed deliveries can return it.
    requested = {v: t for v, t in requested.items() if t[0] > new_edge - lookback_s - 2 or t[1] > stamp - 2 * lookback_s - 2}
    new_pushed_edge = max([pushed_edge, *(e["received_at"] for e in pushed)])
    new_state = {
        "edge": datetime.fromtimestamp(new_edge, timezone.utc).isoformat(),
        "requested": requested,
        "pushed_edge": new_pushed_edge.isoformat(),
    }
    if page_cursor:
        new_state.update(
            page_cursor=page_cursor, query_from=query_from.isoformat(), pending_edge=pending, cursors=sorted(cursors)
        )
    skipped = [d for d in days if d in waiting]
    context.log.info(
        f"{len(records)} records ({len(pushed)} pushed) in {pages} page(s), {len(seen_now)} new, "
        f"{len(bad)} bad; runs for {[r.partition_key for r in requests] or 'no day'}"
        + (f"; taken in by queued runs: {skipped}" if skipped else "")
        + (f"; {len(taken)} pushed, taken in by runs started after their delivery" if taken else "")
    )
    return dg.SensorResult(
        run_requests=requests,
        cursor=json.dumps(new_state),
        skip_reason=None if requests else dg.SkipReason("no new Cardivo changes"),
    )


def _updated_epoch(record) -> float | None:
    try:
        return _utc(record["updated_at"]).timestamp()
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


def build_stripe_sensor(interval_s: int = INTERVAL_S) -> dg.SensorDefinition:
    @dg.sensor(
        jobs=[stripe_workflows],
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Polls Stripe events (and reads pushed ones): requests stripe_workflows for the days of "
        "succeeded payments and early fraud warnings, and keeps the customer mirror fresh from "
        "customer.* events so matching need not relist every customer.",
    )
    def stripe_events_sensor(
        context: dg.SensorEvaluationContext, stripe_api: StripeResource, store: StoreResource
    ) -> dg.SensorResult:
        return _stripe_tick(context, stripe_api, store)

    return stripe_events_sensor


def _stripe_tick(context: dg.SensorEvaluationContext, stripe_api: StripeResource, store: StoreResource) -> dg.SensorResult:
    stripe_client, db = stripe_api.get_client(), store.get_client()
    state = json.loads(context.cursor) if context.cursor else {}
    now = datetime.now(timezone.utc)
    since = int(state.get("created_after", (now - timedelta(hours=1)).timestamp()))
    if now - datetime.fromtimestamp(since, timezone.utc) > STRIPE_EVENT_RETENTION:
        # Stripe keeps events 30 days: anything older is gone, so relist instead and say so.
        context.log.warning(
            "Stripe event cursor is older than Stripe's 30-day retention: falling back to a full "
            "relisting of customers on the next sync; days in the gap are left to backfills"
        )
        db.set_state("customers_refreshed_at", "")
        return dg.SensorResult(
            cursor=json.dumps({"created_after": int(now.timestamp()), "fell_back": True}),
            skip_reason=dg.SkipReason("event cursor past retention: fell back to relisting"),
        )

    # After a long stop the events since the cursor may not fit in one tick. Stripe lists newest first, so a
    # partial listing would leave a gap: list a closed window [since, since + span) whole, or halve it.
    span = state.get("span")
    window_end = since + span if span and since + span < now.timestamp() - 1 else None
    polled = _list_events(stripe_client, since, window_end, whole=bool(span and span <= 1))
    if polled is None:
        span = max(1, int((window_end or now.timestamp()) - since) // 2)
        context.log.info(
            f"catching up: the events since {datetime.fromtimestamp(since, timezone.utc)} do not fit "
            f"in one tick; next tick lists {span} s of them"
        )
        return dg.SensorResult(
            cursor=json.dumps({**state, "created_after": since, "span": span}),
            skip_reason=dg.SkipReason(f"catching up on Stripe events, {span} s per tick"),
        )

    # Pushed deliveries are read again for EVENT_LOOKBACK_S after receipt; the ids handled are in the cursor.
    pushed_edge = datetime.fromtimestamp(state.get("pushed_edge", now.timestamp() - EVENT_LOOKBACK_S), timezone.utc)
    pushed = db.webhook_events_since("stripe", pushed_edge - timedelta(seconds=EVENT_LOOKBACK_S))
    handled = set(state.get("pushed_handled", []))
    seen = set(state.get("seen_at_edge", []))
    candidates = [e["payload"] for e in pushed if e["event_id"] not in handled] + [
        e for e in polled if e.get("id") not in seen
    ]
    events, malformed = [], 0
    for event in candidates:
        if _event_shape_ok(event):
            events.append(event)
        else:  # never a poison pill: a malformed event is logged (id only) and left behind
            malformed += 1
            context.log.warning(
                "Stripe event %r has no data.object with an id and a created time: skipped",
                str(event.get("id"))[:80] if isinstance(event, dict) else None,
            )
    events = list({e["id"]: e for e in sorted(events, key=lambda e: (e["created"], e["id"]))}.values())

    # The mirror's only writer here: idempotent, and a customer mirrored from a later write or event keeps
    # that copy (`as_of`), so a tick that dies and is run again, or events read out of order, lose nothing.
    customers = [e for e in events if e["type"] in CUSTOMER_EVENTS]
    for e in customers:
        if e["type"] == "customer.deleted":
            db.delete_customers([e["data"]["object"]["id"]])
        else:
            db.upsert_customers([e["data"]["object"]], as_of=datetime.fromtimestamp(e["created"] + 0.999, timezone.utc))
    if db.customers_refreshed_at():
        db.set_state("customers_events_synced_at", now.isoformat())

    by_day: dict[str, list[str]] = defaultdict(list)
    for e in events:
        if e["type"] in WORKFLOW_EVENTS:
            created = datetime.fromtimestamp(e["data"]["object"]["created"], timezone.utc)
            by_day[created.strftime("%Y-%m-%d")].append(e["id"])
    days = _day_keys(set(by_day))
    requests = [
        dg.RunRequest(
            job_name="stripe_workflows",
            partition_key=day,
            run_key=_run_key("stripe", day, by_day[day]),
            tags={"giftflow/trigger": "stripe_events_sensor"},
        )
        for day in days
    ]
    if window_end is not None and span:  # a closed window, listed whole: the next one starts at its end, twice as long
        cursor = {"created_after": window_end, "span": span * 2}
    else:
        edge = min(max([since, *(e["created"] for e in polled if _event_shape_ok(e))]), int(now.timestamp()))
        # `created` is in whole seconds: keep asking from the edge second and drop the ids already handled there.
        at_edge = {e["id"] for e in polled if e.get("created") == edge} | (seen if edge == since else set())
        cursor = {"created_after": edge, "seen_at_edge": sorted(at_edge)}
    new_pushed_edge = max([pushed_edge, *(e["received_at"] for e in pushed)])
    cursor["pushed_edge"] = new_pushed_edge.timestamp()
    cursor["pushed_handled"] = sorted(
        {e["event_id"] for e in pushed if e["received_at"] >= new_pushed_edge - timedelta(seconds=EVENT_LOOKBACK_S)}
    )
    context.log.info(
        f"{len(events)} events ({len(pushed)} pushed), {len(customers)} customer changes, "
        f"{malformed} malformed, runs for {days or 'no day'}"
    )
    return dg.SensorResult(
        run_requests=requests,
        cursor=json.dumps(cursor),
        skip_reason=None if requests else dg.SkipReason("no new Stripe events for the workflows"),
    )


def _event_shape_ok(event) -> bool:
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        return False
    obj = event["data"].get("object")
    return (
        isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        and isinstance(event.get("created"), int)
        and isinstance(obj, dict)
        and isinstance(obj.get("id"), str)
        and (event["type"] not in WORKFLOW_EVENTS or isinstance(obj.get("created"), int))
    )


def _list_events(stripe_api: StripeClient, since: int, until: int | None, whole: bool) -> list[dict] | None:
    """The events created in [since, until) (until None: up to now), or None when they take more than a
    tick's pages or time; `whole` lists them regardless (one second cannot be split further)."""
    created = {"gte": since, **({"lt": until} if until is not None else {})}
    started, polled = time.monotonic(), []
    for page, calls in stripe_api.iter_pages("events", created=created, types=[*WORKFLOW_EVENTS, *CUSTOMER_EVENTS]):
        polled += page
        if not whole and (calls > MAX_PAGES_PER_TICK or time.monotonic() - started > TICK_BUDGET_S):
            return None
    return polled


RERUN_DAYS = 7
BACKFILL_HOUR_UTC = 1
PARTITIONED_GROUPS = ("giftcard_sync", "stripe_workflows")


# --- settings: the daily backfill's hour and days come from Settings (build_late_data_backfill) ---
def build_late_data_backfill(rerun_days: int | None = None, hour_utc: int | None = None) -> dg.SensorDefinition:
    """The sensor for `rerun_days` and `hour_utc` (None: the module's RERUN_DAYS / BACKFILL_HOUR_UTC at tick time)."""
    shown_hour, shown_days = (
        BACKFILL_HOUR_UTC if hour_utc is None else hour_utc,
        RERUN_DAYS if rerun_days is None else rerun_days,
    )

    @dg.sensor(
        asset_selection=dg.AssetSelection.groups(*PARTITIONED_GROUPS),
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Daily at {shown_hour:02d}:00 UTC: one backfill that runs yesterday and re-runs the "
        f"{shown_days} days before it for every partitioned job, to catch late voids and events.",
    )
    def late_data_backfill(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return late_data_backfill_tick(context, datetime.now(timezone.utc), rerun_days, hour_utc)

    return late_data_backfill


def late_data_backfill_tick(
    context: dg.SensorEvaluationContext, now: datetime, rerun_days: int | None = None, hour_utc: int | None = None
) -> dg.SensorResult:
    """One tick of `late_data_backfill` at `now` (UTC): the first tick at or after BACKFILL_HOUR_UTC each day
    requests the backfill, every other tick skips. Tests pass a frozen `now`."""
    rerun_days = RERUN_DAYS if rerun_days is None else rerun_days
    hour_utc = BACKFILL_HOUR_UTC if hour_utc is None else hour_utc
    today = now.date().isoformat()
    if context.cursor == today or now.hour < hour_utc:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"next backfill after {hour_utc:02d}:00 UTC"))
    return dg.SensorResult(run_requests=[backfill_request(context, now.date(), rerun_days)], cursor=today)


def backfill_request(context: dg.SensorEvaluationContext, today, rerun_days: int) -> dg.RunRequest:
    """One backfill (visible under Backfills in the UI) of yesterday and the `rerun_days` days before it."""
    days = [(today - timedelta(days=n)).isoformat() for n in range(1, rerun_days + 2)]
    return backfill_run_request(
        context.repository_def,
        dg.AssetSelection.groups(*PARTITIONED_GROUPS),
        days,
        tags={"giftflow/trigger": "late_data_backfill"},
    )


def build_sensors(
    interval_s: int = INTERVAL_S,
    lookback_s: int = LOOKBACK_S,
    rerun_days: int = RERUN_DAYS,
    backfill_hour_utc: int = BACKFILL_HOUR_UTC,
) -> list[dg.SensorDefinition]:
    """The sensors with the given intervals (the Definitions pass Settings' values): the contract's three and
    `cardivo_webhook_sensor`, the frequent tick on pushed Cardivo deliveries."""
    return [
        build_cardivo_sensor(interval_s, lookback_s),
        build_cardivo_webhook_sensor(lookback_s=lookback_s),
        build_stripe_sensor(interval_s),
        build_late_data_backfill(rerun_days, backfill_hour_utc),
    ]
