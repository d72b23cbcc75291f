"""Small key/value state (cursors, when the customer mirror was last listed)."""

from __future__ import annotations

import sqlalchemy as sa

from giftflow.adapters.store._base import Repository
from giftflow.adapters.store.db import upsert
from giftflow.adapters.store.schema import kv


class State(Repository):
    def get(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(kv.c.value).where(kv.c.key == key)).scalar()

    def set(self, key: str, value: str) -> None:
        with self.engine.begin() as conn:
            self.set_in(conn, key, value)

    @staticmethod
    def set_in(conn: sa.Connection, key: str, value: str) -> None:
        """Set within the caller's transaction."""
        upsert(conn, kv, [{"key": key, "value": value}], ["key"])
