"""Webhook receiver for Cardivo and Stripe deliveries.

Only verifies, stores and acknowledges: no Cardivo or Stripe calls in the request path, so the senders never
time out and retry; the sensors read the stored events later (`GiftflowStore.pending_webhook_events`).

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
import os
import re
import time
from typing import Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from giftflow.resources.store import GiftflowStore

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # real deliveries are a few KiB; Stripe's largest events stay far below 1 MiB
READ_TIMEOUT_S = 10.0  # for the whole body: a sender that drips bytes must not hold a connection for ever


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


def _redact_card_code(body: dict) -> dict:
    """Keep only the last 4 characters of `data.gift_card.code`: the full code is a bearer secret."""
    data = body.get("data")
    card = data.get("gift_card") if isinstance(data, dict) else None
    if isinstance(card, dict) and isinstance(card.get("code"), str):
        card["code"] = "…" + card["code"][-4:]
    return body


async def _record(store: GiftflowStore, source: str, event_id: str, event_type: str, payload: dict) -> JSONResponse:
    # The store is synchronous database I/O: keep it off the event loop.
    new = await run_in_threadpool(store.record_webhook_event, source, event_id, event_type, payload)
    log.info("%s webhook %s (%s)%s", source, event_id, event_type, "" if new else " replayed")
    # A replay still gets 200, or the sender keeps retrying an event we already hold.
    return JSONResponse({"received": True} if new else {"received": True, "duplicate": True})


def create_app(store: GiftflowStore, *, cardivo_secret: str | None, stripe_secret: str | None,
               tolerance_s: int = 300, clock: Callable[[], float] = time.time,
               max_body_bytes: int = MAX_BODY_BYTES, read_timeout_s: float = READ_TIMEOUT_S) -> Starlette:
    def endpoint(source: str, header: str, secret: str | None):
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
                body = json.loads(raw)
            except ValueError:
                return _error(400, "malformed body")
            if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"] \
                    or not isinstance(body.get("type"), str) or not body["type"]:
                return _error(400, "malformed body")
            # Unknown event types are stored too: the sender signed them, and refusing would only cause retries.
            return await _record(store, source, body["id"], body["type"], _redact_card_code(body))
        return receive

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[
        Route("/webhooks/cardivo", endpoint("cardivo", "Cardivo-Signature", cardivo_secret), methods=["POST"]),
        Route("/webhooks/stripe", endpoint("stripe", "Stripe-Signature", stripe_secret), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])


def create_app_from_env() -> Starlette:
    return create_app(GiftflowStore(database_url=os.environ.get("GIFTFLOW_DATABASE_URL") or None),
                      cardivo_secret=os.environ.get("GIFTFLOW_CARDIVO_WEBHOOK_SECRET") or None,
                      stripe_secret=os.environ.get("GIFTFLOW_STRIPE_WEBHOOK_SECRET") or None,
                      max_body_bytes=int(os.environ.get("GIFTFLOW_WEBHOOK_MAX_BODY_BYTES") or MAX_BODY_BYTES),
                      read_timeout_s=float(os.environ.get("GIFTFLOW_WEBHOOK_READ_TIMEOUT_S") or READ_TIMEOUT_S))
