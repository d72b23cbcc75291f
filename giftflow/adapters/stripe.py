"""The Stripe client: the official SDK, a client-side rate limit, idempotent writes, no key in logs."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
import stripe
from pydantic import BaseModel, ConfigDict, Field
from pyrate_limiter import Duration, Limiter, Rate, SQLiteBucket
from tenacity import RetryCallState, retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

if TYPE_CHECKING:  # the SDK's TypedDicts; giftflow builds params from sync files and rules, Stripe validates them
    from stripe.params import (
        CustomerCreateParams,
        CustomerTaxIdCreateParams,
        CustomerUpdateParams,
        PromotionCodeCreateParams,
        RefundCreateParams,
    )

# The last Stripe API version whose customer create/update takes `coupon` (2025-03-31.basil removed it): named by the
# one request that applies a coupon to a customer (apply_customer_coupon).
COUPON_API_VERSION = "2025-02-24.acacia"

# Every write's Stripe idempotency key is derived from the operation itself, so replaying the
# same operation (a retried step, a rerun after a crash) is a no-op at Stripe.
KEY_PREFIX = "giftflow"


def idempotency_key(kind: str, target: str, params: dict[str, Any]) -> str:
    blob = json.dumps([kind, target, params], sort_keys=True, separators=(",", ":"), default=str)
    return f"{KEY_PREFIX}-{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:40]}"


@dataclass
class WriteResult:
    object: dict
    request_id: str | None


def client_rates(per_second: int) -> list[Rate]:
    """The client's pace for a limit of `per_second`: 3 % below it, and at least one call below where the limit
    is above one. A call paced here reaches Stripe a little later, and not every call equally late: the margin
    keeps a second at Stripe from holding more calls than the limit when some arrive later than others
    (bench/sync_throughput.py: 0 answers of 429 in 10,000 writes at 100/s and 200/s)."""
    return [Rate(max(1, per_second - max(1, per_second * 3 // 100)), Duration.SECOND)]


@lru_cache(maxsize=16)
def _limiter(per_second: int, shared_db: str | None) -> LocalBudget | Limiter | PostgresBudget:
    """One limiter per process, rate and bucket. `shared_db` is where every run draws from one budget: a
    PostgreSQL URL (giftflow's database: every run on every host) or a SQLite file guarded by a file lock
    (every run on this host)."""
    rates = client_rates(per_second)
    if not shared_db:
        # Paced 3 % under the limit. The cap (one call above the pace, so that it is not what spaces calls
        # as long as the schedule is kept) bounds the catch-up after a stall; the rest of the margin is left
        # for calls that take different times to reach Stripe.
        return LocalBudget(rates[0].limit, window_cap=min(per_second, rates[0].limit + 1))
    if shared_db.startswith("postgresql"):
        return PostgresBudget(shared_db, rates[0].limit)
    Path(shared_db).parent.mkdir(parents=True, exist_ok=True)
    bucket = SQLiteBucket.init_from_file(rates, table="stripe_calls", db_path=shared_db, use_file_lock=True)
    return Limiter(bucket)


class LocalBudget:
    """This process's budget: calls on an absolute schedule, as PostgresBudget spaces the shared one (GCRA: calls
    1/rate apart), and never more than `window_cap` calls in any one second as Stripe may count them.

    Each call takes the next slot of the schedule under a lock and sleeps until it, so a thread that wakes a little
    late or a call that takes long shifts nothing that follows. After a stall (the process starved of CPU, a garbage
    collection) the slots it skipped, up to `catch_up_s` of them, are taken late rather than lost; an idle budget
    banks no more than that. The cap keeps the catch-up from putting a second over the limit at Stripe. It counts
    calls where Stripe counts them, when they arrive, as far as the client can tell: a call counts from half the
    usual time to an answer after it left, or once answered, from its answer less that if later, so calls held up
    on the way by a stall count where Stripe saw them; and a new call is checked against the second before it
    will likely arrive.

    It replaced pyrate-limiter's in-memory sliding window, which let a whole second's calls go at once and then
    had every thread that found it full sleep the wait plus a 50 ms buffer: bursts and gaps of 50-250 ms, writes
    at 91 % of the limit where 97 % is asked (bench/sync_throughput.py)."""

    WINDOW_S = 1.0

    def __init__(self, per_second: int, window_cap: int | None = None, catch_up_s: float = 0.1):
        self.interval, self.catch_up_s = 1.0 / per_second, catch_up_s
        self.window_cap = max(per_second, window_cap or per_second)
        self._next_slot = self._last_left = 0.0
        # The calls of the last second: call number -> counted from; and a heap of (counted from, call number),
        # where an entry whose call has since been counted from later is stale.
        self._counted: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []
        self._numbers = itertools.count()
        self._usual_s = 0.0  # the usual time from leaving to an answer
        self._mine = threading.local()
        self._lock = threading.Lock()

    def try_acquire(self, _item: str = "stripe") -> bool:
        """Wait for this call's slot (and for room in the last second); True when it may go."""
        with self._lock:
            slot = max(self._next_slot, time.monotonic() - self.catch_up_s)
            self._next_slot = slot + self.interval
        while True:
            if (delay := slot - time.monotonic()) > 0:
                time.sleep(delay)
            with self._lock:
                now = time.monotonic()
                ahead = self._usual_s / 2  # when this call will likely reach Stripe: the window to check ends there
                self._forget(now + ahead - self.WINDOW_S)
                if now < self._last_left + self.interval / 2:  # catching up: at twice the pace, not all at once
                    slot = self._last_left + self.interval / 2
                elif len(self._counted) < self.window_cap:
                    self._mine.call = number, _ = next(self._numbers), now
                    self._count(number, now + ahead)
                    self._last_left = now
                    return True
                else:
                    slot = self._heap[0][0] + self.WINDOW_S - ahead

    def answered(self) -> None:
        """The call this thread last let go has its answer (or failed): count it from when it reached Stripe as
        far as one can tell, its answer less half the usual time to an answer, if that is later than thought."""
        call, self._mine.call = getattr(self._mine, "call", None), None
        if call is None:
            return
        number, left = call
        now = time.monotonic()
        with self._lock:
            if (at := now - self._usual_s / 2) > self._counted.get(number, left):
                self._count(number, at)
            # A running mean that a stall moves little: one answer counts at most twice the usual.
            took = now - left
            self._usual_s += 0.05 * (min(took, 2 * self._usual_s or took) - self._usual_s)

    def _count(self, number: int, at: float) -> None:
        self._counted[number] = at
        heapq.heappush(self._heap, (at, number))

    def _forget(self, before: float) -> None:
        while self._heap and self._heap[0][0] <= before:
            at, number = heapq.heappop(self._heap)
            if self._counted.get(number) == at:
                del self._counted[number]


class PostgresBudget:
    """A token bucket in one PostgreSQL row (GCRA: calls spaced 1/rate apart, no burst), shared by every run on
    every host: each call takes the next slot in one atomic UPDATE, on PostgreSQL's clock, and waits for it.
    One round trip a call and no lock held while waiting. pyrate-limiter's PostgresBucket (a log of calls under a
    NOWAIT table lock) turns contention into refused attempts and retries; this spaces calls instead
    (bench/shared_rate_limit.py: 4 hosts x 8 threads, 95-97 % of the limit)."""

    _TABLE = "giftflow_stripe_budget"

    def __init__(self, url: str, per_second: int, name: str = "stripe"):
        self.interval, self.name = 1.0 / per_second, name
        self.engine = sa.create_engine(url, pool_size=4, max_overflow=28, pool_pre_ping=True, hide_parameters=True)
        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7263532)"))  # one creator among many hosts
            conn.execute(
                sa.text(
                    f"CREATE TABLE IF NOT EXISTS {self._TABLE} "
                    "(name VARCHAR(64) PRIMARY KEY, next_slot DOUBLE PRECISION NOT NULL)"
                )
            )
            conn.execute(sa.text(f"INSERT INTO {self._TABLE} VALUES (:name, 0) ON CONFLICT DO NOTHING"), {"name": name})

    def try_acquire(self, _item: str = "stripe") -> bool:
        """Wait for this call's slot; True when it may go."""
        now_sql = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
        with self.engine.begin() as conn:
            slot, now = conn.execute(
                sa.text(
                    f"UPDATE {self._TABLE} SET next_slot = GREATEST(next_slot, {now_sql}) + :interval "
                    f"WHERE name = :name RETURNING next_slot - :interval, {now_sql}"
                ),
                {"interval": self.interval, "name": self.name},
            ).one()
        if slot > now:
            time.sleep(slot - now)
        return True


@lru_cache(maxsize=16)
def _client(api_key: str, api_base: str | None, retries: int) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key, base_addresses={"api": api_base.rstrip("/")} if api_base else None, max_network_retries=retries
    )


STRIPE_API = "https://api.stripe.com"


def mask_key(key: str) -> str:
    """A key as it may be shown: its kind prefix and last 4 characters (`sk_test_…2e2e`), never more."""
    if len(key) < 12:
        return "…" + key[-2:] if key else "(empty)"
    kind = key[:8] if re.match(r"^[a-z]{2}_(test|live)_", key) else key[:3]
    return f"{kind}…{key[-4:]}"


class _Named(stripe.StripeError):
    def __str__(self) -> str:  # the message says it all; the request id stays in `request_id`
        return self._message or ""


class StripeKeyRefused(_Named, stripe.AuthenticationError):
    """Stripe refused STRIPE_API_KEY (401): the message names the variable, the masked key and the base URL."""


class StripeKeyNotPermitted(_Named, stripe.PermissionError):
    """STRIPE_API_KEY is valid but may not do this (403, e.g. a restricted key without the permission)."""


def _key_error(exc: stripe.StripeError, api_key: str, api_base: str | None) -> stripe.StripeError:
    """An authentication or permission error that says what to fix, in two lines, keeping Stripe's status."""
    base = (api_base or STRIPE_API).rstrip("/")
    said = getattr(exc, "user_message", None) or str(exc)
    cls: type[StripeKeyRefused] | type[StripeKeyNotPermitted]
    if isinstance(exc, stripe.AuthenticationError):
        cls, text = (
            StripeKeyRefused,
            (
                f"STRIPE_API_KEY ({mask_key(api_key)}) was refused by {base} (401: {said}). "
                f"Set STRIPE_API_KEY to a secret or restricted key of that account"
                f"{' (STRIPE_API_BASE points at a simulator or proxy: use the key it expects)' if api_base else ''}; "
                "README, Configuration. `giftflow check` tries it."
            ),
        )
    else:
        cls, text = (
            StripeKeyNotPermitted,
            (
                f"STRIPE_API_KEY ({mask_key(api_key)}) may not do this at {base} (403: {said}). "
                "A restricted key needs read and write access to customers, charges, payment intents, refunds, "
                "promotion codes and Radar early fraud warnings; README, Configuration."
            ),
        )
    return cls(
        text,
        http_body=exc.http_body,
        http_status=exc.http_status,
        json_body=exc.json_body,
        headers=exc.headers,
        code=exc.code,
    )


MAX_RETRY_AFTER_S = 60
_exponential = wait_exponential_jitter(0.5, max=8)


def _backoff(retry_state: RetryCallState) -> float:
    """Exponential backoff with jitter, but never sooner than the 429's `Retry-After` (seconds or an HTTP date,
    at most MAX_RETRY_AFTER_S) asks."""
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    return max(_exponential(retry_state), _retry_after_s(exc))


def _retry_after_s(exc: BaseException | None) -> float:
    headers = getattr(exc, "headers", None) or {}
    value = next((str(v).strip() for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S) if seconds == seconds else 0.0  # NaN: ignored


class StripeClient(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    """Stripe through `stripe.StripeClient`, paced to `max_requests_per_second`."""

    api_key: str = Field(description="Stripe secret or restricted key (STRIPE_API_KEY)")
    api_base: str | None = Field(default=None, description="override of Stripe's API base (STRIPE_API_BASE)")
    max_requests_per_second: int = Field(
        default=20, ge=1, description="client-side limit; Stripe allows 25/s in test mode, 100/s live"
    )
    max_network_retries: int = Field(default=3, ge=0)
    max_concurrent_writes: int = Field(
        default=8,
        ge=1,
        description="writes in flight at once (GIFTFLOW_STRIPE_WRITE_CONCURRENCY); the rate limit still caps the total",
    )
    rate_limit_db: str | None = Field(
        default=None,
        description="SQLite file shared by all runs on the host for one Stripe budget (Settings: "
        "GIFTFLOW_STRIPE_RATE_DB or $DAGSTER_HOME/giftflow_stripe_rate.sqlite); "
        "in-process when unset",
    )

    def __repr__(self) -> str:  # never print the key
        return f"StripeClient(api_base={self.api_base!r}, max_requests_per_second={self.max_requests_per_second})"

    @property
    def client(self) -> stripe.StripeClient:
        return _client(self.api_key, self.api_base or None, self.max_network_retries)

    def _call(self, fn: Callable[[], Any]) -> Any:
        @retry(retry=retry_if_exception_type(stripe.RateLimitError), wait=_backoff, stop=stop_after_attempt(6), reraise=True)
        def paced():
            limiter = _limiter(self.max_requests_per_second, self.rate_limit_db)
            limiter.try_acquire("stripe")
            try:
                return fn()
            finally:
                if isinstance(limiter, LocalBudget):
                    limiter.answered()

        try:
            return paced()
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            if isinstance(exc, (StripeKeyRefused, StripeKeyNotPermitted)):
                raise
            raise _key_error(exc, self.api_key, self.api_base) from None

    def check_key(self) -> str:
        """One cheap authenticated call (list 1 customer): what was reached, or the key error."""
        self._call(lambda: self.client.v1.customers.list(params={"limit": 1}))
        return (self.api_base or STRIPE_API).rstrip("/")

    def _pages(self, lister: Callable[..., Any], params: dict[str, Any]) -> Iterator[tuple[list[dict], int]]:
        """Every object of a list endpoint, one page at a time, with the running call count."""
        params = {"limit": 100, **params}
        calls = 0
        while True:
            page = self._call(lambda: lister(params=dict(params)))
            calls += 1
            rows = [o.to_dict() for o in page.data]
            yield rows, calls
            if not page.has_more or not rows:
                return
            params["starting_after"] = rows[-1]["id"]

    def list_all(self, kind: str, **params: Any) -> tuple[list[dict], int]:
        """All objects of `kind` (customers, payment_intents, charges, early_fraud_warnings, events,
        refunds) matching `params`, and the calls it took."""
        rows, calls = [], 0
        for page, calls in self.iter_pages(kind, **params):
            rows += page
        return rows, calls

    def iter_pages(self, kind: str, **params: Any) -> Iterator[tuple[list[dict], int]]:
        """list_all one page at a time (newest first, as Stripe lists), with the running call count."""
        lister = {
            "customers": self.client.v1.customers.list,
            "payment_intents": self.client.v1.payment_intents.list,
            "charges": self.client.v1.charges.list,
            "early_fraud_warnings": self.client.v1.radar.early_fraud_warnings.list,
            "events": self.client.v1.events.list,
            "refunds": self.client.v1.refunds.list,
        }[kind]
        return self._pages(lister, params)

    def iter_customers(self, page_size: int = 100) -> Iterator[tuple[list[dict], int]]:
        """Every customer, one page at a time, with the running call count."""
        return self._pages(self.client.v1.customers.list, {"limit": page_size})

    def retrieve(self, kind: str, object_id: str) -> dict:
        retrieve: dict[str, Callable[[str], Any]] = {
            "customers": self.client.v1.customers.retrieve,
            "charges": self.client.v1.charges.retrieve,
            "payment_intents": self.client.v1.payment_intents.retrieve,
        }
        return self._call(lambda: retrieve[kind](object_id)).to_dict()

    def list_customers_by_email(self, email: str) -> list[dict]:
        """Customers whose e-mail is exactly `email` (Stripe's filter is case-sensitive)."""
        page = self._call(lambda: self.client.v1.customers.list(params={"email": email, "limit": 100}))
        return [c.to_dict() for c in page.data]

    def create_customer(self, params: dict, key: str) -> WriteResult:
        obj = self._call(
            lambda: self.client.v1.customers.create(
                params=cast("CustomerCreateParams", params), options={"idempotency_key": key}
            )
        )
        return WriteResult(obj.to_dict(), _request_id(obj))

    def create_refund(self, params: dict, key: str) -> WriteResult:
        obj = self._call(
            lambda: self.client.v1.refunds.create(
                params=cast("RefundCreateParams", params), options={"idempotency_key": key}
            )
        )
        return WriteResult(obj.to_dict(), _request_id(obj))

    def update_customer(self, customer_id: str, params: dict, key: str) -> WriteResult:
        obj = self._call(
            lambda: self.client.v1.customers.update(
                customer_id, params=cast("CustomerUpdateParams", params), options={"idempotency_key": key}
            )
        )
        return WriteResult(obj.to_dict(), _request_id(obj))

    def apply_customer_coupon(self, customer_id: str, coupon: str, key: str) -> WriteResult:
        """Apply `coupon` to the customer as its discount. The pinned API (2026-10-28) has no customer `coupon` (removed
        in 2025-03-31.basil, with no customer-level replacement: discounts moved to subscriptions, invoices and
        checkout), so this one request names the last version that has it (COUPON_API_VERSION) in its
        Stripe-Version header; every other request stays on the pinned version."""
        obj = self._call(
            lambda: self.client.v1.customers.update(
                customer_id,
                params=cast("CustomerUpdateParams", {"coupon": coupon}),
                options={"idempotency_key": key, "stripe_version": COUPON_API_VERSION},
            )
        )
        return WriteResult(obj.to_dict(), _request_id(obj))

    def iter_customer_objects(self, *, with_tax_ids: bool = False, page_size: int = 100) -> Iterator[tuple[list[dict], int]]:
        """Every customer as Stripe returns it (with its tax ids where asked), a page at a time."""
        params: dict[str, Any] = {"limit": page_size}
        if with_tax_ids:
            params["expand"] = ["data.tax_ids"]
        return self._pages(self.client.v1.customers.list, params)

    def list_promotion_codes(self, **params: Any) -> tuple[list[dict], int]:
        """Promotion codes (the pinned API's way to give a customer a coupon) matching `params`."""
        rows, calls = [], 0
        for page, calls in self._pages(self.client.v1.promotion_codes.list, params):
            rows += page
        return rows, calls

    def create_tax_id(self, customer_id: str, params: dict, key: str) -> WriteResult:
        obj = self._call(
            lambda: self.client.v1.customers.tax_ids.create(
                customer_id, params=cast("CustomerTaxIdCreateParams", params), options={"idempotency_key": key}
            )
        )
        return WriteResult(obj.to_dict(), _request_id(obj))

    def create_promotion_code(self, params: dict, key: str) -> WriteResult:
        obj = self._call(
            lambda: self.client.v1.promotion_codes.create(
                params=cast("PromotionCodeCreateParams", params), options={"idempotency_key": key}
            )
        )
        return WriteResult(obj.to_dict(), _request_id(obj))


def _request_id(obj: Any) -> str | None:
    response = getattr(obj, "last_response", None)
    return getattr(response, "request_id", None)
