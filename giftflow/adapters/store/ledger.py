"""The write ledger: every Stripe write, planned before it is sent (its op_key is the idempotency key)."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import sqlalchemy as sa

from giftflow.adapters.store._base import Repository
from giftflow.adapters.store.db import _json_dumps, aware, chunks, now
from giftflow.adapters.store.schema import ledger


def _entry(row) -> dict:
    # `params` as the JSON text (sorted keys) the ledger has always handed out: callers replay it as sent.
    return {**row, "params": _json_dumps(row["params"]), "created_at": aware(row["created_at"]),
            "updated_at": aware(row["updated_at"])}


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

    def record_planned(self, op_key: str, kind: str, target: str, params: dict, partition: str | None,
                       run_id: str | None) -> None:
        at = now()
        with self.engine.begin() as conn:
            existing = conn.execute(sa.select(ledger.c.attempts).where(ledger.c.op_key == op_key)).scalar()
            if existing is None:
                conn.execute(ledger.insert().values(
                    op_key=op_key, kind=kind, target=target, params=params, status="planned", partition=partition,
                    run_id=run_id, attempts=1, created_at=at, updated_at=at))
            else:
                conn.execute(ledger.update().where(ledger.c.op_key == op_key).values(
                    status="planned", run_id=run_id, attempts=existing + 1, error=None, updated_at=at))

    def record_result(self, op_key: str, *, status: str, request_id: str | None = None, object_id: str | None = None,
                      error: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(ledger.update().where(ledger.c.op_key == op_key).values(
                status=status, stripe_request_id=request_id, stripe_object_id=object_id, error=error,
                updated_at=now()))

    def frame(self) -> pd.DataFrame:
        """The whole ledger, oldest first; `params` as the JSON text it always was in this frame."""
        with self.engine.connect() as conn:
            frame = pd.read_sql(sa.select(ledger).order_by(ledger.c.created_at), conn)
        frame["params"] = frame["params"].map(_json_dumps)
        return frame
