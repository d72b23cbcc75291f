"""Payment intents, charges and early fraud warnings as Stripe returned them (the workflows read them)."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from giftflow.adapters.store._base import Repository
from giftflow.adapters.store.db import chunks, now, upsert
from giftflow.adapters.store.schema import stripe_objects


class StripeObjects(Repository):
    def upsert(self, kind: str, rows: list[dict]) -> None:
        synced_at = now()
        records = [
            {
                "kind": kind,
                "object_id": r["id"],
                "created": int(r["created"]),
                "customer_id": r.get("customer") if isinstance(r.get("customer"), str) else None,
                "data": r,
                "synced_at": synced_at,
            }
            for r in rows
        ]
        with self.engine.begin() as conn:
            upsert(conn, stripe_objects, records, ["kind", "object_id"])

    def load(
        self,
        kind: str,
        *,
        created_gte: int | None = None,
        created_lt: int | None = None,
        ids: Iterable[str] | None = None,
        customer_ids: Iterable[str] | None = None,
    ) -> list[dict]:
        t = stripe_objects
        base = sa.select(t.c.data).where(t.c.kind == kind)
        if created_gte is not None:
            base = base.where(t.c.created >= created_gte, t.c.created < created_lt)
        queries = [base]
        if ids is not None:
            queries = [base.where(t.c.object_id.in_(c)) for c in chunks(ids)]
        elif customer_ids is not None:
            queries = [base.where(t.c.customer_id.in_(c)) for c in chunks(customer_ids)]
        with self.engine.connect() as conn:
            return [row.data for q in queries for row in conn.execute(q)]
