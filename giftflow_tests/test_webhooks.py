"""The webhook receiver over real HTTP: signatures, staleness, replays, malformed bodies, card-code redaction."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import sqlalchemy as sa

from giftflow.adapters.store import GiftflowStore
from giftflow.webhooks import create_app
from giftflow_simulators.server import BackgroundServer
from giftflow_tests.harness import ROOT, create_database, free_port, wait_for

EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)

CARDIVO_SECRET = "cardivo_whsec_test"
STRIPE_SECRET = "whsec_test_giftflow"
CODE = "CRDV-7K2M-Q9XA-4821"
MiB = 1 << 20


def sign(body: bytes, secret: str, ts: int | None = None) -> str:
    """`t=<ts>,v1=<hex hmac>` the way Cardivo and Stripe both build it."""
    ts = int(time.time()) if ts is None else ts
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def cardivo_event(event_id: str = "evt_c1") -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "type": "redemption.created",
            "created": "2024-05-01T12:00:00Z",
            "data": {
                "id": "rdm_1",
                "amount": 2500,
                "currency": "usd",
                "gift_card": {"id": "gc_1Pz9", "code": CODE, "initial_value": 5000, "currency": "usd"},
            },
        }
    ).encode()


def stripe_event(event_id: str = "evt_s1") -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "customer.updated",
            "created": 1714564800,
            "livemode": False,
            "data": {"object": {"id": "cus_1", "object": "customer"}},
        }
    ).encode()


SOURCES = {
    "cardivo": ("Cardivo-Signature", CARDIVO_SECRET, cardivo_event),
    "stripe": ("Stripe-Signature", STRIPE_SECRET, stripe_event),
}


_ids = itertools.count(1)


# One store and server for the module keeps the file fast; each test uses its own event ids instead.
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return GiftflowStore(database_url=f"sqlite:///{tmp_path_factory.mktemp('webhooks')}/webhooks.sqlite")


@pytest.fixture(scope="module")
def base(store):
    with BackgroundServer(create_app(store, cardivo_secret=CARDIVO_SECRET, stripe_secret=STRIPE_SECRET)) as srv:
        yield srv.base_url


@pytest.fixture(scope="module")
def unconfigured_base(store):
    with BackgroundServer(create_app(store, cardivo_secret=None, stripe_secret=None)) as srv:
        yield srv.base_url


@pytest.fixture(params=sorted(SOURCES))
def source(request):
    return request.param


@pytest.fixture
def eid(source):
    return f"evt_{source[0]}{next(_ids)}"


def stored(store: GiftflowStore, source: str, event_id: str) -> list[dict]:
    return [e for e in store.webhook_events_since(source, EPOCH) if e["event_id"] == event_id]


def post(base: str, source: str, body: bytes, signature: str | None) -> httpx.Response:
    header = SOURCES[source][0]
    headers = {"Content-Type": "application/json", **({header: signature} if signature is not None else {})}
    return httpx.post(f"{base}/webhooks/{source}", content=body, headers=headers, timeout=5)


def test_healthz(base):
    assert httpx.get(base + "/healthz").status_code == 200


def test_valid_delivery_is_stored(base, store, source, eid):
    _, secret, event = SOURCES[source]
    r = post(base, source, event(eid), sign(event(eid), secret))
    assert r.status_code == 200 and r.json() == {"received": True}
    [row] = stored(store, source, eid)
    assert row["payload"]["id"] == eid


def test_cardivo_card_code_cut_to_last_4(base, store):
    body = cardivo_event("evt_code")
    r = post(base, "cardivo", body, sign(body, CARDIVO_SECRET))
    assert r.status_code == 200 and CODE not in r.text
    [row] = stored(store, "cardivo", "evt_code")
    assert row["type"] == "redemption.created"
    assert row["payload"]["data"]["gift_card"]["code"] == "…4821"
    assert CODE not in json.dumps(row, default=str)


def test_any_of_several_v1_signatures_may_match(base, store, source, eid):
    _, secret, event = SOURCES[source]
    ts, v1 = sign(event(eid), secret).split(",")
    r = post(base, source, event(eid), f"{ts},v1={'0' * 64},{v1}")
    assert r.status_code == 200 and len(stored(store, source, eid)) == 1


@pytest.mark.parametrize(
    "case", ["wrong_secret", "tampered_body", "old", "future", "missing_header", "malformed_header", "not_json", "no_id"]
)
def test_rejected_with_400_and_not_stored(base, store, source, eid, case):
    _, secret, event = SOURCES[source]
    body, now = event(eid), int(time.time())
    signature = {
        "wrong_secret": lambda: sign(body, "whsec_forged"),
        "tampered_body": lambda: sign(body.replace(b"evt_", b"evX_"), secret),
        "old": lambda: sign(body, secret, now - 301 - 5),
        "future": lambda: sign(body, secret, now + 301 + 5),
        "missing_header": lambda: None,
        "malformed_header": lambda: "garbage",
    }.get(case, lambda: None)()
    if case == "not_json":
        body = b"{not json"
        signature = sign(body, secret)
    elif case == "no_id":
        body = json.dumps({"type": "redemption.created", "data": {}}).encode()
        signature = sign(body, secret)
    before = store.webhook_events_since(source, EPOCH)
    r = post(base, source, body, signature)
    assert r.status_code == 400, r.text
    assert "error" in r.json() and CODE not in r.text
    assert store.webhook_events_since(source, EPOCH) == before


def test_replayed_delivery_is_acknowledged_and_stored_once(base, store, source, eid):
    _, secret, event = SOURCES[source]
    first = post(base, source, event(eid), sign(event(eid), secret))
    again = post(base, source, event(eid), sign(event(eid), secret, int(time.time()) + 1))  # a retry: new t
    assert first.json() == {"received": True}
    assert again.status_code == 200 and again.json() == {"received": True, "duplicate": True}
    assert len(stored(store, source, eid)) == 1


def test_stale_replay_is_refused_as_stale(base, store, source, eid):
    _, secret, event = SOURCES[source]
    assert post(base, source, event(eid), sign(event(eid), secret)).status_code == 200
    old = post(base, source, event(eid), sign(event(eid), secret, int(time.time()) - 3600))
    assert old.status_code == 400 and "duplicate" not in old.text
    assert len(stored(store, source, eid)) == 1


def test_cardivo_staleness_uses_injected_clock(tmp_path):
    store = GiftflowStore(database_url=f"sqlite:///{tmp_path}/clock.sqlite")
    body, ts = cardivo_event(), 1_700_000_000
    app = create_app(store, cardivo_secret=CARDIVO_SECRET, stripe_secret=None, clock=lambda: ts + 300)
    with BackgroundServer(app) as srv:
        assert post(srv.base_url, "cardivo", body, sign(body, CARDIVO_SECRET, ts)).status_code == 200
        assert post(srv.base_url, "cardivo", body, sign(body, CARDIVO_SECRET, ts - 1)).status_code == 400


def test_deliveries_older_than_the_retention_are_pruned_at_most_hourly(tmp_path):
    store = GiftflowStore(database_url=f"sqlite:///{tmp_path}/prune.sqlite")
    clock = [time.time()]
    app = create_app(store, cardivo_secret=CARDIVO_SECRET, stripe_secret=None, clock=lambda: clock[0], retention_days=30)

    def deliver(event_id: str) -> None:
        body = cardivo_event(event_id)
        assert post(srv.base_url, "cardivo", body, sign(body, CARDIVO_SECRET, int(clock[0]))).status_code == 200

    def backdate(event_id: str, days: float) -> None:
        with store.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE webhook_events SET received_at = :t WHERE event_id = :e"),
                {"t": datetime.now(timezone.utc) - timedelta(days=days), "e": event_id},
            )

    def kept() -> set[str]:
        return {e["event_id"] for e in store.webhook_events_since("cardivo", EPOCH)}

    with BackgroundServer(app) as srv:
        for eid, age in (("evt_old", 31), ("evt_recent", 29)):  # held from before the receiver started
            store.record_webhook_event("cardivo", eid, "redemption.created", {"id": eid})
            backdate(eid, age)
        deliver("evt_new")  # the receiver's first delivery prunes
        assert kept() == {"evt_recent", "evt_new"}
        backdate("evt_recent", 40)
        deliver("evt_later")  # within the hour: no second prune
        assert kept() == {"evt_recent", "evt_new", "evt_later"}
        clock[0] += 3601
        deliver("evt_next_hour")
        assert kept() == {"evt_new", "evt_later", "evt_next_hour"}


def test_unconfigured_secret_answers_503(unconfigured_base, store, source, eid):
    _, secret, event = SOURCES[source]
    r = post(unconfigured_base, source, event(eid), sign(event(eid), secret))
    assert r.status_code == 503 and r.json() == {"error": "webhook secret not configured"}
    assert stored(store, source, eid) == []


def test_deliveries_are_read_per_source_oldest_first(base, store):
    cardivo_body = cardivo_event("evt_proc_c")
    assert post(base, "cardivo", cardivo_body, sign(cardivo_body, CARDIVO_SECRET)).status_code == 200
    for n in (1, 2):
        body = stripe_event(f"evt_proc{n}")
        assert post(base, "stripe", body, sign(body, STRIPE_SECRET)).status_code == 200
    read = [e for e in store.webhook_events_since("stripe", EPOCH) if e["event_id"].startswith("evt_proc")]
    assert [e["event_id"] for e in read] == ["evt_proc1", "evt_proc2"]
    assert read[0]["type"] == "customer.updated"
    assert read[0]["payload"]["data"]["object"]["id"] == "cus_1"
    assert read[0]["received_at"].tzinfo is not None
    assert not [
        e
        for e in store.webhook_events_since("stripe", read[-1]["received_at"] + timedelta(seconds=1))
        if e["event_id"].startswith("evt_proc")
    ]
    assert stored(store, "cardivo", "evt_proc_c")


def test_create_app_from_env(monkeypatch, tmp_path):
    from giftflow.webhooks import create_app_from_env

    monkeypatch.setenv("GIFTFLOW_DATABASE_URL", f"sqlite:///{tmp_path}/env.sqlite")
    monkeypatch.setenv("GIFTFLOW_CARDIVO_WEBHOOK_SECRET", CARDIVO_SECRET)
    monkeypatch.delenv("GIFTFLOW_STRIPE_WEBHOOK_SECRET", raising=False)
    with BackgroundServer(create_app_from_env()) as srv:
        body = cardivo_event()
        assert post(srv.base_url, "cardivo", body, sign(body, CARDIVO_SECRET)).status_code == 200
        assert post(srv.base_url, "stripe", stripe_event(), sign(stripe_event(), STRIPE_SECRET)).status_code == 503
    assert len(GiftflowStore(database_url=f"sqlite:///{tmp_path}/env.sqlite").webhook_events_since("cardivo", EPOCH)) == 1


# -- the receiver faces the internet: size, time, malformed input, concurrency, secrets ---------------------------


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def request_head(source: str, *, signature: str | bytes | None, length: int | None = None) -> bytes:
    """The request line and headers only; without `length` the body is to come chunked."""
    lines = [
        f"POST /webhooks/{source} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
        b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length,
    ]
    if signature is not None:
        lines.append(
            SOURCES[source][0].encode() + b": " + (signature if isinstance(signature, bytes) else signature.encode())
        )
    return b"\r\n".join(lines) + b"\r\n\r\n"


def read_status(sock: socket.socket, timeout: float) -> int | None:
    """The status of the server's answer; None where it reset the connection first. A silent server fails."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None


def closed_within(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def test_declared_oversize_body_is_refused_before_it_is_sent(base, source):
    with connect(base) as sock:
        started = time.monotonic()
        sock.sendall(request_head(source, signature=sign(b"", SOURCES[source][1]), length=100 * MiB))
        assert read_status(sock, 5) == 413
        assert time.monotonic() - started < 2


def test_streamed_body_is_cut_off_at_the_limit(base, store, source):
    # Chunked, so no Content-Length warns the server: it must count while reading.
    chunk = b"x" * 65536
    frame, sent = b"%x\r\n" % len(chunk) + chunk + b"\r\n", 0
    with connect(base) as sock:
        sock.sendall(request_head(source, signature=sign(b"", SOURCES[source][1])))
        try:
            while sent < 100 * MiB and not select.select([sock], [], [], 0)[0]:
                sock.sendall(frame)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status = read_status(sock, 5)
    assert sent < 32 * MiB  # the limit (1 MiB) plus what the kernels buffer; before: all 100 MB were read
    assert status in (413, None), status  # None: the reset of the closed connection overtook the 413


@pytest.mark.parametrize("case", ["missing", "malformed", "stale", "future", "non_ascii"])
def test_bad_signature_header_is_refused_before_the_body_is_read(base, source, case):
    now = int(time.time())
    signature = {
        "missing": None,
        "malformed": "t=abc,v1=00",
        "stale": sign(b"", "k", now - 400),
        "future": sign(b"", "k", now + 400),
        "non_ascii": f"t={now},v1=éé".encode(),
    }[case]
    with connect(base) as sock:
        started = time.monotonic()
        sock.sendall(request_head(source, signature=signature, length=1000))  # and no body follows
        assert read_status(sock, 5) == 400
        assert time.monotonic() - started < 2


@pytest.fixture(scope="module")
def impatient_base(store):
    app = create_app(
        store, cardivo_secret=CARDIVO_SECRET, stripe_secret=STRIPE_SECRET, read_timeout_s=1.0, max_body_bytes=16 * 1024
    )
    with BackgroundServer(app) as srv:
        yield srv.base_url


@pytest.mark.parametrize("pace", ["stall", "drip"])
def test_slow_body_is_cut_off_at_the_read_deadline(impatient_base, source, pace):
    with connect(impatient_base) as sock:
        started = time.monotonic()
        sock.sendall(request_head(source, signature=sign(b"", SOURCES[source][1]), length=1000) + b'{"id": "e')
        # A drip makes progress all the time: the deadline is for the whole body, not between reads.
        while pace == "drip" and time.monotonic() - started < 5 and not select.select([sock], [], [], 0.2)[0]:
            sock.sendall(b" ")
        assert read_status(sock, 5) == 408
        assert 0.9 < time.monotonic() - started < 2.5
        assert closed_within(sock, 2)


def test_configured_limit_refuses_a_signed_event_and_stores_nothing(impatient_base, store, source, eid):
    _, secret, event = SOURCES[source]
    body = event(eid)[:-1] + b', "padding": "' + b"x" * 20_000 + b'"}'
    r = post(impatient_base, source, body, sign(body, secret))
    assert r.status_code == 413 and r.json() == {"error": "body too large"}
    assert stored(store, source, eid) == []


def _event(source: str, eid: str) -> dict:
    return json.loads(SOURCES[source][2](eid))


def _set(path: str, value):
    def change(event: dict) -> dict:
        *parents, last = path.split(".")
        target = event
        for key in parents:
            target = target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
        return event

    return change


_DELETE = object()
# Signed, so they get past the signature: what is left to refuse them is the receiver's own checking.
MALFORMED = {
    "deep_nesting": lambda e: json.dumps(e)[:-1].encode() + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nesting_200": lambda e: json.dumps(e)[:-1].encode() + b', "x": ' + b"[" * 200 + b"]" * 200 + b"}",
    "nan": lambda e: json.dumps(e)[:-1].encode() + b', "x": NaN}',
    "infinity": lambda e: json.dumps(e)[:-1].encode() + b', "x": -Infinity}',
    "float_overflow": lambda e: json.dumps(e)[:-1].encode() + b', "x": 1e999}',
    "huge_int": lambda e: json.dumps(e)[:-1].encode() + b', "x": ' + b"9" * 5000 + b"}",
    "not_utf8": lambda e: json.dumps(e).encode()[:-1] + b', "x": "\xff"}',
    "array": lambda e: json.dumps([e]).encode(),
    "id_256": _set("id", "e" * 256),
    "type_101": _set("type", "t" * 101),
    "id_number": _set("id", 12),
    "id_nul": _set("id", "evt_\u0000"),
    "id_empty": _set("id", ""),
    "data_missing": _set("data", _DELETE),
    "data_empty_list": _set("data", []),
    "data_string": _set("data", CODE),
    "data_null": _set("data", None),
}
MALFORMED_STRIPE = {
    "object_missing": _set("data", {}),
    "object_not_object": _set("data.object", "cus_1"),
    "object_without_id": _set("data.object", {"object": "customer"}),
    "object_id_number": _set("data.object.id", 1),
    "created_missing": _set("created", _DELETE),
}
FIXED_ERRORS = {"malformed body", "malformed event"}


def assert_refused(base: str, store: GiftflowStore, source: str, body: bytes | dict) -> None:
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    before = store.webhook_events_since(source, EPOCH)
    r = post(base, source, body, sign(body, SOURCES[source][1]))
    assert r.status_code == 400, r.text
    assert r.json()["error"] in FIXED_ERRORS and CODE not in r.text
    assert store.webhook_events_since(source, EPOCH) == before


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_signed_event_gets_400_and_is_not_stored(base, store, source, eid, case):
    assert_refused(base, store, source, MALFORMED[case](_event(source, eid)))


@pytest.mark.parametrize("case", sorted(MALFORMED_STRIPE))
def test_stripe_event_of_the_wrong_shape_gets_400_and_is_not_stored(base, store, case):
    # Stored, `data: {}` failed the Stripe sensor with KeyError 'object' on every tick.
    assert_refused(base, store, "stripe", MALFORMED_STRIPE[case](_event("stripe", f"evt_shape_{case}")))


def test_non_ascii_signature_with_a_body_gets_400(base, store, source, eid):
    body = SOURCES[source][2](eid)
    r = post(base, source, body, f"t={int(time.time())},v1=éé".encode())
    assert r.status_code == 400 and stored(store, source, eid) == []


@pytest.fixture
def pg_store(postgres_url):
    return GiftflowStore(database_url=create_database(postgres_url, f"webhooks_{uuid.uuid4().hex[:12]}"))


def serve(store: GiftflowStore) -> BackgroundServer:
    return BackgroundServer(create_app(store, cardivo_secret=CARDIVO_SECRET, stripe_secret=STRIPE_SECRET))


def test_longest_id_and_type_accepted_are_stored_on_postgresql(pg_store, source):
    _, secret, event = SOURCES[source]
    eid, etype = "e" * 255, "t" * 100
    body = json.dumps({**_event(source, eid), "type": etype}).encode()
    with serve(pg_store) as srv:
        r = post(srv.base_url, source, body, sign(body, secret))
    assert r.status_code == 200, r.text
    assert [e["type"] for e in stored(pg_store, source, eid)] == [etype]


def test_older_postgresql_webhook_table_is_widened(postgres_url, source):
    url = create_database(postgres_url, f"webhooks_{uuid.uuid4().hex[:12]}")
    old = sa.create_engine(url)
    with old.begin() as conn:  # the table as giftflow created it before ids of up to 255 characters were accepted
        conn.execute(
            sa.text(
                "CREATE TABLE webhook_events (source varchar(16), event_id varchar(128), "
                "type varchar(64) NOT NULL, payload text NOT NULL, received_at timestamptz NOT NULL, "
                "processed_at timestamptz, PRIMARY KEY (source, event_id))"
            )
        )
    old.dispose()
    store = GiftflowStore(database_url=url)
    _, secret, event = SOURCES[source]
    body = json.dumps({**_event(source, "e" * 255), "type": "t" * 100}).encode()
    with serve(store) as srv:
        assert post(srv.base_url, source, body, sign(body, secret)).status_code == 200


def test_concurrent_duplicate_deliveries_are_all_acknowledged_and_stored_once(pg_store, source):
    _, secret, event = SOURCES[source]
    body = event("evt_dup")
    signature, barrier = sign(body, secret), threading.Barrier(32)

    def deliver(_) -> httpx.Response:
        with httpx.Client(timeout=30) as client:  # one connection each, all sent at once
            client.get(srv.base_url + "/healthz")
            barrier.wait()
            return client.post(f"{srv.base_url}/webhooks/{source}", content=body, headers={SOURCES[source][0]: signature})

    with serve(pg_store) as srv, ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(deliver, range(32)))
    assert [r.status_code for r in responses] == [200] * 32
    assert sorted(r.json().get("duplicate", False) for r in responses) == [False] + [True] * 31
    assert len(stored(pg_store, source, "evt_dup")) == 1


def _codes(n: int) -> list[str]:
    return [f"CRDV-{n}{i}AB-CDEF-{1000 + 10 * n + i}" for i in range(1, 8)]


def test_no_full_card_code_is_stored_or_logged(tmp_path, caplog):
    c = _codes(1)
    email = "ana.silva.secret@example.com"
    redemption = {"id": "rdm_1", "amount": 2500, "currency": "usd", "customer": {"email": email}}
    cardivo_bodies = [
        {"gift_card": {"id": "gc_1", "code": c[0]}},
        {"code": c[1], "gift_card": c[2]},  # a flat shape: the code beside the redemption, the card as a string
        {"lines": [{"gift_card_code": c[3]}, {"meta": {"Card-Number": c[4]}}]},
    ]
    stripe_metadata = {"gift_card_code": c[5], "giftCard": c[6]}
    caplog.set_level(logging.DEBUG, logger="giftflow")
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # statements, with their parameters unless hidden
    store = GiftflowStore(database_url=f"sqlite:///{tmp_path}/codes.sqlite")
    with serve(store) as srv:
        for n, data in enumerate(cardivo_bodies):
            body = json.dumps({"id": f"evt_code{n}", "type": "redemption.created", "data": {**redemption, **data}})
            r = post(srv.base_url, "cardivo", body.encode(), sign(body.encode(), CARDIVO_SECRET))
            assert r.status_code == 200, r.text
        body = json.dumps(
            {
                **_event("stripe", "evt_code_s"),
                "data": {
                    "object": {"id": "pi_1", "object": "payment_intent", "receipt_email": email, "metadata": stripe_metadata}
                },
            }
        ).encode()
        assert post(srv.base_url, "stripe", body, sign(body, STRIPE_SECRET)).status_code == 200
        refused = json.dumps({"id": "evt_refused", "type": "redemption.created", "data": [CODE]}).encode()
        assert post(srv.base_url, "cardivo", refused, sign(refused, CARDIVO_SECRET)).status_code == 400
    logged = caplog.text
    assert "evt_code0" in logged  # the receiver does log, by event id
    with sa.create_engine(f"sqlite:///{tmp_path}/codes.sqlite").connect() as conn:
        dump = "".join(str(conn.execute(sa.text(f'SELECT * FROM "{t}"')).all()) for t in sa.inspect(conn).get_table_names())
    files = b"".join(p.read_bytes() for p in tmp_path.glob("codes.sqlite*"))
    for code in [*c, CODE]:
        assert code not in logged and code not in dump and code.encode() not in files, code
    assert all(code[-4:] in dump for code in c)
    assert email not in logged and "receipt_email" not in logged


@pytest.mark.e2e  # the `giftflow webhooks` command as a subprocess
def test_webhooks_command_serves_with_the_limits(tmp_path):
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GIFTFLOW_")},
        "PYTHONPATH": str(ROOT),
        "GIFTFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/cli.sqlite",
        "GIFTFLOW_CARDIVO_WEBHOOK_SECRET": CARDIVO_SECRET,
        "GIFTFLOW_WEBHOOK_READ_TIMEOUT_S": "1",
        "GIFTFLOW_WEBHOOK_MAX_BODY_BYTES": "2048",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "giftflow.cli", "webhooks", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/healthz", timeout=60)
        with connect(base) as sock:
            sock.sendall(request_head("cardivo", signature=sign(b"", CARDIVO_SECRET), length=4096))
            assert read_status(sock, 5) == 413
        with connect(base) as sock:
            started = time.monotonic()
            sock.sendall(request_head("cardivo", signature=sign(b"", CARDIVO_SECRET), length=1000) + b"{")
            assert read_status(sock, 5) == 408 and time.monotonic() - started < 2.5
    finally:
        proc.terminate()
        proc.wait(10)
