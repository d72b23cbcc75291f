"""The one writer of Stripe customers: ledger first, idempotent write, mirror after.

The gift-card sync and every reverse-ETL sync are configurations of one engine: giftflow.domain.sync_plan diffs,
`apply_sync_plan` here writes, through `update_customer`, `create_customer_once` and `_send`: one code path
with the ledger, idempotency keys, rate limit, dry run and the exactly-once create.

A failed write is recorded and the rest still go out; the caller fails the step afterwards so Dagster
shows it, and a retry resends only what the ledger does not show as sent.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd
import stripe

from giftflow.adapters.store import GiftflowStore, MirroredCustomers, PlannedWrite, WriteOutcome
from giftflow.adapters.stripe import StripeClient, WriteResult, idempotency_key
from giftflow.domain.sync_plan import catch_up, request
from giftflow.domain.sync_spec import SyncSpec
from giftflow.domain.vocabulary import Action, LedgerStatus, Outcome, RejectionStage, WriteKind


@dataclass
class ApplyReport:
    counts: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)
    rejections: list[dict] = field(default_factory=list)  # rows refused, by validation or by Stripe
    promotion_codes: list[dict] = field(default_factory=list)  # created by this run: row, customer, coupon, code, id

    def add(self, outcome: Outcome, n: int = 1) -> None:
        """Count `n` rows with this outcome, under its plain string: Dagster's metadata serialises no enums."""
        self.counts[outcome.value] += n

    @property
    def writes(self) -> int:
        return self.counts[Outcome.CREATED] + self.counts[Outcome.UPDATED]


Record = PlannedWrite | WriteOutcome | MirroredCustomers


class _Submission:
    __slots__ = ("done", "error", "records")

    def __init__(self, records: tuple[Record, ...]):
        self.records, self.done = records, False
        self.error: BaseException | None = None


class GroupCommit:
    """The writer threads' ledger entries and mirrored answers, committed together. Each thread still waits until
    its own records are committed (a write `planned` before it is sent, its outcome and the customer as Stripe
    answered before the thread goes on), but one transaction carries what every thread has waiting: the first
    thread to find no commit under way commits for all, the others wait for it. Eight threads cost one commit,
    not eight, and none of them waits in the database's lock for another's; each thread-by-thread commit had
    kept writes at 60-70 % of the rate limit (bench/sync_throughput.py). A batch the database refuses is
    committed again one submission at a time, so a bad record fails only its own write."""

    def __init__(self, store: GiftflowStore):
        self.store = store
        self._cond = threading.Condition()
        self._pending: list[_Submission] = []
        self._busy = False

    def record(self, *records: Record) -> None:
        """Commit `records` (in one transaction, with whatever other threads have waiting); raise what the
        database raised for them."""
        mine, batch = _Submission(records), []
        with self._cond:
            self._pending.append(mine)
            while not mine.done and self._busy:
                self._cond.wait()
            if not mine.done:  # no commit under way: this thread commits everything waiting, its own included
                batch, self._pending, self._busy = self._pending, [], True
        if not mine.done:
            error: BaseException | None = None
            try:
                self._commit(batch)
            except BaseException as exc:  # e.g. interrupted: nobody's records count as committed
                error = exc
                raise
            finally:
                with self._cond:
                    for sub in batch:
                        sub.done, sub.error = True, sub.error or error
                    self._busy = False
                    self._cond.notify_all()
        if mine.error is not None:
            raise mine.error

    def _commit(self, batch: list[_Submission]) -> None:
        keys = [r.op_key for sub in batch for r in sub.records if not isinstance(r, MirroredCustomers)]
        if len(batch) > 1 and len(set(keys)) == len(keys):
            try:
                self.store.record_writes([r for sub in batch for r in sub.records])
                return
            except Exception:  # noqa: BLE001 - committed again one by one below: each gets its own error
                pass
        for sub in batch:
            try:
                self.store.record_writes(sub.records)
            except Exception as exc:  # noqa: BLE001 - raised in the thread that submitted it
                sub.error = exc


@dataclass
class _Ctx:
    stripe_api: StripeClient
    store: GiftflowStore
    partition: str | None
    run_id: str | None
    report: ApplyReport
    records: GroupCommit


# -- writing a plan -----------------------------------------------------------------------------------
def _write_rows(ctx: _Ctx, rows: list[dict], write: Callable[[_Ctx, dict], None], target: Callable[[dict], str]) -> None:
    """Write rows on `max_concurrent_writes` threads: Stripe answers in hundreds of milliseconds, so one
    writer at a time would use a fraction of the rate limit, which still caps the total. Rows for the same
    customer stay in order on one thread; each thread counts into its own report, merged in row order."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(target(row)), []).append(row)

    def run(group: list[dict]) -> ApplyReport:
        sub = _Ctx(ctx.stripe_api, ctx.store, ctx.partition, ctx.run_id, ApplyReport(), ctx.records)
        for row in group:
            write(sub, row)
        return sub.report

    workers = max(1, min(ctx.stripe_api.max_concurrent_writes, len(groups)))
    with _objects_before_left_alone(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stripe-writer") as pool:
        for sub in pool.map(run, groups.values()):
            ctx.report.counts.update(sub.counts)
            ctx.report.failures += sub.failures
            ctx.report.rejections += sub.rejections
            ctx.report.promotion_codes += sub.promotion_codes


@contextmanager
def _objects_before_left_alone() -> Iterator[None]:
    """While the writers run, the garbage collector leaves the objects that were alive before them alone
    (gc.freeze, O(1)): a full collection walks every object of the process (the plan, the mirror it was
    diffed against, whatever else the process holds) with every thread stopped, 0.3-1 s at 100,000 customers,
    three times in 10,000 writes, and each such stall is time the rate limit lets go unused
    (bench/sync_throughput.py). What the writers allocate is collected as usual; what was frozen is handed back
    (gc.unfreeze) when they are done, and garbage among it collected then."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def apply_sync_plan(
    plan: pd.DataFrame,
    stripe_api: StripeClient,
    store: GiftflowStore,
    *,
    spec: SyncSpec,
    dry_run: bool,
    partition: str | None,
    run_id: str | None,
    log: logging.Logger | None = None,
) -> ApplyReport:
    """Carry out a sync plan (giftflow.domain.sync_plan) of `spec`. A row Stripe refuses (4xx) is a rejection with
    Stripe's message; anything else that fails is a failure, to be retried."""
    log = log or logging.getLogger(__name__)
    report = ApplyReport()
    ctx = _Ctx(stripe_api, store, partition, run_id, report, GroupCommit(store))
    report.add(Outcome.UNCHANGED, int((plan["action"] == Action.NONE).sum()))
    refused = plan[plan["action"] == Action.REJECT]
    report.add(Outcome.REJECTED, len(refused))
    report.rejections += [
        {
            "row_key": r["row_key"],
            "customer_id": r["customer_id"],
            "stage": RejectionStage.VALIDATION.value,
            "reason": r["reason"],
        }
        for r in refused.to_dict("records")
    ]
    rows = plan[plan["action"].isin([Action.CREATE, Action.UPDATE])].to_dict("records")

    def write(ctx: _Ctx, row: dict) -> None:
        report = ctx.report
        if dry_run:
            report.add(Outcome.WOULD_CREATE if row["action"] == Action.CREATE else Outcome.WOULD_UPDATE)
            return
        customer_id, wrote = row["customer_id"], False
        try:
            params, before, follow_ups = request(spec, row)
            if row["action"] == Action.CREATE:
                customer, wrote = create_customer_once(
                    ctx, row["identity"], params, lookup_email=row["email"] if "@" in row["identity"] else None
                )
                customer_id = customer["id"]
                store.record_sync_ids(spec.name, {row["row_key"]: customer_id}, run_id)
                # Found, not made now: made by an earlier run's create (whose answer was lost) or by someone
                # else, perhaps with other values than this row wants now. Bring it there in this run.
                if not wrote and (fix := catch_up(spec, row, customer)) is not None:
                    update_customer(ctx, customer_id, *request(spec, fix)[:2])
            elif params:
                wrote = update_customer(ctx, customer_id, params, before) is not None
            for op in follow_ups:
                made = _follow_up(ctx, customer_id, op, before)
                wrote |= made is not None
                # the code is what the customer is given
                if made is not None and op["kind"] == WriteKind.CREATE_PROMOTION_CODE:
                    report.promotion_codes.append(
                        {
                            "row_key": row["row_key"],
                            "customer_id": customer_id,
                            "coupon": op["params"]["promotion"]["coupon"],
                            "code": made.get("code"),
                            "promotion_code": made.get("id"),
                            "max_redemptions": made.get("max_redemptions"),
                        }
                    )
                    report.counts["promotion_codes_created"] += 1
                    log.info(
                        "promotion code %s (coupon %s) created for %s",
                        made.get("code"),
                        op["params"]["promotion"]["coupon"],
                        customer_id,
                    )
        except RefusedBefore as exc:
            report.add(Outcome.REJECTED)
            report.rejections.append(
                {
                    "row_key": row["row_key"],
                    "customer_id": customer_id,
                    "stage": RejectionStage.STRIPE.value,
                    "reason": f"{exc} (Stripe's answer to this same request before: not resent)",
                }
            )
            return
        except stripe.StripeError as exc:
            message = _message(exc)
            refused = _refused(exc)
            outcome = Outcome.REJECTED if refused else Outcome.FAILED
            report.add(outcome)
            entry = {
                "row_key": row["row_key"],
                "customer_id": customer_id,
                "stage": (RejectionStage.STRIPE if refused else RejectionStage.STRIPE_ERROR).value,
                "reason": message,
            }
            (report.rejections if refused else report.failures).append(entry)
            (log.info if refused else log.warning)(
                "Stripe %s of row %s %s: %s", row["action"], row["row_key"], outcome, message
            )
            return
        if row["action"] == Action.CREATE:
            report.add(Outcome.CREATED if wrote else Outcome.RECOVERED)
        else:
            report.add(Outcome.UPDATED if wrote else Outcome.ALREADY_SENT)

    _write_rows(ctx, rows, write, target=lambda r: r["customer_id"] or r["identity"])
    return report


def _refused(exc: stripe.StripeError) -> bool:
    """Stripe said no to this row: a 4xx, but not one about the key (401, 403), rate limiting or a misused
    idempotency key, which are failures of the run."""
    status = getattr(exc, "http_status", None) or 0
    return 400 <= status < 500 and status not in (401, 403, 429) and not isinstance(exc, stripe.IdempotencyError)


def _message(exc: stripe.StripeError) -> str:
    return getattr(exc, "user_message", None) or str(exc)


# Stripe does not keep refused requests under their idempotency key, so giftflow remembers them: the same
# request is not resent on every run. For a day only, since the cause may lie outside the request (a coupon
# created later, a full metadata hash, a customer restored).
REFUSAL_MEMORY_S = 86_400


class RefusedBefore(Exception):
    """Stripe refused this exact request within REFUSAL_MEMORY_S (its message is the argument)."""


# -- the one writer ----------------------------------------------------------------------------------
def _send(
    ctx: _Ctx,
    kind: str,
    target: str,
    params: dict,
    key: str,
    call: Callable[[], WriteResult],
    mirror: Callable[[dict], list[MirroredCustomers]],
) -> dict | None:
    """Ledger `planned` (committed) before the call, `sent` / `refused` (a 4xx) / `failed` after (LedgerStatus),
    with the customer as Stripe answered in the same commit: a crash in between is detectable. The very request
    Stripe refused before is not sent again: same key, same answer."""
    store = ctx.store
    prior = store.ledger_entries([key]).get(key)
    if prior and prior["status"] == LedgerStatus.SENT:
        return None
    if (
        prior
        and prior["status"] == LedgerStatus.REFUSED
        and (datetime.now(timezone.utc) - prior["updated_at"]).total_seconds() < REFUSAL_MEMORY_S
    ):
        raise RefusedBefore(prior["error"])
    ctx.records.record(PlannedWrite(key, kind, target, params, ctx.partition, ctx.run_id))
    try:
        result = call()
    except stripe.StripeError as exc:
        refused = _refused(exc)
        status = LedgerStatus.REFUSED if refused else LedgerStatus.FAILED
        ctx.records.record(
            WriteOutcome(
                key,
                status.value,
                request_id=getattr(exc, "request_id", None),
                error=(_message(exc) if refused else str(exc))[:1000],
            )
        )
        raise
    ctx.records.record(
        WriteOutcome(key, LedgerStatus.SENT.value, request_id=result.request_id, object_id=result.object.get("id")),
        *mirror(result.object),
    )
    return result.object


def _mirror_customer(tax_ids=(), coupons=()) -> Callable[[dict], list[MirroredCustomers]]:
    """The customer as a write's answer shows it, to mirror in the same commit as the write's outcome."""

    def mirror(customer: dict) -> list[MirroredCustomers]:
        return [MirroredCustomers([customer], add_tax_ids=tuple(tax_ids), add_coupons=tuple(coupons))]

    return mirror


def update_customer(ctx: _Ctx, customer_id: str, params: dict, before) -> dict | None:
    """One idempotent customer update. `before` (the values being replaced) goes into the key, so the same
    values written later from another starting point are not mistaken for a replay."""
    key = idempotency_key(WriteKind.UPDATE_CUSTOMER, customer_id, {**params, "before": before})
    return _send(
        ctx,
        WriteKind.UPDATE_CUSTOMER,
        customer_id,
        params,
        key,
        lambda: ctx.stripe_api.update_customer(customer_id, params, key),
        _mirror_customer(),
    )


def create_customer_once(ctx: _Ctx, identity: str, params: dict, *, lookup_email: str | None) -> tuple[dict, bool]:
    """Create the customer named by `identity` (a normalised e-mail, or a sync's row) exactly once; returns the
    customer and whether this call created it.

    A create planned before but never confirmed may still have happened at Stripe (crash between the call
    and the ledger): with an e-mail it is looked up by that e-mail (we create with the normalised e-mail,
    so Stripe's case-sensitive filter finds it); otherwise the earlier request is replayed with its own
    idempotency key and parameters, which Stripe answers with the customer it made, if it made one.
    """
    store = ctx.store
    priors = store.ledger_for_target(identity, WriteKind.CREATE_CUSTOMER)
    found = None
    if priors and lookup_email:
        existing = ctx.stripe_api.list_customers_by_email(lookup_email)
        if existing:
            found = max(existing, key=lambda c: (c["created"], c["id"]))
    elif priors:
        found = _recover(ctx, identity, priors)
    if found is not None:
        ctx.records.record(*_mirror_customer()(found))
        return found, False
    tax_ids = [f"{t['type']}:{t['value']}" for t in params.get("tax_id_data", [])]
    key = idempotency_key(WriteKind.CREATE_CUSTOMER, identity, params)
    created = _send(
        ctx,
        WriteKind.CREATE_CUSTOMER,
        identity,
        params,
        key,
        lambda: ctx.stripe_api.create_customer(params, key),
        _mirror_customer(tax_ids=tax_ids),
    )
    if created is None:  # this very create is in the ledger as sent
        sent = store.ledger_entries([key])[key]
        created = ctx.stripe_api.retrieve("customers", sent["stripe_object_id"])
        if not created.get("deleted"):
            ctx.records.record(*_mirror_customer()(created))
        return created, False
    return created, True


def _recover(ctx: _Ctx, identity: str, priors: list[dict]) -> dict | None:
    """The customer an earlier create of `identity` made, if any: sent ones from the ledger, unconfirmed
    ones by replaying them (same key, same parameters) — refused replays made nothing."""
    for prior in sorted(priors, key=lambda p: p["updated_at"], reverse=True):
        if prior["status"] == LedgerStatus.REFUSED:  # made nothing
            continue
        if prior["status"] == LedgerStatus.SENT and prior["stripe_object_id"]:
            customer = ctx.stripe_api.retrieve("customers", prior["stripe_object_id"])
            if not customer.get("deleted"):
                return customer
            continue
        try:
            result = ctx.stripe_api.create_customer(json.loads(prior["params"]), prior["op_key"])
        except stripe.StripeError as exc:
            if _refused(exc):
                continue
            raise
        ctx.records.record(
            WriteOutcome(
                prior["op_key"], LedgerStatus.SENT.value, request_id=result.request_id, object_id=result.object["id"]
            )
        )
        return result.object
    return None


def _follow_up(ctx: _Ctx, customer_id: str, op: dict, before) -> dict | None:
    """What is written after the customer itself: a tax id on the customer, the coupon as its discount, a promotion
    code for a coupon restricted to the customer."""
    if op["kind"] == WriteKind.APPLY_COUPON:
        coupon = op["params"]["coupon"]
        key = idempotency_key(WriteKind.APPLY_COUPON, customer_id, {**op["params"], "before": before})
        return _send(
            ctx,
            WriteKind.APPLY_COUPON,
            customer_id,
            op["params"],
            key,
            lambda: ctx.stripe_api.apply_customer_coupon(customer_id, coupon, key),
            _mirror_customer(),
        )
    if op["kind"] == WriteKind.CREATE_TAX_ID:
        params = op["params"]
        key = idempotency_key(WriteKind.CREATE_TAX_ID, customer_id, {**params, "before": before})
        shown = f"{params['type']}:{params['value']}"
        return _send(
            ctx,
            WriteKind.CREATE_TAX_ID,
            customer_id,
            params,
            key,
            lambda: ctx.stripe_api.create_tax_id(customer_id, params, key),
            lambda _obj: _mirror_customer(tax_ids=[shown])(_known_customer(ctx, customer_id)),
        )
    params = {**op["params"], "customer": customer_id}
    key = idempotency_key(WriteKind.CREATE_PROMOTION_CODE, customer_id, {**params, "before": before})
    return _send(
        ctx,
        WriteKind.CREATE_PROMOTION_CODE,
        customer_id,
        params,
        key,
        lambda: ctx.stripe_api.create_promotion_code(params, key),
        lambda _obj: _mirror_customer(coupons=[f"{params['promotion']['coupon']}:{params['code']}"])(
            _known_customer(ctx, customer_id)
        ),
    )


def _known_customer(ctx: _Ctx, customer_id: str) -> dict:
    """The mirrored customer (to attach a tax id or coupon to), else Stripe's."""
    for customer in ctx.store.load_customers([customer_id]):
        return customer
    return ctx.stripe_api.retrieve("customers", customer_id)
