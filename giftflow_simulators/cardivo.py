"""A Cardivo API simulator serving cardivo-api.md exactly, with injectable latency, 429s and 5xx."""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import random
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from giftflow_simulators.dataset import World, format_time, parse_time

FILTERS = ("redeemed_after", "redeemed_before", "updated_after")
PARAMS = {*FILTERS, "limit", "cursor"}


class CardivoState:
    """Redemptions and gift cards behind the simulator; safe to change from tests while it serves."""

    def __init__(self, redemptions=(), gift_cards=()):
        self._lock = threading.Lock()
        self._redemptions: dict[str, dict] = {}
        self._cards: dict[str, dict] = {card["code"]: copy.deepcopy(card) for card in gift_cards}
        self.requests: Counter[str] = Counter()  # per route
        self.responses: Counter[str] = Counter()  # per refusal status (401, 429, 5xx, 400, 404)
        for redemption in redemptions:
            self.add(redemption)

    @classmethod
    def from_world(cls, world: World) -> CardivoState:
        return cls(world.redemptions, world.gift_cards)

    def count(self, route: str | None = None, status: int | None = None) -> None:
        with self._lock:
            if route:
                self.requests[route] += 1
            if status:
                self.responses[str(status)] += 1

    def add(self, redemption: dict) -> dict:
        """Add (or replace, by id) a redemption; its gift card becomes findable if it was not."""
        record = copy.deepcopy(redemption)
        missing = {"id", "status", "amount", "currency", "gift_card", "redeemed_at", "updated_at"} - record.keys()
        if missing:
            raise ValueError(f"redemption lacks {sorted(missing)}")
        parse_time(record["redeemed_at"]), parse_time(record["updated_at"])
        card = record["gift_card"]
        with self._lock:
            self._redemptions[record["id"]] = record
            self._cards.setdefault(
                card["code"],
                {
                    "id": card["id"],
                    "code": card["code"],
                    "initial_value": card["initial_value"],
                    "balance": None,
                    "currency": card["currency"],
                    "status": "active",
                    "recipient": None,
                    "purchaser": None,
                    "created_at": record["redeemed_at"],
                    "expires_at": None,
                },
            )
        return copy.deepcopy(record)

    def void(self, redemption_id: str, at: datetime) -> dict:
        """Void a redemption at `at`; KeyError if unknown. Voiding twice changes nothing."""
        with self._lock:
            record = self._redemptions[redemption_id]
            if record["status"] != "voided":
                # updated_at only ever moves forward, or pollers using updated_after would miss the void
                previous = parse_time(record["updated_at"])
                record["status"] = "voided"
                record["updated_at"] = format_time(max(at, previous + timedelta(seconds=1)))
            return copy.deepcopy(record)

    def redemptions(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(self._redemptions.values()))

    def gift_card(self, code: str) -> dict | None:
        with self._lock:
            card = copy.deepcopy(self._cards.get(code))
            if card is None:
                return None
            # the balance follows the redemptions, so voids given back show up here as at Cardivo
            used = sum(
                r["amount"]
                for r in self._redemptions.values()
                if r["gift_card"]["code"] == code and r["status"] == "completed"
            )
        card["balance"] = card["initial_value"] - used
        if card["status"] in ("active", "redeemed"):
            card["status"] = "active" if card["balance"] > 0 else "redeemed"
        return card

    def page(self, *, redeemed_after=None, redeemed_before=None, updated_after=None, after=None, limit=50):
        """Matching redemptions after the keyset `after` = (updated_at, id), oldest first; and whether more follow."""
        with self._lock:
            rows = []
            for r in self._redemptions.values():
                key = (parse_time(r["updated_at"]), r["id"])
                redeemed = parse_time(r["redeemed_at"])
                if (
                    (redeemed_after is None or redeemed >= redeemed_after)
                    and (redeemed_before is None or redeemed < redeemed_before)
                    and (updated_after is None or key[0] > updated_after)
                    and (after is None or key > after)
                ):
                    rows.append((key, r))
            rows.sort(key=lambda row: row[0])
            return [copy.deepcopy(r) for _, r in rows[:limit]], len(rows) > limit

    def stats(self) -> dict:
        with self._lock:
            return {
                "total": sum(self.requests.values()),
                "requests": dict(self.requests),
                "refused": dict(self.responses),
                "redemptions": len(self._redemptions),
            }


class _BadRequest(Exception):
    pass


def _error(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status, headers=headers)


def _encode_cursor(last: dict, filters: dict) -> str:
    raw = json.dumps({"u": last["updated_at"], "i": last["id"], "f": filters}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[tuple[datetime, str], dict]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if set(data["f"]) - set(FILTERS):
            raise ValueError("unknown filter")
        filters = {name: parse_time(value).isoformat() for name, value in data["f"].items()}
        return (parse_time(data["u"]), str(data["i"])), filters
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError):
        raise _BadRequest("cursor is not one this API returned") from None


def _list_params(request: Request, max_page_size: int) -> dict:
    items = request.query_params.multi_items()
    names = [name for name, _ in items]
    if unknown := sorted(set(names) - PARAMS):
        raise _BadRequest(f"unknown parameter: {unknown[0]}")
    if repeated := sorted({n for n in names if names.count(n) > 1}):
        raise _BadRequest(f"parameter given more than once: {repeated[0]}")
    query = dict(items)
    filters = {}
    for name in FILTERS:
        if name in query:
            try:
                filters[name] = parse_time(query[name]).isoformat()
            except ValueError:
                raise _BadRequest(f"{name} must be an RFC 3339 date-time with a zone, e.g. 2026-11-20T00:00:00Z") from None
    try:
        limit = int(query.get("limit", "50"))
    except ValueError:
        raise _BadRequest("limit must be an integer from 1 to 100") from None
    if not 1 <= limit <= 100:
        raise _BadRequest("limit must be an integer from 1 to 100")
    after = None
    if "cursor" in query:
        after, cursor_filters = _decode_cursor(query["cursor"])
        # the cursor carries its query, so the next page cannot silently change the filters
        if filters and filters != cursor_filters:
            raise _BadRequest("cursor belongs to a query with other filters")
        filters = cursor_filters
    bounds = {name: parse_time(value) for name, value in filters.items()}
    after_, before_ = bounds.get("redeemed_after"), bounds.get("redeemed_before")
    if after_ and before_ and after_ > before_:
        raise _BadRequest("redeemed_after is later than redeemed_before")
    return {"filters": filters, "bounds": bounds, "after": after, "limit": min(limit, max_page_size)}


def create_app(
    state: CardivoState,
    api_key: str,
    *,
    latency_s: float = 0.0,
    error_rate: float = 0.0,
    rate_limit_rate: float = 0.0,
    max_page_size: int = 100,
    seed: int = 0,
    retry_after_s: int = 1,
) -> Starlette:
    """The Cardivo API over `state`. Faults (429 with Retry-After, 500/503) come from a random stream seeded by
    `seed`, so a failing run can be replayed."""
    rng, rng_lock = random.Random(seed), threading.Lock()

    async def guard(request: Request, route: str) -> JSONResponse | None:
        state.count(route)
        if latency_s:
            await asyncio.sleep(latency_s)
        if request.headers.get("authorization") != f"Bearer {api_key}":
            state.count(status=401)
            return _error(401, "authentication", "missing or invalid API key")
        with rng_lock:
            rate_limited, failed = rng.random() < rate_limit_rate, rng.random() < error_rate
            status = rng.choice([500, 503])
        if rate_limited:
            state.count(status=429)
            return _error(429, "rate_limited", "too many requests", {"Retry-After": str(retry_after_s)})
        if failed:
            state.count(status=status)
            return _error(status, "server_error", "internal error, please retry")
        return None

    async def list_redemptions(request: Request) -> JSONResponse:
        if refused := await guard(request, "GET /v1/redemptions"):
            return refused
        try:
            query = _list_params(request, max_page_size)
        except _BadRequest as exc:
            state.count(status=400)
            return _error(400, "invalid_request", str(exc))
        data, more = state.page(**query["bounds"], after=query["after"], limit=query["limit"])
        cursor = _encode_cursor(data[-1], query["filters"]) if more else None
        return JSONResponse({"data": data, "next_cursor": cursor})

    async def find_gift_card(request: Request) -> JSONResponse:
        if refused := await guard(request, "GET /v1/gift_cards"):
            return refused
        card = state.gift_card(request.path_params["code"])
        if card is None:
            state.count(status=404)
            return _error(404, "not_found", "no gift card with this code")  # never echo a code: it is a secret
        return JSONResponse(card)

    async def sim_add(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            added = [state.add(r) for r in (body if isinstance(body, list) else [body])]
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            return _error(400, "invalid_request", f"not a redemption or a list of them: {exc}")
        return JSONResponse({"added": len(added)}, 201)

    async def sim_void(request: Request) -> JSONResponse:
        try:
            body = await request.json() if await request.body() else {}
            at = parse_time(body["at"]) if body.get("at") else datetime.now(timezone.utc)
            return JSONResponse(state.void(request.path_params["id"], at))
        except KeyError:
            return _error(404, "not_found", "no such redemption")
        except (ValueError, AttributeError) as exc:
            return _error(400, "invalid_request", f'body must be {{"at": RFC 3339}} or empty: {exc}')

    async def sim_stats(request: Request) -> JSONResponse:
        return JSONResponse(state.stats())

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "invalid_request"}.get(exc.status_code, "server_error")
        return _error(exc.status_code, kind, str(exc.detail))

    return Starlette(
        routes=[
            Route("/v1/redemptions", list_redemptions, methods=["GET"]),
            Route("/v1/gift_cards/{code}", find_gift_card, methods=["GET"]),
            Route("/_sim/redemptions", sim_add, methods=["POST"]),
            Route("/_sim/redemptions/{id}/void", sim_void, methods=["POST"]),
            Route("/_sim/stats", sim_stats, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
    )
