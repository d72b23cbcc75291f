"""Input giftflow refused, with the reason (payload redacted: card code cut to last 4)."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from giftflow.adapters.store._base import Repository
from giftflow.adapters.store.db import _json_dumps, now, upsert
from giftflow.adapters.store.schema import quarantine


class Quarantine(Repository):
    def add(self, source: str, bad: list[dict], partition: str | None, run_id: str | None) -> None:
        seen_at = now()
        rows = [
            {
                "source": source,
                "record_key": b["record_key"],
                "reason": b["reason"],
                "payload": b["payload"],
                "partition": partition,
                "run_id": run_id,
                "seen_at": seen_at,
            }
            for b in bad
        ]
        with self.engine.begin() as conn:
            upsert(conn, quarantine, rows, ["source", "record_key"])

    def frame(self, source: str = "cardivo") -> pd.DataFrame:
        """A source's quarantined records; `payload` as the JSON text it always was in this frame."""
        with self.engine.connect() as conn:
            frame = pd.read_sql(sa.select(quarantine).where(quarantine.c.source == source), conn)
        frame["payload"] = frame["payload"].map(_json_dumps)
        return frame
