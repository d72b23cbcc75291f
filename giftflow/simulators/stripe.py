"""A Stripe API simulator for the customer endpoints giftflow uses, as the official `stripe` SDK calls them:
form-encoded bodies, newest-first lists, idempotent POSTs, Stripe's error shapes and rate limiting."""

from __future__ import annotations

import copy
import random
import re
import secrets
import string
import threading
import time
from collections import Counter, defaultdict, deque
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

CUSTOMER_PARAMS = {"email", "name", "phone", "description", "metadata", "address", "shipping", "balance",
                   "preferred_locales", "tax_exempt", "expand"}
ADDRESS_KEYS = ("city", "country", "line1", "line2", "postal_code", "state")
LIST_PARAMS = {"limit", "starting_after", "ending_before", "email", "created", "expand"}
_LIST_VALUED = {"preferred_locales", "expand"}
_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_ID_CHARS = string.ascii_letters + string.digits


class StripeError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status = status
        self.error = {"type": type, "message": message, **({"param": param} if param else {}),
                      **({"code": code} if code else {})}


def _missing(customer_id: str, param: str = "id") -> StripeError:
    return StripeError(404, f"No such customer: '{customer_id}'", param=param, code="resource_missing")


def decode_params(pairs: Iterable[tuple[str, str]]) -> dict:
    """Stripe's form encoding (`metadata[k]=v`, `created[gte]=1`, `expand[0]=x`, `expand[]=x`) as nested values."""
    out: dict = {}
    for key, value in pairs:
        match = _KEY.match(key)
        if not match:
            raise StripeError(400, f"Invalid parameter name: {key}", param=key)
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = out
        for depth, part in enumerate(parts):
            if not isinstance(node, dict):
                raise StripeError(400, f"Invalid {parts[0]}: cannot be both a value and a hash", param=parts[0])
            part = part or str(len(node))
            if depth == len(parts) - 1:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    for name in _LIST_VALUED & out.keys():
        if isinstance(out[name], dict):
            out[name] = [out[name][k] for k in sorted(out[name], key=lambda k: int(k) if k.isdigit() else -1)]
    return out


def _int(value: Any, param: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StripeError(400, f"Invalid integer: {value}", param=param, code="parameter_invalid_integer") from None


def _text(value: Any, param: str) -> str | None:
    if not isinstance(value, str):
        raise StripeError(400, f"Invalid string: {value}", param=param, code="parameter_invalid_string")
    return value or None  # an empty string unsets the field


class _Window:
    """Sliding one-second window over admitted requests."""

    def __init__(self, per_s: float):
        self.per_s, self.times = per_s, deque()

    def admit(self) -> bool:
        now = time.monotonic()
        while self.times and self.times[0] <= now - 1.0:
            self.times.popleft()
        if len(self.times) >= self.per_s:
            return False
        self.times.append(now)
        return True


class StripeState:
    """Customers, idempotency results and request counts; safe to share between the server and tests."""

    def __init__(self, customers: Iterable[dict] = (), *, clock: Callable[[], float] = time.time,
                 seed: int | None = None):
        self.lock = threading.RLock()
        self.clock = clock
        self._rng = random.Random(seed)
        self._rows: dict[str, dict] = {}  # id -> {"obj", "seq", "deleted"}; deleted rows stay as list cursors
        self._seq = 0
        self._idempotent: dict[str, tuple[tuple, int, dict]] = {}  # key -> (request fingerprint, status, body)
        self._lose = 0
        self.reset_stats()
        self.load(customers)

    # -- data -------------------------------------------------------------------------------------------------
    def load(self, customers: Iterable[dict]) -> None:
        """Preload customers (e.g. `World.customers`): given keys win, the rest are Stripe's defaults."""
        with self.lock:
            for given in customers:
                obj = self._new(given.get("id"), int(given.get("created", self.clock())))
                obj.update(copy.deepcopy({k: v for k, v in given.items() if k not in ("id", "object")}))
                self._insert(obj)

    def customers(self) -> list[dict]:
        """Live customers, newest first."""
        with self.lock:
            return [copy.deepcopy(row["obj"]) for row in self._ordered() if not row["deleted"]]

    def get(self, customer_id: str) -> dict | None:
        with self.lock:
            row = self._rows.get(customer_id)
            return copy.deepcopy(row["obj"]) if row and not row["deleted"] else None

    def lose_next_responses(self, n: int = 1) -> None:
        """The next `n` applied writes answer 502 as if their response was lost on the way; a retry with the same
        Idempotency-Key (as the SDK's own retry sends) then gets the real, saved response."""
        with self.lock:
            self._lose = n

    def _new(self, customer_id: str | None, created: int) -> dict:
        while customer_id is None or customer_id in self._rows:
            customer_id = "cus_" + "".join(self._rng.choices(_ID_CHARS, k=14))
        return {
            "id": customer_id, "object": "customer", "address": None, "balance": 0, "created": created,
            "currency": None, "default_source": None, "delinquent": False, "description": None, "discount": None,
            "email": None, "invoice_prefix": "".join(self._rng.choices("0123456789ABCDEF", k=8)),
            "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                                 "rendering_options": None},
            "livemode": False, "metadata": {}, "name": None, "next_invoice_sequence": 1, "phone": None,
            "preferred_locales": [], "shipping": None, "tax_exempt": "none", "test_clock": None,
        }

    def _insert(self, obj: dict) -> None:
        self._seq += 1
        self._rows[obj["id"]] = {"obj": obj, "seq": self._seq, "deleted": False}

    def _ordered(self) -> list[dict]:
        return sorted(self._rows.values(), key=lambda r: (r["obj"]["created"], r["seq"]), reverse=True)

    def _live(self, customer_id: str) -> dict:
        row = self._rows.get(customer_id)
        if row is None or row["deleted"]:
            raise _missing(customer_id)
        return row["obj"]

    # -- endpoints (called under the lock) ----------------------------------------------------------------------
    def _apply_fields(self, obj: dict, params: dict) -> None:
        if unknown := sorted(params.keys() - CUSTOMER_PARAMS):
            raise StripeError(400, f"Received unknown parameter: {unknown[0]}", param=unknown[0],
                              code="parameter_unknown")
        changes: dict = {}
        for name in ("name", "phone", "description"):
            if name in params:
                changes[name] = _text(params[name], name)
        if "email" in params:
            email = _text(params["email"], "email")
            if email is not None and (len(email) > 512 or not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email)):
                raise StripeError(400, f"Invalid email address: {email}", param="email", code="email_invalid")
            changes["email"] = email
        if "balance" in params:
            changes["balance"] = _int(params["balance"], "balance")
        if "tax_exempt" in params:
            if params["tax_exempt"] not in ("none", "exempt", "reverse", ""):
                raise StripeError(400, f"Invalid tax_exempt: {params['tax_exempt']}", param="tax_exempt")
            changes["tax_exempt"] = params["tax_exempt"] or "none"
        if "preferred_locales" in params:
            value = params["preferred_locales"]
            changes["preferred_locales"] = [] if value == "" else list(value)
        for name in ("address", "shipping"):
            if name in params:
                value = params[name]
                if value == "":
                    changes[name] = None
                elif not isinstance(value, dict):
                    raise StripeError(400, f"Invalid hash: {name}", param=name)
                elif name == "address":
                    changes[name] = {k: value.get(k) or None for k in ADDRESS_KEYS}
                else:
                    address = value.get("address") if isinstance(value.get("address"), dict) else {}
                    changes[name] = {"address": {k: address.get(k) or None for k in ADDRESS_KEYS},
                                     "name": value.get("name"), "phone": value.get("phone") or None}
        if "metadata" in params:
            changes["metadata"] = self._merge_metadata(obj["metadata"], params["metadata"])
        obj.update(changes)

    @staticmethod
    def _merge_metadata(current: dict, given: Any) -> dict:
        if given == "":  # `metadata=` clears every key, as at Stripe
            return {}
        if not isinstance(given, dict):
            raise StripeError(400, "Invalid hash", param="metadata")
        merged = dict(current)
        for key, value in given.items():
            if not isinstance(value, str):
                raise StripeError(400, f"Invalid value for metadata key {key}", param=f"metadata[{key}]")
            if len(key) > 40:
                raise StripeError(400, "Metadata keys can have up to 40 characters", param=f"metadata[{key}]")
            if len(value) > 500:
                raise StripeError(400, "Metadata values can have up to 500 characters", param=f"metadata[{key}]")
            if value == "":
                merged.pop(key, None)  # an empty value deletes the key, as at Stripe
            else:
                merged[key] = value
        if len(merged) > 50:
            raise StripeError(400, "Metadata can have up to 50 keys", param="metadata")
        return merged

    def create_customer(self, path: dict, params: dict) -> tuple[int, dict]:
        obj = self._new(None, int(self.clock()))
        self._apply_fields(obj, params)
        self._insert(obj)
        return 200, copy.deepcopy(obj)

    def retrieve_customer(self, path: dict, params: dict) -> tuple[int, dict]:
        if unknown := sorted(params.keys() - {"expand"}):
            raise StripeError(400, f"Received unknown parameter: {unknown[0]}", param=unknown[0],
                              code="parameter_unknown")
        return 200, copy.deepcopy(self._live(path["id"]))

    def update_customer(self, path: dict, params: dict) -> tuple[int, dict]:
        obj = self._live(path["id"])
        staged = copy.deepcopy(obj)
        self._apply_fields(staged, params)  # all or nothing: a bad parameter changes no field
        obj.update(staged)
        return 200, copy.deepcopy(obj)

    def delete_customer(self, path: dict, params: dict) -> tuple[int, dict]:
        obj = self._live(path["id"])
        self._rows[obj["id"]]["deleted"] = True
        return 200, {"id": obj["id"], "object": "customer", "deleted": True}

    def list_customers(self, path: dict, params: dict) -> tuple[int, dict]:
        if unknown := sorted(params.keys() - LIST_PARAMS):
            raise StripeError(400, f"Received unknown parameter: {unknown[0]}", param=unknown[0],
                              code="parameter_unknown")
        limit = _int(params.get("limit", 10), "limit")
        if not 1 <= limit <= 100:
            raise StripeError(400, f"This value must be {'greater' if limit < 1 else 'less'} than or equal to "
                                   f"{1 if limit < 1 else 100}.", param="limit")
        if "starting_after" in params and "ending_before" in params:
            raise StripeError(400, "You may only specify one of these parameters: ending_before, starting_after.",
                              param="ending_before")
        rows = self._ordered()
        position = {row["obj"]["id"]: i for i, row in enumerate(rows)}
        keep = self._created_filter(params.get("created"))
        email = params.get("email")

        def match(row: dict) -> bool:
            obj = row["obj"]
            return not row["deleted"] and keep(obj["created"]) and (email is None or obj["email"] == email)

        for cursor in ("starting_after", "ending_before"):
            if cursor in params and params[cursor] not in position:
                raise _missing(str(params[cursor]), cursor)
        if "ending_before" in params:
            before = [row for row in rows[:position[params["ending_before"]]] if match(row)]
            page, more = before[-limit:], len(before) > limit
        else:
            start = position[params["starting_after"]] + 1 if "starting_after" in params else 0
            after = [row for row in rows[start:] if match(row)]
            page, more = after[:limit], len(after) > limit
        return 200, {"object": "list", "data": [copy.deepcopy(r["obj"]) for r in page], "has_more": more,
                     "url": "/v1/customers"}

    @staticmethod
    def _created_filter(value: Any) -> Callable[[int], bool]:
        if value is None:
            return lambda created: True
        if not isinstance(value, dict):
            exact = _int(value, "created")
            return lambda created: created == exact
        ops = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}
        if unknown := sorted(value.keys() - ops.keys()):
            name = f"created[{unknown[0]}]"
            raise StripeError(400, f"Received unknown parameter: {name}", param=name, code="parameter_unknown")
        bounds = [(ops[op], _int(v, f"created[{op}]")) for op, v in value.items()]
        return lambda created: all(op(created, bound) for op, bound in bounds)

    # -- one request, atomically: auth, rate limit, idempotency, the endpoint, counting ------------------------------
    def serve(self, family: str, action: Callable | None, *, method: str, path: str, path_params: dict,
              pairs: list[tuple[str, str]] | None, authorization: str | None, idempotency_key: str | None,
              api_key: str | None, window: _Window | None) -> tuple[int, dict, dict]:
        with self.lock:
            counts = self._by_route[family]
            counts["requests"] += 1
            try:
                if api_key is not None and authorization != f"Bearer {api_key}":
                    shown = (authorization or "").removeprefix("Bearer ")
                    raise StripeError(401, f"Invalid API Key provided: {shown[:8]}****{shown[-4:]}" if shown
                                      else "You did not provide an API key.")
                if window is not None and not window.admit():
                    counts["rate_limited"] += 1
                    limited = StripeError(429, "Request rate limit exceeded. Learn more about rate limits here "
                                               "https://stripe.com/docs/rate-limits.", type="rate_limit_error",
                                          code="rate_limit")
                    return 429, {"error": limited.error}, {}
                if action is None:
                    raise StripeError(404, f"Unrecognized request URL ({method}: {path}). Please see "
                                           "https://stripe.com/docs or we can help at https://support.stripe.com/.")
                if pairs is None:
                    raise StripeError(400, "Request body is not form-encoded UTF-8")
                if idempotency_key and len(idempotency_key) > 255:
                    raise StripeError(400, "Idempotency keys can be up to 255 characters long")
                fingerprint = (method, path, tuple(sorted(pairs)))
                if idempotency_key and method == "POST" and idempotency_key in self._idempotent:
                    first, status, body = self._idempotent[idempotency_key]
                    if first != fingerprint:
                        raise StripeError(400, "Keys for idempotent requests can only be used with the same "
                                               "parameters they were first used with. Try using a key other than "
                                               f"'{idempotency_key}' if you meant to execute a different request.",
                                          type="idempotency_error")
                    counts["replays"] += 1
                    return status, copy.deepcopy(body), {"Idempotent-Replayed": "true"}
                try:
                    status, body = action(self, path_params, decode_params(pairs))
                except StripeError as exc:
                    status, body = exc.status, {"error": exc.error}
                    counts["errors"] += 1
                else:
                    counts["writes" if method in ("POST", "DELETE") else "reads"] += 1
                # Stripe saves the result of any request that began executing; not validation failures
                if idempotency_key and method == "POST" and status != 400:
                    self._idempotent[idempotency_key] = (fingerprint, status, copy.deepcopy(body))
                if self._lose and method in ("POST", "DELETE") and status == 200:
                    self._lose -= 1
                    return 502, {"error": {"type": "api_error", "message": "response lost (simulated)"}}, {}
                return status, body, {}
            except StripeError as exc:
                counts["errors"] += 1
                return exc.status, {"error": exc.error}, {}

    def stats(self) -> dict:
        """Request counts: totals and per route family (e.g. "POST /v1/customers/{id}")."""
        with self.lock:
            totals: Counter = Counter()
            for counts in self._by_route.values():
                totals.update(counts)
            return {**{k: totals.get(k, 0) for k in ("requests", "reads", "writes", "replays", "rate_limited",
                                                     "errors")},
                    "by_route": {family: dict(counts) for family, counts in sorted(self._by_route.items())}}

    def reset_stats(self) -> None:
        with self.lock:
            self._by_route: defaultdict[str, Counter] = defaultdict(Counter)


class _RequestId:
    """Adds Stripe's `Request-Id` header to every response, errors included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = ("req_" + secrets.token_urlsafe(10)).encode()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"request-id", request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(state: StripeState, *, api_key: str | None = None, rate_limit_per_s: float | None = None) -> Starlette:
    """Stripe's customer endpoints over `state`; `api_key` None accepts any key."""
    window = _Window(rate_limit_per_s) if rate_limit_per_s else None

    def endpoint(family: str, action: Callable | None):
        async def run(request: Request) -> JSONResponse:
            body = await request.body()
            try:
                pairs = [*request.query_params.multi_items(),
                         *parse_qsl(body.decode("utf-8"), keep_blank_values=True)]
            except UnicodeDecodeError:
                pairs = None
            status, payload, headers = state.serve(
                family, action, method=request.method, path=request.url.path, path_params=request.path_params,
                pairs=pairs, authorization=request.headers.get("authorization"),
                idempotency_key=request.headers.get("idempotency-key"), api_key=api_key, window=window)
            return JSONResponse(payload, status, headers=headers)
        return run

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(state.stats())

    async def reset_stats(request: Request) -> JSONResponse:
        state.reset_stats()
        return JSONResponse(state.stats())

    methods = ["GET", "POST", "DELETE", "PUT", "PATCH"]
    return Starlette(routes=[
        Route("/_sim/stats", stats, methods=["GET"]),
        Route("/_sim/reset_stats", reset_stats, methods=["POST"]),
        Route("/v1/customers", endpoint("GET /v1/customers", StripeState.list_customers), methods=["GET"]),
        Route("/v1/customers", endpoint("POST /v1/customers", StripeState.create_customer), methods=["POST"]),
        Route("/v1/customers/{id}", endpoint("GET /v1/customers/{id}", StripeState.retrieve_customer),
              methods=["GET"]),
        Route("/v1/customers/{id}", endpoint("POST /v1/customers/{id}", StripeState.update_customer),
              methods=["POST"]),
        Route("/v1/customers/{id}", endpoint("DELETE /v1/customers/{id}", StripeState.delete_customer),
              methods=["DELETE"]),
        Route("/{path:path}", endpoint("other", None), methods=methods),
    ], middleware=[Middleware(_RequestId)])
