"""The Cardivo API client (contract: cardivo-api.md). Everything Cardivo-specific on the wire is here.

The server is not trusted to behave: every fetch has an overall deadline and a page cap, every request an overall
time limit (not only httpx's per-read timeout) and a size cap, redirects are errors, and errors carry only a
short, sanitised excerpt of what the server said, never the API key.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpcore
import httpx
from pydantic import BaseModel, ConfigDict, Field
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

MAX_RETRY_AFTER_S = 60.0
MAX_RESPONSE_BYTES = 10 * 2**20  # a page of 100 redemptions is ~100 KiB; more is a broken or hostile server
MAX_CURSOR_CHARS = 2048
EXCERPT_CHARS = 200


class CardivoError(Exception):
    """Cardivo refused a request, answered something that is not the contract, kept failing past the retries,
    or a limit (deadline, pages, size) was exceeded."""

    def __init__(self, status: int | None, error_type: str, message: str):
        super().__init__(f"Cardivo API {f'{status} ' if status else ''}{error_type}: {message}")
        self.status, self.error_type = status, error_type


class CardivoKeyRefused(CardivoError):
    """Cardivo refused CARDIVO_API_KEY (401/403); the message names the variable and the base URL."""

    def __init__(self, status: int, error_type: str, message: str):
        Exception.__init__(self, message)
        self.status, self.error_type = status, error_type


def mask_secret(key: str) -> str:
    """A key as it may be shown: its last 4 characters where it is long enough to keep the rest secret."""
    return f"…{key[-4:]}" if len(key) >= 12 else "***"


class _Retryable(Exception):
    def __init__(self, status: int, retry_after: float | None, detail: str):
        super().__init__(f"Cardivo API {status}: {detail}")
        self.status, self.retry_after = status, retry_after


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, (_Retryable, httpx.TransportError))


_backoff = wait_exponential_jitter(initial=0.2, max=10)


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Retryable) and exc.retry_after is not None:
        return exc.retry_after
    return _backoff(state)


class _stop_past(stop_base):
    """No retry whose wait would end past `deadline` (a time.monotonic() instant)."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() + (retry_state.upcoming_sleep or 0) >= self.deadline


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds to wait, clamped to [0, 60]: delta-seconds or an HTTP-date (RFC 9110). None for
    anything else, so the caller falls back to its backoff instead of crashing or sleeping forever."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000": UTC by RFC 5322
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else None


# httpx's timeouts are per socket operation, so a server dripping a byte every few seconds holds a request for
# as long as it likes. The network backend below bounds every connect, read and write by what is left of the
# request's deadline, which the client sets here for the duration of each request (headers and body alike).
_request_deadline: ContextVar[float | None] = ContextVar("cardivo_request_deadline", default=None)


def _bounded(timeout: float | None, expired: type[Exception]) -> float | None:
    deadline = _request_deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("request deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, _bounded(timeout, httpcore.ConnectTimeout))
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self):
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _DeadlineStream(
            self._inner.connect_tcp(host, port, _bounded(timeout, httpcore.ConnectTimeout), local_address, socket_options)
        )

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()  # ~50 ms to load the CA bundle: once per process, not once per fetch


# httpcore's exceptions as the httpx ones callers catch (httpx.TransportError is retried), most specific first.
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        mapped = next((to for core, to in _HTTPX_ERRORS if isinstance(exc, core)), None)
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc


class _DeadlineResponseStream(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes], close: Callable[[], None]):
        self._inner, self._close = inner, close

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors():
            yield from self._inner

    def close(self) -> None:
        self._close()


class _DeadlineTransport(httpx.BaseTransport):
    """httpx's transport over an httpcore pool whose network backend bounds every socket wait by the request's
    deadline. httpx.HTTPTransport takes no network backend, so this is the public way: httpx's BaseTransport on
    httpcore's public ConnectionPool, mapping the request, the response and the errors between the two."""

    def __init__(self) -> None:
        self._connections = httpcore.ConnectionPool(ssl_context=_ssl_context(), network_backend=_DeadlineBackend())

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            core_response = self._connections.handle_request(core_request)
        stream = core_response.stream
        assert isinstance(stream, Iterable)  # a sync pool answers with a sync stream
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_DeadlineResponseStream(stream, core_response.close),
            extensions=core_response.extensions,
        )

    def close(self) -> None:
        self._connections.close()


def rfc3339(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime: giftflow only speaks UTC-aware times")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _page(page: Any) -> tuple[list, str | None]:
    """A list page's records and next cursor, or CardivoError if it is not the contract's shape."""
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        raise CardivoError(None, "bad_response", "list response has no `data` array")
    cursor = page.get("next_cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise CardivoError(None, "bad_response", "`next_cursor` is neither a string nor null")
    if cursor and len(cursor) > MAX_CURSOR_CHARS:
        raise CardivoError(None, "bad_response", f"`next_cursor` longer than {MAX_CURSOR_CHARS} characters")
    return page["data"], cursor or None


@dataclass
class Fetched:
    records: list = field(default_factory=list)
    calls: int = 0
    next_cursor: str | None = None


class CardivoClient(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    """Reads Cardivo redemptions over HTTPS with bearer auth, paging, deadlines, size caps and retries."""

    api_base: str = Field(description="Cardivo API base URL (CARDIVO_API_BASE)")
    api_key: str = Field(description="Cardivo API key (CARDIVO_API_KEY)")
    timeout_s: float = Field(default=30.0, description="per-request limit: connect, headers and body together")
    max_attempts: int = Field(default=6, description="attempts per request before giving up")
    page_size: int = Field(default=100, ge=1, le=100)
    fetch_deadline_s: float = Field(default=300.0, gt=0, description="overall limit of one fetch (all pages and retries)")
    max_pages_total: int = Field(
        default=10_000, ge=1, description="pages one fetch may follow (a day's redemptions are far fewer than 1,000,000)"
    )

    def _excerpt(self, text: str | bytes, limit: int = EXCERPT_CHARS) -> str:
        """At most `limit` printable characters of what the server said, on one line, with no API key in it
        (a hostile or misconfigured server may echo the Authorization header)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if self.api_key:
            text = text.replace(self.api_key, "[redacted]")
        text = re.sub(r"(?i)bearer\s+\S+", "Bearer [redacted]", text)
        text = " ".join("".join(c if c.isprintable() else " " for c in text[: limit * 4]).split())
        return text[:limit] + ("…" if len(text) > limit else "")

    def _refusal(self, status: int, body: bytes) -> CardivoError:
        if 300 <= status < 400:  # following would send the bearer key wherever Location points
            return CardivoError(status, "redirect", "redirects are not followed")
        try:
            err = json.loads(body)["error"]
            error = CardivoError(
                status, self._excerpt(str(err.get("type", "unknown")), 40), self._excerpt(str(err.get("message", "")))
            )
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            error = CardivoError(status, "unknown", self._excerpt(body))
        if status in (401, 403):  # the key: say which variable, and where it was refused
            said = str(error).removeprefix("Cardivo API ")
            return CardivoKeyRefused(
                status,
                "authentication",
                (
                    f"CARDIVO_API_KEY ({mask_secret(self.api_key)}) was refused by {self.api_base.rstrip('/')} "
                    f"({said}). Set CARDIVO_API_KEY to a valid key for that CARDIVO_API_BASE; README, Configuration. "
                    "`giftflow check` tries it."
                ),
            )
        return error

    @staticmethod
    def _read(response: httpx.Response) -> bytes:
        body = bytearray()
        try:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise CardivoError(
                        response.status_code, "response_too_large", f"response larger than {MAX_RESPONSE_BYTES // 2**20} MiB"
                    )
        except httpx.DecodingError:
            raise CardivoError(response.status_code, "bad_response", "body cannot be decoded") from None
        return bytes(body)

    def _get(self, client: httpx.Client, path: str, params: dict, *, deadline: float) -> Any:
        """One GET with retries, all of it before `deadline` (a time.monotonic() instant)."""
        tries = 0

        @retry(
            retry=retry_if_exception(_is_retryable),
            wait=_wait,
            stop=stop_after_attempt(self.max_attempts) | _stop_past(deadline),
            reraise=True,
        )
        def attempt() -> Any:
            nonlocal tries
            tries += 1
            now = time.monotonic()
            if now >= deadline:
                raise CardivoError(None, "deadline_exceeded", f"{self._deadline_name} passed before the request")
            token = _request_deadline.set(min(now + self.timeout_s, deadline))
            try:
                with client.stream("GET", path, params=params) as response:
                    body = self._read(response)
            finally:
                _request_deadline.reset(token)
            status = response.status_code
            if status == 429 or status >= 500:  # the contract: these may be retried
                raise _Retryable(status, _retry_after(response.headers.get("Retry-After")), self._excerpt(body))
            if not 200 <= status < 300:
                raise self._refusal(status, body)
            try:
                return json.loads(body)
            except (ValueError, RecursionError):
                raise CardivoError(status, "bad_response", "body is not JSON") from None

        try:
            return attempt()
        except (_Retryable, httpx.TransportError) as exc:
            status = exc.status if isinstance(exc, _Retryable) else None
            last = str(exc) if isinstance(exc, _Retryable) else f"{type(exc).__name__}: {self._excerpt(str(exc))}"
            if tries < self.max_attempts:
                raise CardivoError(
                    status,
                    "deadline_exceeded",
                    f"{self._deadline_name} leaves no time for attempt {tries + 1}; last: {last}",
                ) from exc
            raise CardivoError(status, "retries_exhausted", last) from exc

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_base.rstrip("/"),
            timeout=self.timeout_s,
            transport=_DeadlineTransport(),
            follow_redirects=False,  # a 3xx is an error: the key must not go to another host
            headers={"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"},
        )

    @property
    def _deadline_name(self) -> str:
        return f"the fetch deadline (the caller's `deadline` or fetch_deadline_s={self.fetch_deadline_s:g})"

    def _deadline(self, deadline: float | None) -> float:
        """The caller's deadline or fetch_deadline_s from now, whichever comes first."""
        own = time.monotonic() + self.fetch_deadline_s
        return own if deadline is None else min(own, deadline)

    def list_redemptions(
        self,
        *,
        redeemed_after: datetime | None = None,
        redeemed_before: datetime | None = None,
        updated_after: datetime | None = None,
        max_pages: int | None = None,
        cursor: str | None = None,
        deadline: float | None = None,
    ) -> Fetched:
        """All redemptions matching the filters, following `next_cursor` (up to `max_pages` pages; then
        `next_cursor` says where to go on). CardivoError when the server repeats a cursor, past
        `max_pages_total` pages, or past `deadline` (a time.monotonic() instant) or `fetch_deadline_s`."""
        deadline = self._deadline(deadline)
        params: dict = {"limit": self.page_size}
        for name, value in (
            ("redeemed_after", redeemed_after),
            ("redeemed_before", redeemed_before),
            ("updated_after", updated_after),
        ):
            if value is not None:
                params[name] = rfc3339(value)
        out = Fetched(next_cursor=cursor)
        seen = {cursor} if cursor else set()
        with self._client() as client:
            while True:
                page = self._get(
                    client,
                    "/v1/redemptions",
                    {**params, **({"cursor": out.next_cursor} if out.next_cursor else {})},
                    deadline=deadline,
                )
                out.calls += 1
                records, out.next_cursor = _page(page)
                out.records.extend(records)
                if not out.next_cursor:
                    return out
                if out.next_cursor in seen:  # paging that goes round in circles would never end
                    raise CardivoError(None, "bad_response", f"repeated next_cursor after {out.calls} pages")
                if max_pages is not None and out.calls >= max_pages:
                    return out
                if out.calls >= self.max_pages_total:
                    raise CardivoError(
                        None, "too_many_pages", f"more than max_pages_total={self.max_pages_total} pages in one fetch"
                    )
                seen.add(out.next_cursor)

    def find_gift_card(self, code: str, *, deadline: float | None = None) -> dict:
        """The "Find Gift Card" search by gift-card code."""
        with self._client() as client:
            card = self._get(client, f"/v1/gift_cards/{quote(code, safe='')}", {}, deadline=self._deadline(deadline))
        if not isinstance(card, dict):
            raise CardivoError(None, "bad_response", "gift card is not an object")
        return card
