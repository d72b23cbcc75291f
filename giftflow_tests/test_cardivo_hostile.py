"""The Cardivo client against broken or hostile servers: endless paging, redirects, odd Retry-After,
drip-fed responses, huge or malformed pages, and bodies that echo the API key.

Every server here is real HTTP on 127.0.0.1: small Starlette apps, or a raw socket where HTTP itself is abused.
"""

import asyncio
import json
import socket
import threading
import time
import traceback
from datetime import datetime, timezone
from email.utils import formatdate

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from giftflow.adapters.cardivo import CardivoClient, CardivoError
from giftflow_simulators.server import BackgroundServer

START = datetime(2026, 11, 20, tzinfo=timezone.utc)
KEY = "ck_live_TOPSECRET_0123456789"
END_PAGE = {"data": [], "next_cursor": None}


class Hostile:
    """A Starlette app answering every path with `respond(n, request)` (n counts from 1); records each request."""

    def __init__(self, respond):
        self.respond, self.seen = respond, []

    def app(self):
        async def endpoint(request):
            self.seen.append(
                {
                    "at": time.monotonic(),
                    "path": request.url.path,
                    "query": dict(request.query_params),
                    "auth": request.headers.get("authorization"),
                }
            )
            answer = self.respond(len(self.seen), request)
            return await answer if asyncio.iscoroutine(answer) else answer

        return Starlette(routes=[Route("/{path:path}", endpoint)])

    def __enter__(self):
        self._server = BackgroundServer(self.app())
        self.base_url = self._server.start()
        return self

    def __exit__(self, *exc):
        self._server.stop()

    def gap(self, i=0):
        return self.seen[i + 1]["at"] - self.seen[i]["at"]


class DripServer:
    """A raw-socket HTTP/1.1 server: reads a request, sends `head`, then `drip` one byte every `every` s
    (for at most `for_s` s, so a client that never gives up still ends)."""

    def __init__(self, head: bytes, drip: bytes, every: float, for_s: float = 15):
        self.head, self.drip, self.every, self.for_s = head, drip, every, for_s
        self.stop, self.connections = threading.Event(), 0

    def __enter__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.sock.close()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn):
        with conn:
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096) or b"\r\n\r\n"
            ends = time.monotonic() + self.for_s
            try:
                conn.sendall(self.head)
                for byte in self.drip:
                    if self.stop.wait(self.every) or time.monotonic() > ends:
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return  # the client hung up: what a client with a deadline does


def client(url, **over):
    return CardivoClient(api_base=url, api_key=over.pop("api_key", KEY), **over)


# 1. Paging that never ends ------------------------------------------------------------------------------------


def _cursor_pages(step, give_up_after=200):
    """Pages whose next_cursor is step(the request's cursor); after `give_up_after` requests the paging ends,
    so a client with no defence finishes (and fails its test) rather than hanging."""

    def respond(n, request):
        if n > give_up_after:
            return JSONResponse(END_PAGE)
        return JSONResponse({"data": [], "next_cursor": step(request.query_params.get("cursor"))})

    return respond


@pytest.mark.parametrize(
    "step, start, requests",
    [
        (lambda c: "c0", None, 2),  # the same cursor again
        (lambda c: f"c{(int((c or 'c0')[1:]) + 1) % 3}", None, 4),  # a cycle c1 -> c2 -> c0 -> c1
        (lambda c: c, "c7", 1),  # the sensor's one page, given back its own cursor
    ],
    ids=["same", "cycle", "sensor-page"],
)
def test_a_repeated_next_cursor_stops_the_fetch(step, start, requests):
    with Hostile(_cursor_pages(step)) as srv:
        with pytest.raises(CardivoError, match="repeated next_cursor") as err:
            client(srv.base_url).list_redemptions(updated_after=START, cursor=start, max_pages=1 if start else None)
    assert len(srv.seen) == requests and err.value.error_type == "bad_response"


def test_pages_are_capped_for_a_whole_fetch_but_a_callers_max_pages_returns_normally():
    fresh = _cursor_pages(lambda c: f"c{int((c or 'c0')[1:]) + 1}")
    with Hostile(fresh) as srv:
        with pytest.raises(CardivoError, match="max_pages_total=5") as err:
            client(srv.base_url, max_pages_total=5).list_redemptions(updated_after=START)
        assert len(srv.seen) == 5 and err.value.error_type == "too_many_pages"
        got = client(srv.base_url, max_pages_total=5).list_redemptions(updated_after=START, max_pages=3)
    assert got.calls == 3 and got.next_cursor == "c3"


def _slow_fresh_pages():
    async def respond(n, request):
        await asyncio.sleep(0.25)
        return _cursor_pages(lambda c: f"c{n}", give_up_after=60)(n, request)

    return respond


@pytest.mark.parametrize("how", ["caller", "resource"])
def test_every_fetch_has_an_overall_deadline(how):
    with Hostile(_slow_fresh_pages()) as srv:
        started = time.monotonic()
        with pytest.raises(CardivoError, match="deadline") as err:
            if how == "caller":
                client(srv.base_url).list_redemptions(updated_after=START, deadline=time.monotonic() + 1)
            else:
                client(srv.base_url, fetch_deadline_s=1).list_redemptions(updated_after=START)
    assert time.monotonic() - started < 1.5 and err.value.error_type == "deadline_exceeded"


# 2. A 3xx is an error, never a page, and is not followed -------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_an_error_and_is_not_followed(status):
    with Hostile(lambda n, r: JSONResponse(END_PAGE)) as elsewhere:
        to = elsewhere.base_url + "/v1/redemptions"
        with Hostile(lambda n, r: JSONResponse(END_PAGE, status_code=status, headers={"Location": to})) as srv:
            with pytest.raises(CardivoError) as err:
                client(srv.base_url).list_redemptions(redeemed_after=START)
    assert err.value.status == status and str(status) in str(err.value) and "redirect" in str(err.value)
    assert elsewhere.seen == [] and len(srv.seen) == 1  # the key never went to the other host


# 3. Retry-After: seconds or an HTTP-date, clamped, garbage ignored, bounded by the deadline ----------------------


def _limited_once(retry_after):
    def respond(n, request):
        if n == 1:
            header = retry_after() if callable(retry_after) else retry_after
            return JSONResponse(
                {"error": {"type": "rate_limited", "message": "slow down"}}, status_code=429, headers={"Retry-After": header}
            )
        return JSONResponse(END_PAGE)

    return respond


def test_retry_after_as_an_http_date_is_waited():
    # A whole second at least 2 s ahead (HTTP-dates have 1 s resolution): the client must wait 2 to 3 s.
    with Hostile(_limited_once(lambda: formatdate(int(time.time()) + 3, usegmt=True))) as srv:
        got = client(srv.base_url).list_redemptions(updated_after=START)
    assert got.calls == 1 and len(srv.seen) == 2
    assert 1.9 <= srv.gap() <= 3.5


def test_retry_after_in_seconds_is_waited():
    # The client's own first backoff is at most 1.2 s (0.2 s + up to 1 s jitter), so a client that ignored
    # Retry-After: 2 would always retry sooner than 1.95 s: this catches it on every run, not one in a few.
    with Hostile(_limited_once("2")) as srv:
        client(srv.base_url).list_redemptions(updated_after=START)
    assert 1.95 <= srv.gap() <= 3.0


@pytest.mark.parametrize("header", ["-5", "soon", "nan", "inf", "Wed, 99 Foo 2026 25:61:00 GMT"])
def test_a_bad_retry_after_falls_back_to_backoff(header):
    with Hostile(_limited_once(header)) as srv:
        got = client(srv.base_url).list_redemptions(updated_after=START)
    assert got.calls == 1 and srv.gap() < 1.5


def test_a_retry_after_past_the_deadline_gives_up_at_once():
    with Hostile(_limited_once("30")) as srv:
        started = time.monotonic()
        with pytest.raises(CardivoError, match="deadline") as err:
            client(srv.base_url).list_redemptions(updated_after=START, deadline=time.monotonic() + 2)
    assert time.monotonic() - started < 0.5 and len(srv.seen) == 1 and err.value.status == 429


@pytest.mark.parametrize(
    "value, expected",
    [
        ("5", 5.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("120", 60.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Wed, 99 Foo 2026", None),
    ],
)
def test_retry_after_parsing(value, expected):
    from giftflow.adapters.cardivo import _retry_after

    assert _retry_after(value) == expected


def test_retry_after_http_date_ahead():
    from giftflow.adapters.cardivo import _retry_after

    assert 9 <= _retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10


# 4. Drip-fed and huge responses ---------------------------------------------------------------------------------

BODY_DRIP = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
    b'{"data": [' + b" " * 1000,
)


@pytest.mark.e2e  # waits out a 3 s deadline
def test_a_dripping_body_is_cut_at_the_callers_deadline():
    # One byte every 2 s: httpx's read timeout (30 s, per read) never fires, and a client that only looked
    # at the clock between bytes would still overrun by up to 2 s.
    with DripServer(*BODY_DRIP, every=2.0) as srv:
        started = time.monotonic()
        with pytest.raises(CardivoError, match="deadline") as err:
            client(srv.base_url, timeout_s=30).list_redemptions(updated_after=START, deadline=time.monotonic() + 3)
        took = time.monotonic() - started
    assert 2.9 <= took < 3.5 and err.value.error_type == "deadline_exceeded"


@pytest.mark.e2e  # waits out a 3 s timeout
def test_dripping_headers_are_cut_at_timeout_s_per_request():
    # No caller deadline: each attempt is bounded by timeout_s overall, even while bytes keep coming.
    with DripServer(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 1000, every=0.4) as srv:
        started = time.monotonic()
        with pytest.raises(CardivoError, match="retries_exhausted"):
            client(srv.base_url, timeout_s=1, max_attempts=2).list_redemptions(updated_after=START)
        took = time.monotonic() - started
    assert took < 1 + 1.2 + 1 + 0.6 and srv.connections == 2  # two attempts and one backoff of at most 1.2 s


def test_a_huge_page_is_refused():
    def respond(n, request):
        return StreamingResponse((b" " * 2**20 for _ in range(64)), media_type="application/json")

    with Hostile(respond) as srv:
        with pytest.raises(CardivoError, match="10 MiB") as err:
            client(srv.base_url).list_redemptions(updated_after=START)
    assert err.value.error_type == "response_too_large" and len(srv.seen) == 1


# 5. The page's shape -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        {"data": {}},
        {"next_cursor": None},
        {"data": [], "next_cursor": 5},
        {"data": [], "next_cursor": ["c1"]},
        {"data": [], "next_cursor": "c" * 2049},
        [],
        None,
        "page",
    ],
)
def test_a_malformed_page_is_refused(first):
    with Hostile(lambda n, r: JSONResponse(first if n == 1 else END_PAGE)) as srv:
        with pytest.raises(CardivoError) as err:
            client(srv.base_url).list_redemptions(updated_after=START)
    assert err.value.error_type == "bad_response" and len(srv.seen) == 1


def test_a_long_but_allowed_cursor_is_followed():
    cursor = "c" * 2048
    with Hostile(lambda n, r: JSONResponse({"data": [{"id": n}], "next_cursor": cursor} if n == 1 else END_PAGE)) as srv:
        got = client(srv.base_url).list_redemptions(updated_after=START)
    assert got.calls == 2 and srv.seen[1]["query"]["cursor"] == cursor


def test_a_gift_card_that_is_not_an_object_is_refused():
    with Hostile(lambda n, r: JSONResponse(["CRDV"])) as srv:
        with pytest.raises(CardivoError) as err:
            client(srv.base_url).find_gift_card("CRDV-7K2M-Q9XA-4821")
    assert err.value.error_type == "bad_response"


# 6. Errors carry neither the key nor the body ----------------------------------------------------------------


def _echo(status, as_error_json):
    def respond(n, request):
        echoed = f"you sent {request.headers['authorization']}\n\x1b[31m" + "filler " * 20_000 + KEY
        if as_error_json:
            body = json.dumps({"error": {"type": f"boom {KEY}", "message": echoed}})
            return Response(body, status_code=status, media_type="application/json")
        return Response(echoed, status_code=status, media_type="text/plain")

    return respond


@pytest.mark.parametrize(
    "status, as_error_json", [(400, True), (401, False), (500, True), (503, False), (302, False), (200, False)]
)
def test_errors_never_carry_the_key_or_the_body(status, as_error_json):
    with Hostile(_echo(status, as_error_json)) as srv:
        with pytest.raises(CardivoError) as err:
            client(srv.base_url, max_attempts=1).list_redemptions(updated_after=START)
    told = str(err.value) + repr(err.value) + "".join(traceback.format_exception(err.value))
    assert srv.seen[0]["auth"] == f"Bearer {KEY}"  # the server did get it, and echoed it
    assert KEY not in told and "TOPSECRET" not in told
    assert len(str(err.value)) < 400 and "\n" not in str(err.value) and "\x1b" not in str(err.value)
    assert str(status) in str(err.value)
