"""`late_data_backfill` over simulated days of ticks (frozen times through `late_data_backfill_tick`): it fires
exactly once a day, at the first tick at or after GIFTFLOW_BACKFILL_HOUR_UTC, with yesterday and the
GIFTFLOW_RERUN_DAYS days before it for both partitioned jobs; and the sensor itself fires on a real tick."""

from datetime import date, datetime, timedelta, timezone

import dagster as dg
import pytest

import giftflow
from giftflow.orchestration import sensors

TICK = timedelta(minutes=5)  # the sensor's minimum_interval_seconds


def _ticks(start: datetime, end: datetime) -> list[tuple[datetime, dg.RunRequest]]:
    """Every tick from `start` to `end`, the cursor carried from one to the next as the daemon does; returns
    the times that requested a run, with the request."""
    instance, cursor, fired, now = dg.DagsterInstance.ephemeral(), None, [], start
    while now < end:
        ctx = dg.build_sensor_context(definitions=giftflow.defs, instance=instance, cursor=cursor)
        result = sensors.late_data_backfill_tick(ctx, now)
        fired += [(now, r) for r in result.run_requests or []]
        cursor = result.cursor if result.cursor is not None else cursor
        now += TICK
    return fired


def _days(request: dg.RunRequest) -> set[str]:
    return {p.partition_key for p in request.asset_graph_subset.iterate_asset_partitions()}


def _expected(day: date, rerun_days: int) -> set[str]:
    return {(day - timedelta(days=n)).isoformat() for n in range(1, rerun_days + 2)}


@pytest.mark.parametrize("hour", [sensors.BACKFILL_HOUR_UTC, 5])
def test_fires_once_a_day_at_the_backfill_hour_with_yesterday_and_the_rerun_days(hour, monkeypatch):
    monkeypatch.setattr(sensors, "BACKFILL_HOUR_UTC", hour)
    start = datetime(2026, 11, 20, 0, 2, tzinfo=timezone.utc)  # ticks at hh:02, hh:07, ...
    fired = _ticks(start, start + timedelta(days=3))
    assert [t for t, _ in fired] == [datetime(2026, 11, d, hour, 2, tzinfo=timezone.utc) for d in (20, 21, 22)]
    for t, request in fired:
        assert _days(request) == _expected(t.date(), sensors.RERUN_DAYS)
        keys = {k.to_user_string() for k in request.asset_graph_subset.asset_keys}
        assert {"giftcard_customer_updates", "workflow_actions"} <= keys
        assert request.tags["giftflow/trigger"] == "late_data_backfill"


def test_a_daemon_that_was_down_at_the_hour_fires_at_its_next_tick_that_day_only(monkeypatch):
    monkeypatch.setattr(sensors, "BACKFILL_HOUR_UTC", 1)
    start = datetime(2026, 11, 20, 13, 30, tzinfo=timezone.utc)  # first tick long after 01:00
    fired = _ticks(start, start + timedelta(hours=14))  # into the next day, past its 01:00
    assert [t for t, _ in fired] == [start, datetime(2026, 11, 21, 1, 0, tzinfo=timezone.utc)]


def test_the_sensor_itself_requests_the_backfill_on_a_real_tick(monkeypatch):
    monkeypatch.setattr(sensors, "BACKFILL_HOUR_UTC", 0)  # due at any hour
    today = datetime.now(timezone.utc).date()
    ctx = dg.build_sensor_context(
        definitions=giftflow.defs, instance=dg.DagsterInstance.ephemeral(), cursor=(today - timedelta(days=1)).isoformat()
    )
    result = sensors.build_late_data_backfill()(ctx)
    [request] = result.run_requests
    assert _days(request) == _expected(today, sensors.RERUN_DAYS) and result.cursor == today.isoformat()
    again = sensors.build_late_data_backfill()(
        dg.build_sensor_context(definitions=giftflow.defs, instance=dg.DagsterInstance.ephemeral(), cursor=result.cursor)
    )
    assert not again.run_requests
