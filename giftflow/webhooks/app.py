"""Webhook receiver for Cardivo and Stripe deliveries.

Only verifies, stores and acknowledges: no Cardivo or Stripe calls in the request path, so the senders never
time out and retry; the sensors read the stored events later (`GiftflowStore.pending_webhook_events`).

    uvicorn giftflow.webhooks.app:create_app_from_env --factory
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from typing import Callable

import stripe
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from giftflow.resources.store import GiftflowStore

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> JSONResponse:
    # Fixed messages only: never echo the body (it may carry a gift-card code) back to the caller.
    return JSONResponse({"error": message}, status_code=status)


def _parse_signature_header(header: str) -> tuple[int, list[str]]:
    """`t=<unix>,v1=<hex>[,v1=<hex>...]` -> (t, [v1...]); ValueError when malformed."""
    timestamp, signatures = None, []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and timestamp is None:
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise ValueError("malformed signature header")
    return timestamp, signatures


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
               tolerance_s: int = 300, clock: Callable[[], float] = time.time) -> Starlette:
    def fresh(timestamp: int) -> bool:
        # Both directions: a far-future timestamp would otherwise make a captured delivery replayable for long.
        return abs(clock() - timestamp) <= tolerance_s

    async def cardivo(request: Request) -> JSONResponse:
        if not cardivo_secret:
            return _error(503, "webhook secret not configured")
        raw = await request.body()
        try:
            timestamp, signatures = _parse_signature_header(request.headers.get("cardivo-signature") or "")
        except ValueError:
            return _error(400, "missing or malformed Cardivo-Signature header")
        # Signed over the raw bytes: re-serialising the JSON would not reproduce them.
        expected = hmac.new(cardivo_secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
        if not any(hmac.compare_digest(expected, s) for s in signatures):
            return _error(400, "bad signature")
        # Checked before the replay lookup, so an old delivery is refused even for a known event id.
        if not fresh(timestamp):
            return _error(400, "stale timestamp")
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "malformed body")
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"] \
                or not isinstance(body.get("type"), str) or not body["type"]:
            return _error(400, "malformed body")
        # Unknown event types are stored too: Cardivo signed them, and refusing would only cause retries.
        return await _record(store, "cardivo", body["id"], body["type"], _redact_card_code(body))

    async def stripe_hook(request: Request) -> JSONResponse:
        if not stripe_secret:
            return _error(503, "webhook secret not configured")
        raw = await request.body()
        header = request.headers.get("stripe-signature")
        try:
            payload = raw.decode("utf-8")
            event = stripe.Webhook.construct_event(payload, header, stripe_secret, tolerance=tolerance_s)
        except stripe.SignatureVerificationError:
            return _error(400, "bad signature")
        except (ValueError, AttributeError, TypeError):  # not UTF-8, not JSON, or JSON but not an object
            return _error(400, "malformed body")
        # The SDK checks only the past side, against time.time(); also refuse far-future timestamps.
        try:
            timestamp = _parse_signature_header(header)[0]
        except ValueError:  # the SDK accepted it, but parses a little more loosely than we do
            return _error(400, "missing or malformed Stripe-Signature header")
        if not fresh(timestamp):
            return _error(400, "stale timestamp")
        event_dict = event.to_dict()
        event_id, event_type = event_dict.get("id"), event_dict.get("type")
        if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str) or not event_type:
            return _error(400, "malformed body")
        return await _record(store, "stripe", event_id, event_type, event_dict)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[
        Route("/webhooks/cardivo", cardivo, methods=["POST"]),
        Route("/webhooks/stripe", stripe_hook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])


def create_app_from_env() -> Starlette:
    return create_app(GiftflowStore(database_url=os.environ.get("GIFTFLOW_DATABASE_URL") or None),
                      cardivo_secret=os.environ.get("GIFTFLOW_CARDIVO_WEBHOOK_SECRET") or None,
                      stripe_secret=os.environ.get("GIFTFLOW_STRIPE_WEBHOOK_SECRET") or None)
