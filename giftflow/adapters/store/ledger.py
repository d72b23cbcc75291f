"""The write ledger: every Stripe write, planned before it is sent (its op_key is the idempotency key)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa

from giftflow.adapters.store._base import Repository
from giftflow.adapters.store.db import _json_dumps, aware, chunks, now
from giftflow.adapters.store.schema import ledger


def _entry(row) -> dict:
    # `params` as the JSON text (sorted keys) the ledger has always handed out: callers replay it as sent.
    return {
        **row,
        "params": _json_dumps(row["params"]),
        "created_at": aware(row["created_at"]),
        "updated_at": aware(row["updated_at"]),
    }


@dataclass(frozen=True)
class PlannedWrite:
    """A write about to be sent: its ledger entry (`record_planned`)."""

    op_key: str
    kind: str
    target: str
    params: dict
    partition: str | None
    run_id: str | None


@dataclass(frozen=True)
class WriteOutcome:
    """What became of a sent write (`record_result`)."""

    op_key: str
    status: str
    request_id: str | None = None
    object_id: str | None = None
    error: str | None = None


class Ledger(Repository):
    def entries(self, op_keys: Iterable[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(op_keys):
                for row in conn.execute(sa.select(ledger).where(ledger.c.op_key.in_(chunk))).mappings():
                    out[row["op_key"]] = _entry(row)
        return out

    def for_target(self, target: str, kind: str) -> list[dict]:
        with self.engine.connect() as conn:
            query = sa.select(ledger).where(ledger.c.target == target, ledger.c.kind == kind)
            return [_entry(r) for r in conn.execute(query).mappings()]

    def record_planned(
        self, op_key: str, kind: str, target: str, params: dict, partition: str | None, run_id: str | None
    ) -> None:
        with self.engine.begin() as conn:
            plan_in(conn, [PlannedWrite(op_key, kind, target, params, partition, run_id)])

    def record_result(
        self,
        op_key: str,
        *,
        status: str,
        request_id: str | None = None,
        object_id: str | None = None,
        error: str | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            settle_in(conn, [WriteOutcome(op_key, status, request_id, object_id, error)])

    def frame(self) -> pd.DataFrame:
        """The whole ledger, oldest first; `params` as the JSON text it always was in this frame."""
        with self.engine.connect() as conn:
            frame = pd.read_sql(sa.select(ledger).order_by(ledger.c.created_at), conn)
        frame["params"] = frame["params"].map(_json_dumps)
        return frame


def plan_in(conn: sa.Connection, entries: list[PlannedWrite]) -> None:
    """Ledger entries `planned` in `conn`'s transaction (their op_keys distinct): a new key is inserted with
    attempt 1, a known one (a retry) set back to planned with one attempt more."""
    at = now()
    attempts = {
        r.op_key: r.attempts
        for chunk in chunks([e.op_key for e in entries])
        for r in conn.execute(sa.select(ledger.c.op_key, ledger.c.attempts).where(ledger.c.op_key.in_(chunk)))
    }
    new = [
        {
            "op_key": e.op_key,
            "kind": e.kind,
            "target": e.target,
            "params": e.params,
            "status": "planned",
            "partition": e.partition,
            "run_id": e.run_id,
            "attempts": 1,
            "created_at": at,
            "updated_at": at,
        }
        for e in entries
        if e.op_key not in attempts
    ]
    if new:
        conn.execute(ledger.insert(), new)
    for e in entries:
        if e.op_key in attempts:
            conn.execute(
                ledger.update()
                .where(ledger.c.op_key == e.op_key)
                .values(status="planned", run_id=e.run_id, attempts=attempts[e.op_key] + 1, error=None, updated_at=at)
            )


_SETTLE = (
    ledger.update()
    .where(ledger.c.op_key == sa.bindparam("b_op_key"))
    .values(
        status=sa.bindparam("b_status"),
        stripe_request_id=sa.bindparam("b_request_id"),
        stripe_object_id=sa.bindparam("b_object_id"),
        error=sa.bindparam("b_error"),
        updated_at=sa.bindparam("b_at"),
    )
)


def settle_in(conn: sa.Connection, outcomes: list[WriteOutcome]) -> None:
    """Writes' outcomes (sent, refused, failed) in `conn`'s transaction, as one statement however many."""
    at = now()
    rows: list[dict[str, Any]] = [
        {
            "b_op_key": o.op_key,
            "b_status": o.status,
            "b_request_id": o.request_id,
            "b_object_id": o.object_id,
            "b_error": o.error,
            "b_at": at,
        }
        for o in outcomes
    ]
    if rows:
        conn.execute(_SETTLE, rows)
