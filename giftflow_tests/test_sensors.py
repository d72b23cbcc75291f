"""Sensor logic with dg.build_sensor_context against the simulators: cursors, run keys, chunking, catch-up."""

import json
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import httpx
import pytest

import giftflow
from giftflow.adapters.cardivo import CardivoClient
from giftflow.adapters.store import GiftflowStore
from giftflow.adapters.stripe import StripeClient
from giftflow.orchestration import sensors
from giftflow.orchestration.partitions import daily
from giftflow.orchestration.resources import (
    CardivoResource,
    StoreResource,
    StripeResource,
)
from giftflow_simulators import cardivo, dataset, stripe
from giftflow_simulators.server import BackgroundServer

TODAY = datetime.now(timezone.utc).date()
DAYS = [TODAY - timedelta(days=3), TODAY - timedelta(days=2), TODAY - timedelta(days=1)]


@pytest.fixture
def world():
    return dataset.build_world(5, DAYS, redemptions_per_day=30)


@pytest.fixture
def store(tmp_path):
    return GiftflowStore(database_url=f"sqlite:///{tmp_path}/s.sqlite")


@pytest.fixture
def cardivo_sim(world):
    state = cardivo.CardivoState.from_world(world)
    with BackgroundServer(cardivo.create_app(state, "k", max_page_size=10)) as srv:
        yield state, srv.base_url


def _utc(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def as_resources(**adapters) -> dict:
    """The sensors' Dagster resources for these adapters."""
    made = {
        "store": lambda s: StoreResource(database_url=s.database_url),
        "cardivo": lambda c: CardivoResource(api_base=c.api_base, api_key=c.api_key, page_size=c.page_size),
        "stripe_api": lambda a: StripeResource(
            api_key=a.api_key, api_base=a.api_base, max_requests_per_second=a.max_requests_per_second
        ),
    }
    return {name: made[name](adapter) for name, adapter in adapters.items()}


def tick(sensor, cursor, **adapters):
    ctx = dg.build_sensor_context(cursor=cursor, resources=as_resources(**adapters), instance=dg.DagsterInstance.ephemeral())
    result = sensor(ctx)
    return result, result.cursor


def cardivo_tick(url, store, cursor, page_size=10):
    return tick(
        sensors.build_cardivo_sensor(),
        cursor,
        store=store,
        cardivo=CardivoClient(api_base=url, api_key="k", page_size=page_size),
    )


def test_cardivo_sensor_requests_each_changed_day_once(cardivo_sim, store, world):
    state, url = cardivo_sim
    start = json.dumps(
        {"updated_after": (datetime.combine(DAYS[0], datetime.min.time(), timezone.utc) - timedelta(seconds=5)).isoformat()}
    )
    result, cursor = cardivo_tick(url, store, start, page_size=100)
    requested = {r.partition_key for r in result.run_requests}
    assert requested == {d.isoformat() for d in DAYS} & {r["redeemed_at"][:10] for r in world.redemptions}
    assert all(r.run_key.startswith("cardivo:") for r in result.run_requests)

    again, cursor2 = cardivo_tick(url, store, cursor, page_size=100)
    assert again.run_requests == []  # nothing changed: no day requested twice

    # A late void changes an old day, and only that day.
    victim = next(
        r for r in world.redemptions if r["redeemed_at"].startswith(DAYS[0].isoformat()) and r["status"] == "completed"
    )
    later = max(_utc(r["updated_at"]) for r in world.redemptions) + timedelta(minutes=1)
    httpx.post(f"{url}/_sim/redemptions/{victim['id']}/void", json={"at": later.strftime("%Y-%m-%dT%H:%M:%SZ")})
    voided, _ = cardivo_tick(url, store, cursor2, page_size=100)
    assert [r.partition_key for r in voided.run_requests] == [DAYS[0].isoformat()]
    assert voided.run_requests[0].run_key not in {r.run_key for r in result.run_requests}


def test_cardivo_sensor_catches_up_in_chunks_after_an_outage(cardivo_sim, store, world, monkeypatch):
    _, url = cardivo_sim
    monkeypatch.setattr(sensors, "MAX_PAGES_PER_TICK", 2)  # 20 records a tick with pages of 10
    cursor = json.dumps({"updated_after": "2020-01-01T00:00:00+00:00"})
    ticks, changes = 0, 0
    while True:
        result, cursor = cardivo_tick(url, store, cursor)
        ticks += 1
        changes += sum(int(r.tags["giftflow/changes"]) for r in result.run_requests)
        state = json.loads(cursor)
        if "page_cursor" not in state:
            break
        assert state["edge"] == "2020-01-01T00:00:00+00:00"  # no move until paging is done
        assert ticks < 50
    assert ticks >= len(world.redemptions) // 20
    in_partitions = [r for r in world.redemptions if r["redeemed_at"][:10] in set(daily.get_partition_keys())]
    assert changes == len(in_partitions)  # every redemption requested once across the chunks, none twice
    assert json.loads(cursor)["edge"] >= max(r["updated_at"] for r in world.redemptions).replace("Z", "")


def _edge_cursor(at: datetime) -> str:
    return json.dumps({"edge": at.isoformat()})


def test_cardivo_sensor_picks_up_pushed_deliveries(cardivo_sim, store, world):
    _, url = cardivo_sim
    latest = max(_utc(r["updated_at"]) for r in world.redemptions)
    redemption = {
        **world.redemptions[0],
        "id": "rdm_pushed",
        "redeemed_at": f"{DAYS[1]}T10:00:00Z",
        "updated_at": latest.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    store.record_webhook_event("cardivo", "evt_1", "redemption.created", {"id": "evt_1", "data": redemption})
    cursor = _edge_cursor(latest + timedelta(seconds=sensors.LOOKBACK_S + 2))
    result, after = cardivo_tick(url, store, cursor)
    assert [r.partition_key for r in result.run_requests] == [DAYS[1].isoformat()]
    # The delivery stays readable; the cursor, not the store, remembers it was requested.
    again, _ = cardivo_tick(url, store, after)
    assert again.run_requests == []
    replayed, _ = cardivo_tick(url, store, cursor)  # the first tick never committed: the same run again
    assert [r.run_key for r in replayed.run_requests] == [r.run_key for r in result.run_requests]


def _dump(store) -> dict:
    import sqlalchemy as sa

    from giftflow.adapters.store import metadata_obj

    with store.engine.connect() as conn:
        return {t.name: sorted(map(str, conn.execute(sa.select(t)).all())) for t in metadata_obj.sorted_tables}


def test_a_cardivo_tick_writes_nothing(cardivo_sim, store, world):
    state, url = cardivo_sim
    store.record_webhook_event(
        "cardivo", "evt_bad", "redemption.created", {"id": "evt_bad", "data": {"id": "rdm_bad", "amount": "lots"}}
    )
    state.add(
        {
            **world.redemptions[0],
            "id": "rdm_bad2",
            "amount": -5,
            "updated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    before = _dump(store)
    result, _ = cardivo_tick(url, store, None, page_size=100)
    assert result.run_requests
    assert _dump(store) == before  # no quarantine, no "processed" mark: the run of the day quarantines


def test_a_change_a_running_run_already_stored_still_gets_a_run(cardivo_sim, store, world):
    """A run that is already past its fetch may have stored a version it will not write: the sensor must not
    take "stored" for "handled"."""
    state, url = cardivo_sim
    _, cursor = cardivo_tick(url, store, None, page_size=100)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    late = {**world.redemptions[-1], "id": "rdm_during_run", "redeemed_at": now, "updated_at": now}
    state.add(late)
    from giftflow.domain.redemptions import validate_redemptions

    store.upsert_redemptions(validate_redemptions([late])[0])  # a running run's fetch stored it
    result, _ = cardivo_tick(url, store, cursor, page_size=100)
    assert [r.partition_key for r in result.run_requests] == [now[:10]]


def test_a_change_that_shows_up_late_in_the_list_is_not_skipped(cardivo_sim, store, world):
    state, url = cardivo_sim
    _, cursor = cardivo_tick(url, store, None, page_size=100)
    edge = _utc(json.loads(cursor)["edge"])
    # Committed late at Cardivo: its updated_at is before the sensor's edge.
    stamp = (edge - timedelta(seconds=sensors.LOOKBACK_S // 2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    state.add({**world.redemptions[-1], "id": "rdm_late", "redeemed_at": f"{DAYS[0]}T08:00:00Z", "updated_at": stamp})
    result, _ = cardivo_tick(url, store, cursor, page_size=100)
    assert [r.partition_key for r in result.run_requests] == [DAYS[0].isoformat()]


def test_a_queued_run_of_the_day_takes_in_new_changes(cardivo_sim, store, world):
    state, url = cardivo_sim
    instance = dg.DagsterInstance.ephemeral()
    resources = as_resources(store=store, cardivo=CardivoClient(api_base=url, api_key="k", page_size=100))

    def run_tick(cursor):
        result = sensors.build_cardivo_sensor()(
            dg.build_sensor_context(cursor=cursor, resources=resources, instance=instance)
        )
        return result, result.cursor

    _, cursor = run_tick(None)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    instance.add_run(
        dg.DagsterRun(
            job_name="giftcard_sync",
            run_id="waiting",
            status=dg.DagsterRunStatus.NOT_STARTED,
            tags={"dagster/partition": now[:10]},
        )
    )
    state.add({**world.redemptions[-1], "id": "rdm_q1", "redeemed_at": now, "updated_at": now})
    result, cursor = run_tick(cursor)
    assert result.run_requests == []  # the waiting run fetches after this change: it takes it in
    instance.report_run_canceled(instance.get_run_by_id("waiting"))
    later = (datetime.now(timezone.utc) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    state.add({**world.redemptions[-1], "id": "rdm_q2", "redeemed_at": now, "updated_at": later})
    result, _ = run_tick(cursor)
    assert [r.partition_key for r in result.run_requests] == [now[:10]]


def test_a_future_updated_at_does_not_carry_the_edge_past_later_changes(cardivo_sim, store, world):
    state, url = cardivo_sim
    state.add(
        {
            **world.redemptions[-1],
            "id": "rdm_future",
            "redeemed_at": f"{DAYS[0]}T08:00:00Z",
            "updated_at": "2999-01-01T00:00:00Z",
        }
    )
    _, cursor = cardivo_tick(url, store, None, page_size=100)
    assert _utc(json.loads(cursor)["edge"]) <= datetime.now(timezone.utc)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    state.add({**world.redemptions[-1], "id": "rdm_after_future", "redeemed_at": now, "updated_at": now})
    result, _ = cardivo_tick(url, store, cursor, page_size=100)
    assert now[:10] in {r.partition_key for r in result.run_requests}


@pytest.fixture
def stripe_sim(world):
    state = stripe.StripeState.from_world(world)
    with BackgroundServer(stripe.create_app(state, api_key="sk_test_x")) as srv:
        yield state, StripeClient(api_key="sk_test_x", api_base=srv.base_url, max_requests_per_second=100)


def test_stripe_events_sensor_requests_workflow_days_and_keeps_mirror(stripe_sim, store, world):
    state, api = stripe_sim
    store.replace_customers(world.customers)
    start = json.dumps({"created_after": int(datetime.combine(DAYS[0], datetime.min.time(), timezone.utc).timestamp())})
    result, cursor = tick(sensors.build_stripe_sensor(), start, stripe_api=api, store=store)
    days = {r.partition_key for r in result.run_requests}

    def day(ts):
        return datetime.fromtimestamp(ts, timezone.utc).date().isoformat()

    expected = {day(pi["created"]) for pi in world.payment_intents if pi["status"] == "succeeded"}
    expected |= {day(w["created"]) for w in world.early_fraud_warnings}
    assert days == expected and days
    assert all(r.job_name == "stripe_workflows" for r in result.run_requests)
    again, cursor = tick(sensors.build_stripe_sensor(), cursor, stripe_api=api, store=store)
    assert again.run_requests == []

    made = api.create_customer({"email": "fresh@x.com"}, "k-fresh").object
    api.update_customer(world.customers[0]["id"], {"metadata": {"crm": "1"}}, "k-upd")
    tick(sensors.build_stripe_sensor(), cursor, stripe_api=api, store=store)
    mirror = {c["id"]: c for c in store.load_customers()}
    assert made["id"] in mirror and mirror[world.customers[0]["id"]]["metadata"]["crm"] == "1"
    assert store.get_state("customers_events_synced_at")


def test_a_malformed_stored_stripe_event_is_no_poison_pill(stripe_sim, store, world):
    _, api = stripe_sim
    store.replace_customers(world.customers)
    pi = next(p for p in world.payment_intents if p["status"] == "succeeded")
    store.record_webhook_event("stripe", "evt_bad", "payment_intent.succeeded", {"id": "evt_bad", "data": {}})
    store.record_webhook_event(
        "stripe",
        "evt_good",
        "payment_intent.succeeded",
        {"id": "evt_good", "type": "payment_intent.succeeded", "created": pi["created"], "data": {"object": pi}},
    )
    cursor = json.dumps({"created_after": int(datetime.now(timezone.utc).timestamp())})
    result, cursor = tick(sensors.build_stripe_sensor(), cursor, stripe_api=api, store=store)
    day = datetime.fromtimestamp(pi["created"], timezone.utc).date().isoformat()
    assert [r.partition_key for r in result.run_requests] == [day]
    again, _ = tick(sensors.build_stripe_sensor(), cursor, stripe_api=api, store=store)
    assert again.run_requests == []  # both deliveries handled once, the bad one skipped, not retried forever


def test_stripe_events_sensor_falls_back_past_retention(stripe_sim, store):
    _, api = stripe_sim
    store.replace_customers([])
    old = json.dumps({"created_after": int((datetime.now(timezone.utc) - timedelta(days=31)).timestamp())})
    result, cursor = tick(sensors.build_stripe_sensor(), old, stripe_api=api, store=store)
    assert result.run_requests == [] and json.loads(cursor)["fell_back"] is True
    assert store.customers_refreshed_at() is None  # next sync relists every customer


def test_late_data_backfill_is_one_backfill_of_yesterday_and_seven_days_before():
    defs = giftflow.defs
    ctx = dg.build_sensor_context(definitions=defs, instance=dg.DagsterInstance.ephemeral())
    request = sensors.backfill_request(ctx, date(2026, 11, 25), 7)
    subset = request.asset_graph_subset
    days = {p.partition_key for p in subset.iterate_asset_partitions()}
    assert days == {(date(2026, 11, 24) - timedelta(days=n)).isoformat() for n in range(8)}
    assert {k.to_user_string() for k in subset.asset_keys} >= {"giftcard_customer_updates", "workflow_actions"}
    assert request.requires_backfill_daemon()


def test_late_data_backfill_fires_once_a_day():
    ctx = dg.build_sensor_context(
        definitions=giftflow.defs,
        instance=dg.DagsterInstance.ephemeral(),
        cursor=datetime.now(timezone.utc).date().isoformat(),
    )
    result = sensors.build_late_data_backfill()(ctx)
    assert result.run_requests == [] or result.run_requests is None


@pytest.mark.e2e  # 60 ticks over 250 events: ~3 s
def test_stripe_events_sensor_catches_up_in_windows_that_fit_a_tick(stripe_sim, store, monkeypatch):
    state, api = stripe_sim
    store.replace_customers([])
    monkeypatch.setattr(sensors, "MAX_PAGES_PER_TICK", 1)  # 100 events a tick
    now = int(datetime.now(timezone.utc).timestamp())
    made = []
    for i in range(250):  # 250 customer.created events over the last ~2 hours, each in its own second
        state.set_now(now - 7200 + i * 25)
        made.append(api.create_customer({"email": f"c{i}@x.com"}, f"k-catch-{i}").object["id"])
    state.set_now(None)
    cursor = json.dumps({"created_after": now - 3 * 3600})
    spans = []
    for _ in range(60):
        result, cursor = tick(sensors.build_stripe_sensor(), cursor, stripe_api=api, store=store)
        spans.append(json.loads(cursor).get("span"))
        if spans[-1] is None:
            break
    assert spans[-1] is None, spans  # caught up: back to listing everything since the cursor
    assert any(spans), spans  # it had to split the gap into windows
    assert {c["id"] for c in store.load_customers()} >= set(made)  # no event lost between windows


def test_a_cardivo_tick_that_dies_before_dagster_commits_it_loses_nothing(cardivo_sim, store, world):
    _, url = cardivo_sim
    start = json.dumps({"updated_after": "2020-01-01T00:00:00+00:00"})
    lost, _ = cardivo_tick(url, store, start, page_size=100)  # its requests and cursor are never committed
    assert lost.run_requests
    retried, cursor = cardivo_tick(url, store, start, page_size=100)
    assert {r.run_key for r in retried.run_requests} == {r.run_key for r in lost.run_requests}
    again, _ = cardivo_tick(url, store, cursor, page_size=100)
    assert again.run_requests == []  # the second the cursor asks again is remembered, not requested twice


def _hostile_cardivo(handler):
    from starlette.applications import Starlette
    from starlette.routing import Route

    return BackgroundServer(Starlette(routes=[Route("/v1/redemptions", handler)]))


@pytest.mark.e2e  # waits out a tick budget: ~3 s
def test_a_slow_cardivo_cannot_hold_a_tick_past_its_budget(store, monkeypatch):
    import asyncio
    import time as _time

    from starlette.responses import JSONResponse

    from giftflow.adapters.cardivo import CardivoError

    async def slow(request):
        await asyncio.sleep(10)
        return JSONResponse({"data": [], "next_cursor": None})

    monkeypatch.setattr(sensors, "TICK_BUDGET_S", 2.0)
    with _hostile_cardivo(slow) as srv:
        began = _time.monotonic()
        with pytest.raises(CardivoError, match="deadline"):
            cardivo_tick(srv.base_url, store, None)
        assert _time.monotonic() - began < 5


def test_paging_that_cycles_across_ticks_stops_with_a_clear_error(store, world):
    from starlette.responses import JSONResponse

    from giftflow.adapters.cardivo import CardivoError

    record = {**world.redemptions[0], "updated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}

    async def cycling(request):  # A -> B -> A -> ...: each answer alone looks fine
        nxt = {"A": "B", "B": "A"}.get(request.query_params.get("cursor"), "A")
        return JSONResponse({"data": [record], "next_cursor": nxt})

    with _hostile_cardivo(cycling) as srv:
        with pytest.raises(CardivoError, match="paging does not end"):
            cardivo_tick(srv.base_url, store, None)


def _pushed(store, day, updated_at: datetime, event_id="evt_w1", rid="rdm_pushed_w") -> dict:
    redemption = {
        "id": rid,
        "status": "completed",
        "amount": 100,
        "currency": "usd",
        "redeemed_at": f"{day}T10:00:00Z",
        "updated_at": updated_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    store.record_webhook_event("cardivo", event_id, "redemption.created", {"id": event_id, "data": redemption})
    return redemption


def _started_run(instance, day: str) -> None:
    """A giftcard_sync run of `day` that has started now (its RUN_START stored)."""
    import uuid

    run = instance.add_run(
        dg.DagsterRun(
            job_name="giftcard_sync",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.NOT_STARTED,
            tags={"dagster/partition": day},
        )
    )
    instance.report_dagster_event(
        dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name="giftcard_sync"), run_id=run.run_id
    )


def test_the_webhook_sensor_requests_pushed_days_without_calling_cardivo(store):
    now = datetime.now(timezone.utc)
    _pushed(store, DAYS[1], now)
    ctx = dg.build_sensor_context(resources=as_resources(store=store), instance=dg.DagsterInstance.ephemeral())
    result = sensors.build_cardivo_webhook_sensor()(ctx)  # no Cardivo resource at all: the store only
    assert [r.partition_key for r in result.run_requests] == [DAYS[1].isoformat()]
    assert result.run_requests[0].tags["giftflow/trigger"] == "cardivo_webhook_sensor"
    again = sensors.build_cardivo_webhook_sensor()(
        dg.build_sensor_context(
            cursor=result.cursor, resources=as_resources(store=store), instance=dg.DagsterInstance.ephemeral()
        )
    )
    assert again.run_requests == []
    assert sensors.build_cardivo_webhook_sensor().minimum_interval_seconds == sensors.WEBHOOK_INTERVAL_S


def test_a_pushed_change_taken_in_by_a_run_started_after_it_is_not_requested_again_by_polling(cardivo_sim, store):
    state, url = cardivo_sim
    now = datetime.now(timezone.utc).replace(microsecond=0)
    redemption = _pushed(store, DAYS[1], now)
    httpx.post(
        f"{url}/_sim/redemptions",
        json={
            **redemption,
            "balance_after": 0,
            "stripe_customer_id": None,
            "location": "online",
            "customer": {"email": "w@example.com"},
            "gift_card": {"id": "gc_w", "code": "CRDV-AAAA-BBBB-1234", "initial_value": 500, "currency": "usd"},
        },
    )
    cursor = _edge_cursor(now - timedelta(seconds=5))
    cardivo = CardivoClient(api_base=url, api_key="k", page_size=10)
    # No run yet: the polling sensor requests the day itself (the webhook sensor may be stopped).
    alone, _ = tick(sensors.build_cardivo_sensor(), cursor, store=store, cardivo=cardivo)
    assert [r.partition_key for r in alone.run_requests] == [DAYS[1].isoformat()]
    # A run of that day started after the delivery arrived (the webhook sensor's): polling requests nothing more.
    instance = dg.DagsterInstance.ephemeral()
    _started_run(instance, DAYS[1].isoformat())
    ctx = dg.build_sensor_context(cursor=cursor, resources=as_resources(store=store, cardivo=cardivo), instance=instance)
    taken = sensors.build_cardivo_sensor()(ctx)
    assert taken.run_requests == []
    assert json.loads(taken.cursor)["requested"]  # remembered, not looked up again
