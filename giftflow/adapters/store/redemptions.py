"""Cardivo redemptions giftflow has seen (card code: last 4 only)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from giftflow.adapters.store._base import Repository
from giftflow.adapters.store.db import aware, chunks, upsert
from giftflow.adapters.store.schema import redemptions
from giftflow.domain.redemptions import REDEMPTION_COLUMNS, redemptions_frame


class Redemptions(Repository):
    def upsert(self, frame: pd.DataFrame) -> int:
        rows = frame[REDEMPTION_COLUMNS].astype(object).where(frame[REDEMPTION_COLUMNS].notna(), None).to_dict("records")
        for row in rows:
            row["redeemed_at"] = row["redeemed_at"].to_pydatetime()
            row["updated_at"] = row["updated_at"].to_pydatetime()
        with self.engine.begin() as conn:
            # Two runs of one day may fetch it at different moments and store in either order: an older copy
            # (fetched before a void) must never replace a newer one.
            upsert(conn, redemptions, rows, ["redemption_id"], newer="updated_at")
        return len(rows)

    def load(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        emails: Iterable[str] = (),
        customer_ids: Iterable[str] = (),
    ) -> pd.DataFrame:
        """Redemptions redeemed in [start, end), or (with emails/customer_ids) those linked to them."""
        t = redemptions
        queries = []
        if start is not None:
            queries.append(sa.select(t).where(t.c.redeemed_at >= start, t.c.redeemed_at < end))
        queries += [sa.select(t).where(t.c.email_norm.in_(c)) for c in chunks(emails)]
        queries += [sa.select(t).where(t.c.stripe_customer_id.in_(c)) for c in chunks(customer_ids)]
        rows: dict[str, dict] = {}
        with self.engine.connect() as conn:
            for query in queries:
                for row in conn.execute(query).mappings():
                    rows[row["redemption_id"]] = dict(row)
        for rec in rows.values():
            rec["redeemed_at"] = aware(rec["redeemed_at"])
            rec["updated_at"] = aware(rec["updated_at"])
        return redemptions_frame(list(rows.values()))

    def versions(self, ids: list[str]) -> dict[str, datetime]:
        """`updated_at` of each stored redemption among `ids`: tells a new change from one already seen."""
        t = redemptions
        out: dict[str, datetime] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(ids):
                query = sa.select(t.c.redemption_id, t.c.updated_at).where(t.c.redemption_id.in_(chunk))
                out.update({r.redemption_id: aware(r.updated_at) for r in conn.execute(query) if r.updated_at})
        return out
