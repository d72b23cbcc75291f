"""The Stripe simulator's payment side (payment intents, charges, refunds, Radar early fraud warnings, events) through
the official `stripe` SDK over real HTTP, and the payments of the seeded world behind it."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, datetime, timezone
from pathlib import Path

import httpx
import pytest
import stripe

from giftflow_simulators import dataset
from giftflow_simulators import stripe as stripe_sim
from giftflow_simulators.server import BackgroundServer

DAYS = [date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22)]
KEY = "sk_test_sim"
# Stripe's own example objects (from ../shared/stripe/fixtures3.json), shipped with the tests so that every
# assertion runs with or without ../shared
FIXTURES = Path(__file__).resolve().parent / "data/stripe_examples.json"
# top-level keys of Stripe's own examples (shared/stripe/fixtures3.json), checked against the shipped copy above
EXAMPLE_KEYS = {
    "payment_intent": {
        "amount",
        "amount_capturable",
        "amount_details",
        "amount_received",
        "application",
        "application_fee_amount",
        "automatic_payment_methods",
        "canceled_at",
        "cancellation_reason",
        "capture_method",
        "client_secret",
        "confirmation_method",
        "created",
        "currency",
        "customer",
        "customer_account",
        "description",
        "excluded_payment_method_types",
        "id",
        "last_payment_error",
        "latest_charge",
        "livemode",
        "managed_payments",
        "metadata",
        "next_action",
        "object",
        "on_behalf_of",
        "payment_method",
        "payment_method_configuration_details",
        "payment_method_options",
        "payment_method_types",
        "processing",
        "receipt_email",
        "review",
        "setup_future_usage",
        "shipping",
        "source",
        "statement_descriptor",
        "statement_descriptor_suffix",
        "status",
        "transfer_data",
        "transfer_group",
    },
    "charge": {
        "amount",
        "amount_captured",
        "amount_refunded",
        "application",
        "application_fee",
        "application_fee_amount",
        "balance_transaction",
        "billing_details",
        "calculated_statement_descriptor",
        "captured",
        "created",
        "currency",
        "customer",
        "description",
        "disputed",
        "failure_balance_transaction",
        "failure_code",
        "failure_message",
        "fraud_details",
        "id",
        "livemode",
        "metadata",
        "object",
        "on_behalf_of",
        "outcome",
        "paid",
        "payment_intent",
        "payment_method",
        "payment_method_details",
        "receipt_email",
        "receipt_number",
        "receipt_url",
        "refunded",
        "refunds",
        "review",
        "shipping",
        "source",
        "source_transfer",
        "statement_descriptor",
        "statement_descriptor_suffix",
        "status",
        "transfer_data",
        "transfer_group",
    },
    "refund": {
        "amount",
        "balance_transaction",
        "charge",
        "created",
        "currency",
        "customer",
        "customer_account",
        "destination_details",
        "id",
        "metadata",
        "object",
        "payment_intent",
        "payment_method",
        "reason",
        "receipt_number",
        "source_transfer_reversal",
        "status",
        "transfer_reversal",
    },
    "radar.early_fraud_warning": {"actionable", "charge", "created", "fraud_type", "id", "livemode", "object"},
    "event": {"api_version", "created", "data", "id", "livemode", "object", "pending_webhooks", "request", "type"},
}


def unix(day: date, seconds: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()) + seconds


@pytest.fixture(scope="module")
def world() -> dataset.World:
    return dataset.build_world(11, DAYS)


@pytest.fixture
def stripe_api():
    servers = []

    def start(state: stripe_sim.StripeState | None = None, retries: int = 0, **options):
        state = state or stripe_sim.StripeState()
        servers.append(BackgroundServer(stripe_sim.create_app(state, api_key=KEY, **options)))
        base = servers[-1].start()
        return state, stripe.StripeClient(KEY, base_addresses={"api": base}, max_network_retries=retries), base

    yield start
    for server in servers:
        server.stop()


def _all(list_method, **params) -> list[dict]:
    """Every object of a Stripe list, paging with `starting_after` as giftflow does."""
    seen, params = [], {"limit": 100, **params}
    while True:
        page = list_method(params=params)
        seen += [o.to_dict() for o in page.data]
        if not page.has_more:
            return seen
        params = {**params, "starting_after": page.data[-1].id}


def _paid(client, amount: int = 5000, **params) -> tuple[dict, dict]:
    pi = client.v1.payment_intents.create(
        params={"amount": amount, "currency": "usd", "confirm": True, "payment_method": "pm_card_visa", **params}
    ).to_dict()
    return pi, client.v1.charges.retrieve(pi["latest_charge"]).to_dict()


# -- the world's payments ---------------------------------------------------------------------------------------------


def test_world_payments_are_realistic_and_leave_the_rest_alone(world):
    assert dataset.build_world(11, DAYS) == world
    other = dataset.build_world(11, DAYS, payments_per_day=30)
    assert (other.customers, other.redemptions) == (world.customers, world.redemptions)
    assert len(other.payment_intents) > len(world.payment_intents)
    pis, charges, warnings = world.payment_intents, world.charges, world.early_fraud_warnings
    customer_ids = {c["id"] for c in world.customers}
    assert len({o["id"] for o in pis + charges + warnings}) == len(pis) + len(charges) + len(warnings)
    assert Counter(p["status"] for p in pis).most_common(1)[0][0] == "succeeded"
    assert {p["customer"] for p in pis} - {None} <= customer_ids and any(p["customer"] is None for p in pis)
    assert any(p["currency"] == "eur" and p["status"] == "succeeded" for p in pis)
    by_charge = {c["id"]: c for c in charges}
    for day in DAYS:
        usd = [
            p["amount"]
            for p in pis
            if p["status"] == "succeeded" and p["currency"] == "usd" and unix(day) <= p["created"] < unix(day, 86400)
        ]
        for threshold in (100000, 200000):
            assert any(a <= threshold for a in usd) and any(a > threshold for a in usd), (day, threshold)
            assert threshold in usd  # the boundary itself: not over it
        day_warnings = [w for w in warnings if unix(day) <= w["created"] < unix(day, 86400)]
        unrefunded = [by_charge[w["charge"]]["amount"] - by_charge[w["charge"]]["amount_refunded"] for w in day_warnings]
        assert any(0 < left < 1500 for left in unrefunded) and any(left >= 20000 for left in unrefunded), day
    for pi in pis:
        assert unix(DAYS[0]) <= pi["created"] <= unix(DAYS[-1], 86399)
        if pi["status"] == "succeeded":
            charge = by_charge[pi["latest_charge"]]
            assert (charge["payment_intent"], charge["amount"], charge["customer"], charge["created"]) == (
                pi["id"],
                pi["amount"],
                pi["customer"],
                pi["created"],
            )
        else:
            assert pi["latest_charge"] is None
    assert len(charges) == sum(p["status"] == "succeeded" for p in pis)
    for charge in charges:
        assert charge["amount_refunded"] == sum(r["amount"] for r in charge["refunds"]["data"]) <= charge["amount"]
        assert charge["refunded"] == (charge["amount_refunded"] == charge["amount"])
    assert any(0 < c["amount_refunded"] < c["amount"] for c in charges) and any(c["disputed"] for c in charges)
    warned = [by_charge[w["charge"]] for w in warnings]
    assert sum(c["refunded"] for c in warned) == 1 and any(c["disputed"] for c in warned)
    assert any(c["currency"] == "eur" for c in warned) and any(c["amount"] - c["amount_refunded"] == 1500 for c in warned)
    assert any(0 < c["amount_refunded"] < c["amount"] and c["amount"] - c["amount_refunded"] < 1500 for c in warned)
    for w in warnings:
        charge = by_charge[w["charge"]]
        assert w["created"] > charge["created"] and w["payment_intent"] == charge["payment_intent"]
        assert w["actionable"] == (not charge["refunded"] and not charge["disputed"])
        assert all(r["created"] < w["created"] for r in charge["refunds"]["data"]) or not charge["refunded"]


# -- objects ----------------------------------------------------------------------------------------------------------


def test_every_new_object_has_every_key_of_stripes_example(stripe_api):
    state, client, base = stripe_api()
    pi, charge = _paid(client)
    refund = client.v1.refunds.create(params={"charge": charge["id"], "amount": 100}).to_dict()
    warning = httpx.post(f"{base}/_sim/early_fraud_warnings", json={"charge": charge["id"]}).json()
    warning = client.v1.radar.early_fraud_warnings.retrieve(warning["id"]).to_dict()
    event = client.v1.events.list().data[0].to_dict()
    got = {"payment_intent": pi, "charge": charge, "refund": refund, "radar.early_fraud_warning": warning, "event": event}
    examples = json.loads(FIXTURES.read_text())["resources"]
    for kind, obj in got.items():
        assert EXAMPLE_KEYS[kind] <= obj.keys(), (kind, EXAMPLE_KEYS[kind] - obj.keys())
        assert obj["object"] == kind and obj.get("livemode", False) is False  # refunds have no livemode
        assert examples[kind].keys() == EXAMPLE_KEYS[kind], kind
    assert pi["id"].startswith("pi_") and charge["id"].startswith("ch_") and refund["id"].startswith("re_")
    assert warning["id"].startswith("issfr_") and event["id"].startswith("evt_")
    assert warning["payment_intent"] == pi["id"] and warning["charge"] == charge["id"]
    assert charge["refunds"]["object"] == "list" and charge["refunds"]["url"] == f"/v1/charges/{charge['id']}/refunds"
    # the same keys on objects preloaded from the world
    world_state = stripe_sim.StripeState.from_world(dataset.build_world(3, DAYS[:1], payments_per_day=10))
    for kind in ("payment_intent", "charge", "refund", "radar.early_fraud_warning", "event"):
        assert world_state.objects(kind) and all(EXAMPLE_KEYS[kind] <= o.keys() for o in world_state.objects(kind))


def test_payment_intents_create_confirm_retrieve(stripe_api):
    state, client, _ = stripe_api()
    customer = client.v1.customers.create(params={"email": "ana@example.com", "name": "Ana"})
    pi = client.v1.payment_intents.create(
        params={
            "amount": 250000,
            "currency": "USD",
            "customer": customer.id,
            "description": "Order #1",
            "metadata": {"order_id": "1"},
        }
    )
    assert (pi.status, pi.latest_charge, pi.amount_received, pi.currency) == ("requires_payment_method", None, 0, "usd")
    assert pi.client_secret.startswith(pi.id + "_secret_")
    with pytest.raises(stripe.InvalidRequestError, match="missing a payment method"):
        client.v1.payment_intents.confirm(pi.id)
    confirmed = client.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_visa"})
    assert (confirmed.status, confirmed.amount_received) == ("succeeded", 250000)
    assert client.v1.payment_intents.retrieve(pi.id).to_dict() == confirmed.to_dict()
    charge = client.v1.charges.retrieve(confirmed.latest_charge).to_dict()
    assert {
        k: charge[k]
        for k in (
            "amount",
            "amount_captured",
            "amount_refunded",
            "refunded",
            "disputed",
            "currency",
            "customer",
            "payment_intent",
            "status",
            "paid",
            "metadata",
        )
    } == {
        "amount": 250000,
        "amount_captured": 250000,
        "amount_refunded": 0,
        "refunded": False,
        "disputed": False,
        "currency": "usd",
        "customer": customer.id,
        "payment_intent": pi.id,
        "status": "succeeded",
        "paid": True,
        "metadata": {"order_id": "1"},
    }
    assert charge["billing_details"]["email"] == "ana@example.com" and charge["refunds"]["data"] == []
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.payment_intents.confirm(pi.id)
    assert again.value.code == "payment_intent_unexpected_state" and again.value.http_status == 400
    # create + confirm at once, without a customer
    one_go, _ = _paid(client, 1200)
    assert one_go["status"] == "succeeded" and one_go["customer"] is None and one_go["latest_charge"]
    for params, code, status in (
        ({"amount": 10, "currency": "usd"}, "amount_too_small", 400),
        ({"currency": "usd"}, "parameter_missing", 400),
        ({"amount": 100, "currency": "usd", "colour": "red"}, "parameter_unknown", 400),
        ({"amount": 100, "currency": "usd", "customer": "cus_nope"}, "resource_missing", 404),
    ):
        with pytest.raises(stripe.InvalidRequestError) as bad:
            client.v1.payment_intents.create(params=params)
        assert (bad.value.code, bad.value.http_status) == (code, status), params
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.payment_intents.retrieve("pi_nope")
    assert missing.value.http_status == 404 and "No such payment_intent" in str(missing.value)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.charges.retrieve("ch_nope")
    stats = state.stats()["by_route"]
    assert stats["POST /v1/payment_intents"] == {"requests": 6, "writes": 2, "errors": 4}
    assert stats["POST /v1/payment_intents/{id}/confirm"] == {"requests": 3, "writes": 1, "errors": 2}


def test_payment_intents_and_charges_list_by_day_customer_and_pages(world, stripe_api):
    state, client, _ = stripe_api(stripe_sim.StripeState.from_world(world))
    newest_first = sorted(world.payment_intents, key=lambda p: -p["created"])
    day = {"gte": unix(DAYS[1]), "lt": unix(DAYS[2])}
    expected = [p["id"] for p in newest_first if day["gte"] <= p["created"] < day["lt"]]
    seen, params = [], {"limit": 7, "created": day}
    while True:
        page = client.v1.payment_intents.list(params=params)
        assert page.url == "/v1/payment_intents" and len(page.data) <= 7
        seen += [p.id for p in page.data]
        if not page.has_more:
            break
        params = {**params, "starting_after": page.data[-1].id}
    assert seen == expected and len(expected) > 7
    back = client.v1.payment_intents.list(params={"limit": 3, "ending_before": expected[6], "created": day})
    assert [p.id for p in back.data] == expected[3:6] and back.has_more
    # gt / lte: the day's last second belongs to it, its first second to the day before
    last_second = [
        p["id"]
        for p in _all(client.v1.payment_intents.list, created={"gt": unix(DAYS[1], 86398), "lte": unix(DAYS[1], 86399)})
    ]
    assert last_second == [p["id"] for p in newest_first if p["created"] == unix(DAYS[1], 86399)] != []
    customer = Counter(p["customer"] for p in world.payment_intents if p["customer"]).most_common(1)[0][0]
    assert [p["id"] for p in _all(client.v1.payment_intents.list, customer=customer)] == [
        p["id"] for p in newest_first if p["customer"] == customer
    ]
    charges = _all(client.v1.charges.list, created=day)
    assert [c["id"] for c in charges] == [
        c["id"] for c in sorted(world.charges, key=lambda c: -c["created"]) if day["gte"] <= c["created"] < day["lt"]
    ]
    by_id = {c["id"]: c for c in world.charges}
    for charge in charges:  # the world's state of every charge, refunds included
        assert {k: charge[k] for k in ("amount", "amount_refunded", "refunded", "disputed", "customer")} == {
            k: by_id[charge["id"]][k] for k in ("amount", "amount_refunded", "refunded", "disputed", "customer")
        }
        assert [r["id"] for r in charge["refunds"]["data"]] == [r["id"] for r in by_id[charge["id"]]["refunds"]["data"]]
    paid = next(p for p in world.payment_intents if p["status"] == "succeeded")
    unpaid = next(p for p in world.payment_intents if p["status"] != "succeeded")
    assert [c.id for c in client.v1.charges.list(params={"payment_intent": paid["id"]}).data] == [paid["latest_charge"]]
    assert client.v1.charges.list(params={"payment_intent": unpaid["id"]}).data == []
    assert len(_all(client.v1.charges.list, customer=customer)) == sum(c["customer"] == customer for c in world.charges)
    with pytest.raises(stripe.InvalidRequestError) as bad:
        client.v1.charges.list(params={"created": {"after": 1}})
    assert bad.value.code == "parameter_unknown"


# -- refunds ----------------------------------------------------------------------------------------------------------


def test_refunds_follow_stripes_rules(stripe_api):
    state, client, _ = stripe_api()
    pi, charge = _paid(client, 5000)
    partial = client.v1.refunds.create(
        params={"charge": charge["id"], "amount": 1500, "reason": "requested_by_customer", "metadata": {"case": "7"}}
    )
    assert (partial.amount, partial.status, partial.payment_intent, partial.reason) == (
        1500,
        "succeeded",
        pi["id"],
        "requested_by_customer",
    )
    after = client.v1.charges.retrieve(charge["id"])
    assert (after.amount_refunded, after.refunded, [r.id for r in after.refunds.data]) == (1500, False, [partial.id])
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"charge": charge["id"], "amount": 3501})
    assert (too_much.value.code, too_much.value.http_status) == ("amount_too_large", 400)
    assert too_much.value.json_body["error"]["type"] == "invalid_request_error"
    for params, code in (
        ({"amount": 0}, "parameter_invalid_integer"),
        ({"reason": "changed_mind"}, None),
        ({"amount": "x"}, "parameter_invalid_integer"),
    ):
        with pytest.raises(stripe.InvalidRequestError) as bad:
            client.v1.refunds.create(params={"charge": charge["id"], **params})
        assert bad.value.http_status == 400 and bad.value.code == code, params
    rest = client.v1.refunds.create(params={"payment_intent": pi["id"]})  # by payment intent, the rest by default
    assert (rest.amount, rest.charge) == (3500, charge["id"])
    done = client.v1.charges.retrieve(charge["id"])
    assert (done.amount_refunded, done.refunded, [r.id for r in done.refunds.data]) == (5000, True, [rest.id, partial.id])
    with pytest.raises(stripe.InvalidRequestError) as nothing_left:
        client.v1.refunds.create(params={"charge": charge["id"], "amount": 1})
    assert nothing_left.value.code == "charge_already_refunded"
    assert client.v1.refunds.retrieve(partial.id).to_dict() == partial.to_dict()
    _, other = _paid(client, 900)
    client.v1.refunds.create(params={"charge": other["id"]})
    assert [r.id for r in client.v1.refunds.list(params={"charge": charge["id"]}).data] == [rest.id, partial.id]
    assert len(client.v1.refunds.list().data) == 3
    with pytest.raises(stripe.InvalidRequestError) as neither:
        client.v1.refunds.create()
    assert neither.value.code == "parameter_missing"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.refunds.create(params={"charge": "ch_nope"})
    assert unknown.value.http_status == 404 and unknown.value.json_body["error"]["param"] == "charge"
    # a disputed charge cannot be refunded
    _, disputed = _paid(client, 1000)
    state.dispute(disputed["id"])
    with pytest.raises(stripe.InvalidRequestError) as charged_back:
        client.v1.refunds.create(params={"charge": disputed["id"]})
    assert charged_back.value.code == "charge_disputed"
    counts = state.stats()["by_route"]["POST /v1/refunds"]
    assert (counts["writes"], counts["errors"]) == (3, 8)  # only applied refunds count as writes


def test_refund_replay_with_the_same_idempotency_key_refunds_once(stripe_api):
    state, client, base = stripe_api(retries=1)
    _, charge = _paid(client, 4000)
    options = {"idempotency_key": "refund-ch-1"}
    first = client.v1.refunds.create(params={"charge": charge["id"], "amount": 1000}, options=options)
    again = client.v1.refunds.create(params={"charge": charge["id"], "amount": 1000}, options=options)
    assert again.to_dict() == first.to_dict()
    assert client.v1.charges.retrieve(charge["id"]).amount_refunded == 1000 and len(state.objects("refund")) == 1
    with pytest.raises(stripe.IdempotencyError):
        client.v1.refunds.create(params={"charge": charge["id"], "amount": 2000}, options=options)
    # the answer to a refund is lost: the SDK's retry with its own key gets the saved refund, not a second one
    state.lose_next_responses(1)
    retried = client.v1.refunds.create(params={"charge": charge["id"], "amount": 500})
    assert [r["id"] for r in state.objects("refund")] == [retried.id, first.id]
    counts = state.stats()["by_route"]["POST /v1/refunds"]
    assert (counts["writes"], counts["replays"], counts["errors"]) == (2, 2, 1)
    refund_events = [e for e in state.objects("event") if e["type"] == "refund.created"]
    assert len(refund_events) == 2 and refund_events[-1]["request"]["idempotency_key"] == "refund-ch-1"


# -- early fraud warnings, disputes, the clock ------------------------------------------------------------------------


def test_early_fraud_warnings_listed_by_created_day(world, stripe_api):
    state, client, base = stripe_api(stripe_sim.StripeState.from_world(world))
    for day in DAYS:
        got = _all(client.v1.radar.early_fraud_warnings.list, created={"gte": unix(day), "lt": unix(day, 86400)})
        newest_first = sorted(world.early_fraud_warnings, key=lambda w: -w["created"])
        assert (
            [w["id"] for w in got] == [w["id"] for w in newest_first if unix(day) <= w["created"] < unix(day, 86400)] != []
        )
        assert {w["object"] for w in got} == {"radar.early_fraud_warning"}
    warning = world.early_fraud_warnings[0]
    got = client.v1.radar.early_fraud_warnings.retrieve(warning["id"]).to_dict()
    assert {k: got[k] for k in warning} == warning
    for name in ("charge", "payment_intent"):
        assert [w.id for w in client.v1.radar.early_fraud_warnings.list(params={name: warning[name]}).data] == [
            w["id"] for w in world.early_fraud_warnings if w[name] == warning[name]
        ]
    page = client.v1.radar.early_fraud_warnings.list(params={"limit": 2})
    assert page.has_more and page.url == "/v1/radar/early_fraud_warnings"
    nxt = client.v1.radar.early_fraud_warnings.list(params={"limit": 2, "starting_after": page.data[-1].id})
    assert not {w.id for w in nxt.data} & {w.id for w in page.data}
    # a new warning on a chosen past day, through the admin endpoint and the frozen clock
    charge = next(c for c in world.charges if not c["refunded"] and not c["disputed"])
    at = unix(DAYS[2], 12 * 3600)
    assert httpx.post(f"{base}/_sim/clock", json={"now": at}).json() == {"now": at, "frozen": True}
    made = httpx.post(f"{base}/_sim/early_fraud_warnings", json={"charge": charge["id"], "fraud_type": "misc"})
    assert made.status_code == 200 and made.json()["created"] == at and made.json()["actionable"] is True
    assert httpx.post(f"{base}/_sim/clock", json={"now": None}).json()["frozen"] is False
    late = httpx.post(f"{base}/_sim/early_fraud_warnings", json={"charge": charge["id"], "created": at - 5}).json()
    assert late["created"] == at - 5 and late["fraud_type"] == "made_with_stolen_card"
    day3 = [
        w.id
        for w in client.v1.radar.early_fraud_warnings.list(
            params={"created": {"gte": unix(DAYS[2]), "lt": unix(DAYS[2], 86400)}, "limit": 100}
        ).data
    ]
    every = sorted([*world.early_fraud_warnings, made.json(), late], key=lambda w: -w["created"])
    assert day3 == [w["id"] for w in every if unix(DAYS[2]) <= w["created"] < unix(DAYS[2], 86400)]
    created_events = client.v1.events.list(
        params={"type": "radar.early_fraud_warning.created", "created": {"gte": at, "lte": at}}
    ).data
    assert [e.data.object.id for e in created_events] == [made.json()["id"]]
    # a dispute: the charge is disputed, its warnings no longer actionable
    disputed = httpx.post(f"{base}/_sim/disputes", json={"charge": charge["id"]}).json()
    assert disputed["disputed"] is True and client.v1.charges.retrieve(charge["id"]).disputed is True
    assert client.v1.radar.early_fraud_warnings.retrieve(made.json()["id"]).actionable is False
    assert client.v1.events.list(params={"type": "charge.dispute.created"}).data[0].data.object.charge == charge["id"]
    for path, body, status in (
        ("/_sim/early_fraud_warnings", {"charge": "ch_nope"}, 404),
        ("/_sim/early_fraud_warnings", {"charge": charge["id"], "fraud_type": "x"}, 400),
        ("/_sim/early_fraud_warnings", {}, 400),
        ("/_sim/disputes", {"charge": "ch_nope"}, 404),
        ("/_sim/clock", {"now": "soon"}, 400),
    ):
        response = httpx.post(base + path, json=body)
        assert response.status_code == status and response.json()["error"]["message"], (path, body)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.radar.early_fraud_warnings.retrieve("issfr_nope")


# -- events -----------------------------------------------------------------------------------------------------------


def test_events_record_every_change_and_list_by_type_and_created(stripe_api):
    state, client, _ = stripe_api()
    day1, day2 = unix(DAYS[0], 3600), unix(DAYS[1], 7200)
    state.set_now(day1)
    customer = client.v1.customers.create(params={"email": "ana@example.com", "metadata": {"a": "1"}})
    client.v1.customers.update(customer.id, params={"metadata": {"Tier": "VIP"}})
    client.v1.customers.update(customer.id, params={"metadata": {"Tier": "VIP"}})  # no change: no event
    pi, charge = _paid(client, 150000, customer=customer.id)
    state.set_now(day2)
    refund = client.v1.refunds.create(
        params={"charge": charge["id"], "amount": 150000}, options={"idempotency_key": "full-refund"}
    )
    warning = state.create_early_fraud_warning(charge["id"])
    gone = client.v1.customers.create(params={"email": "gone@example.com"})
    client.v1.customers.delete(gone.id)
    events = _all(client.v1.events.list)
    assert [e["type"] for e in events] == [
        "customer.deleted",
        "customer.created",
        "radar.early_fraud_warning.created",
        "charge.refunded",
        "refund.created",
        "payment_intent.succeeded",
        "charge.succeeded",
        "payment_intent.created",
        "customer.updated",
        "customer.created",
    ]
    assert [e["created"] for e in events] == [day2] * 5 + [day1] * 5
    updated = events[-2]
    assert updated["data"]["object"]["metadata"] == {"a": "1", "Tier": "VIP"}
    assert updated["data"]["previous_attributes"] == {"metadata": {"a": "1"}}
    # snapshots: the charge as it was then
    succeeded, refunded = events[6]["data"]["object"], events[3]["data"]["object"]
    assert (succeeded["id"], succeeded["amount_refunded"], succeeded["refunded"]) == (charge["id"], 0, False)
    assert (refunded["amount_refunded"], refunded["refunded"]) == (150000, True)
    assert events[3]["data"]["previous_attributes"]["amount_refunded"] == 0
    assert events[4]["data"]["object"]["id"] == refund.id and events[4]["request"]["idempotency_key"] == "full-refund"
    assert events[5]["data"]["object"]["id"] == pi["id"] and events[5]["data"]["object"]["status"] == "succeeded"
    assert events[2]["data"]["object"] == warning and warning["actionable"] is False  # on a fully refunded charge
    assert events[0]["data"]["object"]["id"] == gone.id
    assert all(e["api_version"] and e["request"]["id"].startswith("req_") for e in events if e is not events[2])
    assert events[2]["request"] == {"id": None, "idempotency_key": None}  # made by Stripe, not by a request
    assert events[-1]["request"]["id"] == customer.last_response.request_id  # the Request-Id header
    # filters: exact type, a wildcard, a list of types, created bounds, and paging within them
    assert [e.id for e in client.v1.events.list(params={"type": "charge.refunded"}).data] == [events[3]["id"]]
    assert [e.type for e in client.v1.events.list(params={"type": "charge.*"}).data] == [
        "charge.refunded",
        "charge.succeeded",
    ]
    assert [e.type for e in client.v1.events.list(params={"types": ["customer.created", "refund.created"]}).data] == [
        "customer.created",
        "refund.created",
        "customer.created",
    ]
    on_day1 = _all(client.v1.events.list, created={"gte": unix(DAYS[0]), "lt": unix(DAYS[1])})
    assert [e["id"] for e in on_day1] == [e["id"] for e in events[5:]]
    succeeded_day2 = client.v1.events.list(params={"type": "payment_intent.succeeded", "created": {"gt": day1}})
    assert succeeded_day2.data == []
    first = client.v1.events.list(params={"limit": 2, "created": {"lte": day1}})
    second = client.v1.events.list(params={"limit": 2, "created": {"lte": day1}, "starting_after": first.data[-1].id})
    assert [e.id for e in first.data + second.data] == [e["id"] for e in events[5:9]] and second.has_more
    assert client.v1.events.retrieve(events[3]["id"]).to_dict() == events[3]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.events.list(params={"type": "charge.refunded", "types": ["refund.created"]})
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.events.retrieve("evt_nope")
    assert missing.value.http_status == 404


def test_world_events_replay_the_payments_history(world):
    state = stripe_sim.StripeState.from_world(world)
    events = state.objects("event")
    types = Counter(e["type"] for e in events)
    succeeded = sum(p["status"] == "succeeded" for p in world.payment_intents)
    refunds = sum(len(c["refunds"]["data"]) for c in world.charges)
    assert (types["payment_intent.succeeded"], types["charge.succeeded"]) == (succeeded, succeeded)
    assert types["refund.created"] == types["charge.refunded"] == refunds > 0
    assert types["radar.early_fraud_warning.created"] == len(world.early_fraud_warnings)
    assert "customer.created" not in types  # preloaded customers predate the events Stripe keeps
    for event in events:
        obj = event["data"]["object"]
        if event["type"] in ("payment_intent.created", "charge.succeeded", "radar.early_fraud_warning.created"):
            assert event["created"] == obj["created"]
    assert [e["created"] for e in events] == sorted((e["created"] for e in events), reverse=True)
    loaded = state.objects("radar.early_fraud_warning")
    assert [w["id"] for w in loaded] == [w["id"] for w in reversed(world.early_fraud_warnings)]
    assert all({k: w[k] for k in given} == given for w, given in zip(loaded, reversed(world.early_fraud_warnings)))


def test_new_routes_are_counted_and_rate_limited(world, stripe_api):
    state, client, base = stripe_api(stripe_sim.StripeState.from_world(world), rate_limit_per_s=4)
    client.v1.charges.list()
    client.v1.events.list()
    client.v1.radar.early_fraud_warnings.list()
    client.v1.payment_intents.retrieve(world.payment_intents[0]["id"])
    with pytest.raises(stripe.RateLimitError):
        client.v1.refunds.list()
    by_route = httpx.get(f"{base}/_sim/stats").json()["by_route"]
    assert by_route["GET /v1/charges"] == {"requests": 1, "reads": 1}
    assert by_route["GET /v1/payment_intents/{id}"] == {"requests": 1, "reads": 1}
    assert by_route["GET /v1/refunds"] == {"requests": 1, "rate_limited": 1}
    assert {"GET /v1/events", "GET /v1/radar/early_fraud_warnings"} <= by_route.keys()
