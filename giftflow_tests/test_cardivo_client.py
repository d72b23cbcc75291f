"""The Cardivo client against the Cardivo simulator over HTTP, with injected faults."""

import time
from datetime import date, datetime, timezone

import pytest

from giftflow.adapters.cardivo import CardivoClient, CardivoError
from giftflow_simulators import cardivo, dataset
from giftflow_simulators.server import BackgroundServer
from giftflow_tests.conftest import free_port

DAY = date(2026, 11, 20)
START = datetime(2026, 11, 20, tzinfo=timezone.utc)
END = datetime(2026, 11, 21, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def world():
    return dataset.build_world(3, [DAY], redemptions_per_day=120)


def serve(world, **knobs):
    return BackgroundServer(cardivo.create_app(cardivo.CardivoState.from_world(world), "good-key", **knobs))


def client(url, **over):
    return CardivoClient(api_base=url, api_key=over.pop("api_key", "good-key"), **over)


def test_day_window_with_paging(world):
    with serve(world, max_page_size=25) as srv:
        got = client(srv.base_url, page_size=100).list_redemptions(redeemed_after=START, redeemed_before=END)
    assert sorted(r["id"] for r in got.records) == sorted(r["id"] for r in world.redemptions)
    assert got.calls == 5  # 120 records in pages of at most 25


@pytest.mark.e2e  # waits out real Retry-After delays: ~4 s
def test_retries_5xx_and_429_with_retry_after(world):
    with serve(world, error_rate=0.3, rate_limit_rate=0.2, seed=5, retry_after_s=0) as srv:
        got = client(srv.base_url, page_size=10, max_attempts=12).list_redemptions(redeemed_after=START, redeemed_before=END)
        stats = srv_stats(srv)
    assert len({r["id"] for r in got.records}) == 120
    assert stats["faults"] > 0


def srv_stats(srv):
    import httpx

    stats = httpx.get(srv.base_url + "/_sim/stats").json()
    faults = sum(v for k, v in stats["refused"].items() if str(k).startswith(("5", "429")))
    return {"faults": faults, **stats}


def test_retry_after_is_honoured(world):
    # Retry-After: 2 is longer than the client's own first backoff can be (0.2 s + at most 1 s of jitter), so a
    # client that ignored it would retry within 1.2 s on every run; with 1 s it passed about one run in five.
    with serve(world, rate_limit_rate=1.0, retry_after_s=2) as srv:
        started = time.monotonic()
        with pytest.raises(CardivoError, match="429"):
            client(srv.base_url, max_attempts=2).list_redemptions(redeemed_after=START, redeemed_before=END)
    assert time.monotonic() - started >= 1.95  # waited the server's Retry-After once


def test_wrong_key_is_a_clear_error_and_never_shows_the_key(world):
    with serve(world) as srv:
        with pytest.raises(CardivoError) as err:
            client(srv.base_url, api_key="sekret-wrong").list_redemptions(updated_after=START)
    assert err.value.status == 401 and err.value.error_type == "authentication"
    assert "sekret-wrong" not in str(err.value)


def test_unknown_gift_card_is_404(world):
    with serve(world) as srv:
        with pytest.raises(CardivoError) as err:
            client(srv.base_url).find_gift_card("CRDV-NOPE-NOPE-0000")
    assert err.value.status == 404 and err.value.error_type == "not_found"


def test_known_gift_card(world):
    code = world.redemptions[0]["gift_card"]["code"]
    with serve(world) as srv:
        card = client(srv.base_url).find_gift_card(code)
    assert card["code"] == code and card["status"] in {"active", "redeemed", "expired", "disabled"}


def test_dropped_connection_is_retried_then_reported():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(CardivoError, match="retries_exhausted"):
        client(url, max_attempts=2, timeout_s=1).list_redemptions(updated_after=START)


def test_naive_datetime_is_refused(world):
    with pytest.raises(ValueError, match="naive"):
        client("http://127.0.0.1:1").list_redemptions(updated_after=datetime(2026, 11, 20))


def test_updated_after_sees_a_void(world):
    with serve(world) as srv:
        state_url = srv.base_url
        api = client(state_url)
        first = api.list_redemptions(updated_after=START)
        newest = max(r["updated_at"] for r in first.records)
        cut = datetime.fromisoformat(newest.replace("Z", "+00:00"))
        assert api.list_redemptions(updated_after=cut).records == []
        victim = next(r for r in first.records if r["status"] == "completed")
        import httpx

        httpx.post(f"{state_url}/_sim/redemptions/{victim['id']}/void")
        again = api.list_redemptions(updated_after=cut).records
    assert [r["id"] for r in again] == [victim["id"]] and again[0]["status"] == "voided"
