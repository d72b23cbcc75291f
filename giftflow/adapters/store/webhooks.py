"""Pushed deliveries (Cardivo and Stripe webhooks), kept for the sensors, which keep their own cursor."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from giftflow.adapters.store._base import Repository
from giftflow.adapters.store.db import aware, dialect_insert, now
from giftflow.adapters.store.schema import webhook_events


class WebhookEvents(Repository):
    def record(self, source: str, event_id: str, event_type: str, payload: dict) -> bool:
        """Store a delivery durably; False where this event id was already received (a replay).

        One statement, no look-up first: senders deliver the same event concurrently, and a look-up then insert
        lets two of them both find nothing; the key decides, and the loser learns it from the row count."""
        stmt = (
            dialect_insert(self.engine)(webhook_events)
            .values(
                source=source,
                event_id=event_id,
                type=event_type,
                payload=payload,
                received_at=now(),
            )
            .on_conflict_do_nothing(index_elements=["source", "event_id"])
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def since(self, source: str, received_after: datetime, limit: int = 1000) -> list[dict]:
        """Deliveries received at or after `received_after`, oldest first, `payload` decoded. Read-only, so a
        sensor can read them on every tick and move its own cursor only when Dagster commits the tick."""
        t = webhook_events
        query = (
            sa.select(t)
            .where(t.c.source == source, t.c.received_at >= received_after)
            .order_by(t.c.received_at, t.c.event_id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [{**r, "received_at": aware(r["received_at"])} for r in conn.execute(query).mappings()]

    def prune(self, received_before: datetime, batch: int = 5000) -> int:
        """Delete deliveries received before `received_before`, in batches (a long table is never locked whole
        for one delete); returns how many went. The sensors have long read them; a sender's replay of a pruned
        event is stored again and only triggers an idempotent run."""
        t = webhook_events
        deleted = 0
        while True:
            oldest = (
                sa.select(t.c.source, t.c.event_id)
                .where(t.c.received_at < received_before)
                .order_by(t.c.received_at)
                .limit(batch)
            )
            with self.engine.begin() as conn:
                n = conn.execute(sa.delete(t).where(sa.tuple_(t.c.source, t.c.event_id).in_(oldest))).rowcount
            deleted += n
            if n < batch:
                return deleted
