"""Every sync's run reports, and the ids of the customers each sync created, per source row."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from giftflow.adapters.store._base import Repository
from giftflow.adapters.store.db import aware, now, upsert
from giftflow.adapters.store.schema import sync_ids, sync_runs


class SyncRuns(Repository):
    def record(
        self,
        sync: str,
        run_id: str,
        *,
        partition: str | None,
        status: str,
        dry_run: bool,
        counts: dict,
        rejections: list[dict],
        started_at: datetime,
    ) -> None:
        row = {
            "sync": sync,
            "run_id": run_id,
            "partition": partition,
            "status": status,
            "dry_run": dry_run,
            "counts": counts,
            "rejections": rejections,
            "started_at": started_at,
            "finished_at": now(),
        }
        with self.engine.begin() as conn:
            upsert(conn, sync_runs, [row], ["sync", "run_id"])

    def reports(self, sync: str, run_id: str | None = None, limit: int = 20) -> list[dict]:
        """Reports of a sync's runs, newest first (or the one run), counts and rejections decoded."""
        query = sa.select(sync_runs).where(sync_runs.c.sync == sync)
        if run_id:
            query = query.where(sync_runs.c.run_id == run_id)
        query = query.order_by(sync_runs.c.finished_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [
                {**r, "started_at": aware(r["started_at"]), "finished_at": aware(r["finished_at"])}
                for r in conn.execute(query).mappings()
            ]


class SyncIds(Repository):
    def record(self, sync: str, created: dict[str, str], run_id: str | None) -> None:
        """Source row key -> the Stripe customer id a sync created for it."""
        at = now()
        rows = [
            {"sync": sync, "row_key": k, "customer_id": v, "run_id": run_id, "created_at": at} for k, v in created.items()
        ]
        with self.engine.begin() as conn:
            upsert(conn, sync_ids, rows, ["sync", "row_key"])

    def get(self, sync: str) -> dict[str, str]:
        with self.engine.connect() as conn:
            return {r.row_key: r.customer_id for r in conn.execute(sa.select(sync_ids).where(sync_ids.c.sync == sync))}

    def delete(self, sync: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sync_ids.delete().where(sync_ids.c.sync == sync))
