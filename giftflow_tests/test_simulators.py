"""The Cardivo and Stripe simulators over real HTTP on 127.0.0.1, and the seeded dataset behind them."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import date, datetime, timezone
from pathlib import Path

import httpx
import pytest
import stripe

from giftflow_simulators import cardivo, dataset
from giftflow_simulators import stripe as stripe_sim
from giftflow_simulators.server import BackgroundServer

DAYS = [date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22)]
CARDIVO_KEY = "ck_test_sim"
STRIPE_KEY = "sk_test_sim"
# top-level keys of Stripe's own customer example (shared/stripe/fixtures3.json), checked against the shipped copy below
CUSTOMER_KEYS = {
    "address",
    "balance",
    "created",
    "currency",
    "default_source",
    "delinquent",
    "description",
    "discount",
    "email",
    "id",
    "invoice_prefix",
    "invoice_settings",
    "livemode",
    "metadata",
    "name",
    "next_invoice_sequence",
    "object",
    "phone",
    "preferred_locales",
    "shipping",
    "tax_exempt",
    "test_clock",
}
# Stripe's own example objects (from ../shared/stripe/fixtures3.json), shipped with the tests so that every
# assertion runs with or without ../shared
FIXTURES = Path(__file__).resolve().parent / "data/stripe_examples.json"


@pytest.fixture(scope="module")
def world() -> dataset.World:
    return dataset.build_world(11, DAYS)


@pytest.fixture
def serve():
    servers = []

    def start(app) -> str:
        servers.append(BackgroundServer(app))
        return servers[-1].start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def cardivo_api(world, serve):
    state = cardivo.CardivoState.from_world(world)
    client = httpx.Client(
        base_url=serve(cardivo.create_app(state, CARDIVO_KEY)), headers={"Authorization": f"Bearer {CARDIVO_KEY}"}
    )
    yield state, client
    client.close()


def _pages(client: httpx.Client, **params) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        response = client.get("/v1/redemptions", params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["data"])
        if not (cursor := body["next_cursor"]):
            return pages


def _ordered(redemptions) -> list[str]:
    return [r["id"] for r in sorted(redemptions, key=lambda r: (r["updated_at"], r["id"]))]


# -- dataset --------------------------------------------------------------------------------------------------------


def test_dataset_is_deterministic(world):
    assert dataset.build_world(11, DAYS) == world
    assert dataset.build_world(12, DAYS).redemptions != world.redemptions


def test_dataset_is_realistic(world):
    rs, n = world.redemptions, len(world.redemptions)
    assert n == 40 * len(DAYS) and len(world.customers) == 60
    assert len({r["id"] for r in rs}) == n and all(c["id"].startswith("cus_") for c in world.customers)
    stripe_ids = {c["id"] for c in world.customers}
    stripe_emails = {c["email"].lower() for c in world.customers}
    typed = [r["customer"]["email"] for r in rs if r["customer"] and r["customer"]["email"]]
    assert any(e != e.strip() for e in typed) and any(e.strip() != e.strip().lower() for e in typed)
    voided = [r for r in rs if r["status"] == "voided"]
    assert 0.01 <= len(voided) / n <= 0.12 and all(r["updated_at"] > r["redeemed_at"] for r in voided)
    assert all(r["updated_at"] == r["redeemed_at"] for r in rs if r["status"] == "completed")
    assert 0.01 <= sum(r["customer"] is None for r in rs) / n <= 0.12
    assert any(r["customer"] and None in r["customer"].values() for r in rs)
    currencies = Counter(r["currency"] for r in rs)
    assert currencies["usd"] > n / 2 and currencies["eur"] and currencies["jpy"]
    assert all(r["amount"] % 10 == 0 for r in rs if r["currency"] == "jpy")  # yen: no minor unit
    by_person = defaultdict(set)
    for r in rs:
        if r["customer"] and r["customer"]["email"]:
            by_person[r["customer"]["email"].strip().lower()].add(r["currency"])
    assert any(len(c) == 2 for c in by_person.values())
    shared = Counter(c["email"].lower() for c in world.customers)
    ((email, twice),) = [(e, k) for e, k in shared.items() if k > 1]
    pair = [c for c in world.customers if c["email"].lower() == email]
    assert pair[0]["email"] != pair[1]["email"] and pair[0]["created"] != pair[1]["created"]
    linked = [r["stripe_customer_id"] for r in rs if r["stripe_customer_id"]]
    assert 0.05 <= len(linked) / n <= 0.30 and len(set(linked) - stripe_ids) == 1
    assert 0.03 <= sum(e.strip().lower() not in stripe_emails for e in typed) / n <= 0.20
    for r in rs:
        assert isinstance(r["amount"], int) and r["amount"] > 0 and r["currency"] == r["gift_card"]["currency"]
        assert dataset.parse_time(r["redeemed_at"]).tzinfo and r["redeemed_at"].endswith("Z")
        code = r["gift_card"]["code"].split("-")
        assert code[0] == "CRDV" and [len(p) for p in code] == [4] * 4 and code[3].isdigit()
    for day in DAYS:
        stamps = {r["redeemed_at"] for r in rs}
        assert f"{day}T00:00:00Z" in stamps and f"{day}T23:59:59Z" in stamps
    # balance_after: what the card had left then, counting voids only from the moment they happened
    for card in world.gift_cards:
        uses = [r for r in rs if r["gift_card"]["id"] == card["id"]]
        for r in uses:
            spent = sum(
                u["amount"]
                for u in uses
                if u["redeemed_at"] <= r["redeemed_at"]
                and (u["status"] == "completed" or u["updated_at"] > r["redeemed_at"])
            )
            assert r["balance_after"] == card["initial_value"] - spent >= 0
        assert card["balance"] == card["initial_value"] - sum(u["amount"] for u in uses if u["status"] == "completed")


# -- Cardivo ----------------------------------------------------------------------------------------------------------


def test_cardivo_pages_through_everything_at_every_limit(world, cardivo_api):
    _, client = cardivo_api
    expected = _ordered(world.redemptions)
    for limit in range(1, 101):
        pages = _pages(client, limit=limit)
        assert all(len(p) <= limit for p in pages) and all(pages)
        assert [r["id"] for p in pages for r in p] == expected, limit
    assert [len(p) for p in _pages(client)] == [50, 50, 20]  # default limit


def test_cardivo_max_page_size_caps_limit(world, serve):
    base = serve(cardivo.create_app(cardivo.CardivoState(world.redemptions), CARDIVO_KEY, max_page_size=7))
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {CARDIVO_KEY}"}) as client:
        assert {len(p) for p in _pages(client, limit=100)[:-1]} == {7}


def test_cardivo_day_window_is_half_open(world, cardivo_api):
    _, client = cardivo_api
    got = [
        r for p in _pages(client, redeemed_after="2026-11-21T00:00:00Z", redeemed_before="2026-11-22T00:00:00Z") for r in p
    ]
    stamps = {r["redeemed_at"] for r in got}
    assert "2026-11-21T00:00:00Z" in stamps and "2026-11-21T23:59:59Z" in stamps
    assert "2026-11-22T00:00:00Z" not in stamps and "2026-11-20T23:59:59Z" not in stamps
    assert [r["id"] for r in got] == _ordered(r for r in world.redemptions if r["redeemed_at"].startswith("2026-11-21"))
    # an offset means the same instant
    same = _pages(client, redeemed_after="2026-11-21T01:00:00+01:00", redeemed_before="2026-11-22T00:00:00Z")
    assert [r["id"] for p in same for r in p] == [r["id"] for r in got]


def test_cardivo_updated_after_is_strict_and_voids_reappear(world, cardivo_api):
    state, client = cardivo_api
    mark = sorted(world.redemptions, key=lambda r: r["updated_at"])[60]["updated_at"]
    got = [r for p in _pages(client, updated_after=mark) for r in p]
    assert got and all(r["updated_at"] > mark for r in got)
    assert [r["id"] for r in got] == _ordered(r for r in world.redemptions if r["updated_at"] > mark)
    # a void moves updated_at: the redemption comes back in the next poll, even from an earlier day
    latest = max(r["updated_at"] for r in world.redemptions)
    old = next(r for r in world.redemptions if r["status"] == "completed")
    assert _pages(client, updated_after=latest) == [[]]
    response = client.post(f"/_sim/redemptions/{old['id']}/void", json={"at": "2026-11-30T10:00:00Z"})
    assert response.status_code == 200 and response.json()["updated_at"] == "2026-11-30T10:00:00Z"
    ((again,),) = _pages(client, updated_after=latest)
    assert again["id"] == old["id"] and again["status"] == "voided" and again["redeemed_at"] == old["redeemed_at"]
    # voided while paging: never lost, it comes again on a later page
    first = client.get("/v1/redemptions", params={"limit": 10}).json()
    victim = first["data"][3]["id"]
    state.void(victim, datetime(2026, 12, 1, tzinfo=timezone.utc))
    rest, cursor = [], first["next_cursor"]
    while cursor:
        body = client.get("/v1/redemptions", params={"limit": 10, "cursor": cursor}).json()
        rest, cursor = rest + body["data"], body["next_cursor"]
    assert rest[-1]["id"] == victim and rest[-1]["status"] == "voided"
    # new redemptions come through the admin endpoint
    added = {**old, "id": "rdm_new1", "updated_at": "2026-12-02T00:00:00Z", "redeemed_at": "2026-12-02T00:00:00Z"}
    assert client.post("/_sim/redemptions", json=[added]).status_code == 201
    assert [r["id"] for p in _pages(client, updated_after="2026-12-01T00:00:00Z") for r in p] == ["rdm_new1"]


def test_cardivo_errors(world, cardivo_api):
    state, client = cardivo_api
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}):
        response = client.get("/v1/redemptions", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication"
        assert set(response.json()["error"]) == {"type", "message"}
    for params in (
        {"limit": 0},
        {"limit": 101},
        {"limit": "x"},
        {"redeemed_after": "yesterday"},
        {"redeemed_after": "2026-11-20T00:00:00"},
        {"updated_after": "2026-11-20"},
        {"status": "voided"},
        {"cursor": "not-a-cursor"},
        {"redeemed_after": "2026-11-22T00:00:00Z", "redeemed_before": "2026-11-21T00:00:00Z"},
    ):
        response = client.get("/v1/redemptions", params=params)
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request", params
    cursor = client.get("/v1/redemptions", params={"limit": 1, "updated_after": "2026-11-20T00:00:00Z"}).json()
    response = client.get(
        "/v1/redemptions", params={"cursor": cursor["next_cursor"], "updated_after": "2026-11-21T00:00:00Z"}
    )
    assert response.status_code == 400  # a cursor keeps its filters
    response = client.get("/v1/gift_cards/CRDV-0000-0000-0000")
    assert response.status_code == 404 and response.json() == {
        "error": {"type": "not_found", "message": response.json()["error"]["message"]}
    }
    assert "CRDV" not in response.text
    card = world.gift_cards[0]
    assert client.get(f"/v1/gift_cards/{card['code']}").json() == card
    assert state.stats()["refused"] == {"401": 2, "400": 10, "404": 1}


def test_cardivo_forced_faults(world, serve):
    state = cardivo.CardivoState(world.redemptions)
    limited = serve(cardivo.create_app(state, CARDIVO_KEY, rate_limit_rate=1.0, retry_after_s=2))
    failing = serve(cardivo.create_app(state, CARDIVO_KEY, error_rate=1.0, seed=3))
    auth = {"Authorization": f"Bearer {CARDIVO_KEY}"}
    response = httpx.get(f"{limited}/v1/redemptions", headers=auth)
    assert response.status_code == 429 and response.headers["Retry-After"] == "2"
    assert response.json()["error"]["type"] == "rate_limited"
    statuses = {httpx.get(f"{failing}/v1/redemptions", headers=auth).status_code for _ in range(12)}
    assert statuses == {500, 503}
    stats = httpx.get(f"{failing}/_sim/stats").json()
    assert stats["total"] == 13 and stats["refused"]["429"] == 1


# -- Stripe -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def stripe_api(serve):
    def start(state: stripe_sim.StripeState | None = None, retries: int = 0, **options):
        state = state or stripe_sim.StripeState()
        base = serve(stripe_sim.create_app(state, api_key=STRIPE_KEY, **options))
        client = stripe.StripeClient(STRIPE_KEY, base_addresses={"api": base}, max_network_retries=retries)
        return state, client, base

    return start


def test_stripe_customer_has_every_key_of_stripes_example(stripe_api):
    _, client, _ = stripe_api()
    created = client.v1.customers.create(params={"email": "ana.silva@example.com"}).to_dict()
    assert CUSTOMER_KEYS <= created.keys()
    example = json.loads(FIXTURES.read_text())["resources"]["customer"]
    assert example.keys() == CUSTOMER_KEYS and example.keys() <= created.keys()
    assert created["id"].startswith("cus_") and created["object"] == "customer" and created["livemode"] is False


def test_stripe_create_retrieve_update_delete(stripe_api):
    state, client, _ = stripe_api()
    created = client.v1.customers.create(
        params={
            "email": "Ana.Silva@example.com",
            "name": "Ana Silva",
            "phone": "+14155550100",
            "metadata": {"a": "1", "b": "2"},
        }
    )
    assert client.v1.customers.retrieve(created.id).to_dict() == created.to_dict()
    updated = client.v1.customers.update(created.id, params={"metadata": {"b": "", "c": "3"}, "name": "Ana S."})
    assert updated.to_dict()["metadata"] == {"a": "1", "c": "3"} and updated.name == "Ana S."
    assert updated.email == "Ana.Silva@example.com"  # untouched fields stay
    assert client.v1.customers.update(created.id, params={"metadata": ""}).to_dict()["metadata"] == {}
    deleted = client.v1.customers.delete(created.id).to_dict()
    assert deleted == {"id": created.id, "object": "customer", "deleted": True}
    # a deleted customer still retrieves, as its tombstone; updating it is a 404
    assert client.v1.customers.retrieve(created.id).to_dict() == deleted and state.get(created.id) is None
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.customers.update(created.id, params={"name": "x"})
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
    error = missing.value.json_body["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "id" and created.id in error["message"]
    with pytest.raises(stripe.InvalidRequestError) as never:
        client.v1.customers.retrieve("cus_never")
    assert never.value.http_status == 404 and never.value.code == "resource_missing"
    for params in ({"limit": 0}, {"limit": 101}, {"colour": "red"}, {"created": {"after": 1}}):
        with pytest.raises(stripe.InvalidRequestError) as bad:
            client.v1.customers.list(params=params)
        assert bad.value.http_status == 400
    with pytest.raises(stripe.InvalidRequestError, match="Invalid email"):
        client.v1.customers.create(params={"email": " padded@example.com "})
    assert state.stats()["writes"] == 4 and state.customers() == []


def test_stripe_list_pages_newest_first_and_filters(world, stripe_api):
    state, client, _ = stripe_api(stripe_sim.StripeState(world.customers))
    newest_first = [c["id"] for c in sorted(world.customers, key=lambda c: -c["created"])]
    seen, params = [], {"limit": 7}
    while True:
        page = client.v1.customers.list(params=params)
        assert page.object == "list" and page.url == "/v1/customers" and len(page.data) <= 7
        seen += [c.id for c in page.data]
        if not page.has_more:
            break
        params = {"limit": 7, "starting_after": page.data[-1].id}
    assert seen == newest_first
    back = client.v1.customers.list(params={"limit": 3, "ending_before": newest_first[10]})
    assert [c.id for c in back.data] == newest_first[7:10] and back.has_more
    # e-mail filter is exact and case-sensitive, like Stripe's
    pair = [
        c
        for c in world.customers
        if c["email"].lower() == Counter(x["email"].lower() for x in world.customers).most_common(1)[0][0]
    ]
    for customer in pair:
        assert [c.id for c in client.v1.customers.list(params={"email": customer["email"]}).data] == [customer["id"]]
    assert client.v1.customers.list(params={"email": pair[0]["email"].upper()}).data == []
    cut = sorted(c["created"] for c in world.customers)[30]
    newer = client.v1.customers.list(params={"created": {"gte": cut}, "limit": 100})
    older = client.v1.customers.list(params={"created": {"lt": cut}, "limit": 100})
    assert len(newer.data) == 30 and len(older.data) == 30 and all(c.created >= cut for c in newer.data)
    assert state.stats()["by_route"]["GET /v1/customers"]["reads"] == 9 + 1 + 3 + 2


def test_stripe_idempotent_replay_and_conflict(stripe_api):
    state, client, base = stripe_api()
    first = client.v1.customers.create(params={"email": "a@example.com"}, options={"idempotency_key": "k-1"})
    again = client.v1.customers.create(params={"email": "a@example.com"}, options={"idempotency_key": "k-1"})
    assert again.id == first.id and len(state.customers()) == 1
    stats = state.stats()
    assert (stats["writes"], stats["replays"]) == (1, 1)
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(params={"email": "b@example.com"}, options={"idempotency_key": "k-1"})
    # on the wire: the same status and body, marked as a replay
    headers = {"Authorization": f"Bearer {STRIPE_KEY}", "Idempotency-Key": "k-2"}
    one = httpx.post(f"{base}/v1/customers/{first.id}", data={"metadata[x]": "1"}, headers=headers)
    two = httpx.post(f"{base}/v1/customers/{first.id}", data={"metadata[x]": "1"}, headers=headers)
    assert (one.status_code, one.content) == (two.status_code, two.content) and one.status_code == 200
    assert "Idempotent-Replayed" not in one.headers and two.headers["Idempotent-Replayed"] == "true"
    assert one.headers["Request-Id"].startswith("req_") and one.headers["Request-Id"] != two.headers["Request-Id"]
    assert state.stats()["writes"] == 2


def test_stripe_sdk_retry_reuses_its_idempotency_key(stripe_api):
    state, client, _ = stripe_api(retries=1)
    state.lose_next_responses(1)  # applied, but the answer never arrives: the SDK retries with the same key
    created = client.v1.customers.create(params={"email": "retry@example.com"})
    assert [c["id"] for c in state.customers()] == [created.id]
    assert (state.stats()["writes"], state.stats()["replays"]) == (1, 1)


def test_stripe_injected_faults(stripe_api):
    state, _, base = stripe_api(lose_rate=1.0)
    headers = {"Authorization": f"Bearer {STRIPE_KEY}", "Idempotency-Key": "k-lost"}
    lost = httpx.post(f"{base}/v1/customers", data={"email": "lost@example.com"}, headers=headers)
    assert lost.status_code == 502 and len(state.customers()) == 1  # applied, the answer lost
    assert httpx.get(f"{base}/v1/customers", headers=headers).status_code == 200  # reads are not lost
    for rate, status in (("rate_limit_rate", {429}), ("error_rate", {500, 503})):
        state, _, base = stripe_api(**{rate: 1.0})
        answer = httpx.post(f"{base}/v1/customers", data={"email": "x@example.com"}, headers=headers)
        assert answer.status_code in status and state.customers() == []  # refused before anything is applied
    state, _, base = stripe_api(slow_rate=1.0, slow_s=0.2, seed=3)
    answer = httpx.get(f"{base}/v1/customers", headers=headers)
    assert answer.status_code == 200 and answer.elapsed.total_seconds() >= 0.2
    assert state.stats()["slow_answers"] == 1


def test_stripe_auth_rate_limit_and_request_ids(stripe_api):
    state, client, base = stripe_api(rate_limit_per_s=5)
    with pytest.raises(stripe.AuthenticationError):
        stripe.StripeClient("sk_test_wrong", base_addresses={"api": base}).v1.customers.list()
    with pytest.raises(stripe.RateLimitError):
        for _ in range(10):
            client.v1.customers.list()
    response = httpx.get(f"{base}/v1/customers", headers={"Authorization": f"Bearer {STRIPE_KEY}"})
    assert response.status_code == 429 and response.headers["Request-Id"].startswith("req_")
    assert response.json()["error"]["type"] == "rate_limit_error" and response.json()["error"]["code"] == "rate_limit"
    stats = httpx.get(f"{base}/_sim/stats").json()
    assert (stats["rate_limited"], stats["reads"], stats["errors"]) == (2, 5, 1)  # the 401 spends no budget
    assert httpx.post(f"{base}/_sim/reset_stats").json()["requests"] == 0
    assert httpx.get(f"{base}/v1/nothing").headers["Request-Id"].startswith("req_")


def test_background_server_starts_fast_and_stops(world):
    import time

    started = time.monotonic()
    server = BackgroundServer(cardivo.create_app(cardivo.CardivoState(), CARDIVO_KEY))
    with server:
        assert time.monotonic() - started < 1.0
        assert httpx.get(f"{server.base_url}/_sim/stats").status_code == 200
        base = server.base_url
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/_sim/stats")
