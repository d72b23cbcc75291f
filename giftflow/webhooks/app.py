"""Webhook receiver for Cardivo and Stripe deliveries.

Only verifies, stores and acknowledges: no Cardivo or Stripe calls in the request path, so the senders never
time out and retry; the sensors read the stored events later (`GiftflowStore.webhook_events_since`).

It faces the internet, so it trusts nothing before the signature and bounds everything: the signature header
and its timestamp are checked before the body is read, the body is read against a size limit and a deadline,
and anything malformed gets a 4xx with a fixed message, never a 5xx and never an echo of the body.

    uvicorn giftflow.webhooks.app:create_app_from_env --factory
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import BaseModel, SecretStr, StringConstraints
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from giftflow.adapters.store import GiftflowStore
from giftflow.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # real deliveries are a few KiB; Stripe's largest events stay far below 1 MiB
READ_TIMEOUT_S = 10.0  # for the whole body: a sender that drips bytes must not hold a connection for ever
RETENTION_DAYS = 30  # Stripe retries a delivery for up to 3 days; the sensors read one within seconds
PRUNE_EVERY_S = 3600
MAX_DEPTH = 64  # real events nest under 10 levels; this keeps every recursive step below far from Python's limit

# Ids and types are machine tokens: printable ASCII without spaces (keeps NUL, which PostgreSQL refuses, and
# anything a log line could be forged with out), and no longer than the store's columns.
_TOKEN = r"^[!-~]+$"
EventId = Annotated[str, StringConstraints(max_length=255, pattern=_TOKEN)]
EventType = Annotated[str, StringConstraints(max_length=100, pattern=_TOKEN)]


class _Envelope(BaseModel):
    id: EventId
    type: EventType


class CardivoEvent(_Envelope):
    data: dict[str, Any]  # a redemption; the sensor's schema checks its fields and quarantines a bad one


class _StripeObject(BaseModel):
    id: EventId


class _StripeData(BaseModel):
    object: _StripeObject


class StripeEvent(_Envelope):
    created: int  # the sensor orders events by it
    data: _StripeData


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        self.response = _error(status, message)


def _error(status: int, message: str) -> JSONResponse:
    # Fixed messages only: never echo the body (it may carry a gift-card code) back to the caller. And close the
    # connection: a refused request's body may be partly unread, and it is not worth reading to keep the connection.
    return JSONResponse({"error": message}, status_code=status, headers={"Connection": "close"})


_T, _V1 = re.compile(r"[0-9]{1,12}"), re.compile(r"[0-9a-f]{64}")


def _parse_signature_header(header: str) -> tuple[int, list[str]]:
    """`t=<unix>,v1=<hex>[,v1=<hex>...]` -> (t, [v1...]); ValueError when malformed.

    Only ASCII digits and 64 lowercase hex digits count: hmac.compare_digest raises TypeError on non-ASCII text."""
    timestamp, signatures = None, []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and timestamp is None and _T.fullmatch(value):
            timestamp = int(value)
        elif key == "v1" and _V1.fullmatch(value):
            signatures.append(value)
    if timestamp is None or not signatures:
        raise ValueError("malformed signature header")
    return timestamp, signatures


async def _read_body(request: Request, limit: int, deadline_s: float) -> bytes:
    """The body, refused with 413 past `limit` bytes (declared or counted) or 408 when not complete in time."""
    try:
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > limit:
            raise _Refused(413, "body too large")
    except ValueError:
        raise _Refused(400, "malformed Content-Length") from None
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():  # counted as it arrives: chunked bodies declare no length
            body.extend(chunk)
            if len(body) > limit:
                raise _Refused(413, "body too large")

    try:
        await asyncio.wait_for(read(), deadline_s)
    except asyncio.TimeoutError:
        raise _Refused(408, "body not received in time") from None
    except ClientDisconnect:
        raise _Refused(400, "body incomplete") from None
    return bytes(body)


def _reject_constant(name: str) -> None:
    raise ValueError("NaN and Infinity are not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e999 parses to infinity, which json.dumps writes as Infinity
        raise ValueError("number out of range")
    return value


def _depth_ok(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:  # iterative: this is what protects the recursive steps after it
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


def _parse(raw: bytes) -> Any:
    """Strict JSON; ValueError for anything else (not UTF-8, NaN/Infinity, too deep)."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not _depth_ok(body):
        raise ValueError("nested too deeply")
    return body


# Keys whose value is a gift-card code (or the card itself as a string), compared without case and separators.
_SECRET_KEYS = {"code", "giftcard", "giftcardcode", "giftcardnumber", "cardcode", "cardnumber"}


def _redact(value: Any) -> Any:
    """Cut every gift-card code to "…" + its last 4 characters, wherever the payload puts it: the full code is a
    bearer secret, and a sender's payload shape is not ours to trust."""
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if not isinstance(value, dict):
        return value
    return {k: _last4(v) if re.sub(r"[^a-z]", "", k.lower()) in _SECRET_KEYS else _redact(v) for k, v in value.items()}


def _last4(value: Any) -> Any:
    if isinstance(value, (dict, list)):  # e.g. `gift_card: {...}`: its `code` is cut on the way down
        return _redact(value)
    return value if value is None or isinstance(value, bool) else "…" + str(value)[-4:]


class _Pruner:
    """Deletes deliveries older than the retention, at most once an hour, after a delivery was stored: the
    table stays bounded without a job of its own, and a receiver that gets nothing does nothing."""

    def __init__(self, store: GiftflowStore, retention_days: int, clock: Callable[[], float]):
        self.store, self.retention_s, self.clock = store, retention_days * 86400, clock
        self.next_at = 0.0

    async def maybe_prune(self) -> None:
        now_s = self.clock()
        if now_s < self.next_at:
            return
        self.next_at = now_s + PRUNE_EVERY_S
        before = datetime.fromtimestamp(now_s - self.retention_s, timezone.utc)
        try:
            gone = await run_in_threadpool(self.store.prune_webhook_events, before)
        except Exception:  # a failed prune must not fail the delivery that was stored
            log.exception("pruning webhook deliveries failed; retried in an hour")
            return
        if gone:
            log.info("pruned %d webhook deliveries received before %s", gone, before.isoformat())


async def _record(store: GiftflowStore, source: str, event_id: str, event_type: str, payload: dict) -> JSONResponse:
    # The store is synchronous database I/O: keep it off the event loop.
    new = await run_in_threadpool(store.record_webhook_event, source, event_id, event_type, payload)
    log.info("%s webhook %s (%s)%s", source, event_id, event_type, "" if new else " replayed")
    # A replay still gets 200, or the sender keeps retrying an event we already hold.
    return JSONResponse({"received": True} if new else {"received": True, "duplicate": True})


def create_app(
    store: GiftflowStore,
    *,
    cardivo_secret: str | None,
    stripe_secret: str | None,
    tolerance_s: int = 300,
    clock: Callable[[], float] = time.time,
    max_body_bytes: int = MAX_BODY_BYTES,
    read_timeout_s: float = READ_TIMEOUT_S,
    retention_days: int = RETENTION_DAYS,
) -> Starlette:
    pruner = _Pruner(store, retention_days, clock)

    def endpoint(source: str, header: str, secret: str | None, model: type[_Envelope]):
        async def receive(request: Request) -> JSONResponse:
            if not secret:
                return _error(503, "webhook secret not configured")
            # Header and freshness first: a request that cannot be valid costs no body read.
            try:
                timestamp, signatures = _parse_signature_header(request.headers.get(header) or "")
            except ValueError:
                return _error(400, f"missing or malformed {header} header")
            # Both directions: a far-future timestamp would otherwise make a captured delivery replayable for
            # long; checked before the replay lookup, so an old delivery is refused even for a known event id.
            if abs(clock() - timestamp) > tolerance_s:
                return _error(400, "stale timestamp")
            try:
                raw = await _read_body(request, max_body_bytes, read_timeout_s)
            except _Refused as refused:
                return refused.response
            # Signed over the raw bytes (Stripe's v1 scheme is the same): re-serialising would not reproduce them.
            expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
            if not any(hmac.compare_digest(expected, s) for s in signatures):
                return _error(400, "bad signature")
            try:
                body = _parse(raw)
            except ValueError:
                return _error(400, "malformed body")
            try:  # pydantic's ValidationError is a ValueError
                event = model.model_validate(body, strict=True)
            except ValueError:
                # Stored, a wrong shape would fail the sensor on every tick: refuse it while the sender can see why.
                return _error(400, "malformed event")
            # Unknown event types are stored too: the sender signed them, and refusing would only cause retries.
            response = await _record(store, source, event.id, event.type, _redact(body))
            await pruner.maybe_prune()
            return response

        return receive

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route(
                "/webhooks/cardivo", endpoint("cardivo", "Cardivo-Signature", cardivo_secret, CardivoEvent), methods=["POST"]
            ),
            Route("/webhooks/stripe", endpoint("stripe", "Stripe-Signature", stripe_secret, StripeEvent), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def create_app_from_env(settings: Settings | None = None) -> Starlette:
    """The receiver configured from `settings` (default: read from the environment now; SettingsError when bad)."""
    settings = settings or Settings.from_env()

    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    return create_app(
        GiftflowStore(database_url=settings.store_url),
        cardivo_secret=secret(settings.cardivo_webhook_secret),
        stripe_secret=secret(settings.stripe_webhook_secret),
        max_body_bytes=settings.webhook_max_body_bytes,
        read_timeout_s=settings.webhook_read_timeout_s,
        retention_days=settings.webhook_retention_days,
    )
