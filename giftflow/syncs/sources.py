"""Where a sync's rows come from: a CSV or Parquet file (relative to the sync file), a SQL query over any
SQLAlchemy URL or giftflow's store, or an upstream Dagster asset (handed in by the asset)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from giftflow.syncs.spec import SyncSpec


def describe_source(spec: SyncSpec) -> str:
    src = spec.source
    if src.kind == "sql":
        return f"SQL on {'giftflow store' if not src.url else _redact(src.url)}: `{' '.join(src.sql.split())}`"
    return f"{src.kind} `{getattr(src, src.kind)}`"


def _redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def read_source(spec: SyncSpec, base: Path, *, store_engine: sa.Engine | None = None,
                partition_key: str | None = None, window: tuple[datetime, datetime] | None = None) -> pd.DataFrame:
    """The source rows as a DataFrame of text columns (files) or as the database typed them (SQL).

    Partitioned syncs: `{partition}` in a file path is the partition key; a query may use the bind
    parameters `:partition_start` and `:partition_end` (the partition's time window)."""
    src = spec.source
    if src.kind in ("csv", "parquet"):
        path = base / getattr(src, src.kind).format(partition=partition_key or "")
        if src.kind == "csv":
            # All text: phone numbers, postal codes and ids keep their leading zeros.
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)  # fastparquet, a dependency (or pyarrow where installed)
    if src.kind == "sql":
        engine = sa.create_engine(src.url) if src.url else store_engine
        params = {}
        if window is not None:
            params = {k: v for k, v in (("partition_start", window[0]), ("partition_end", window[1]))
                      if f":{k}" in src.sql}
        with engine.connect() as conn:
            return pd.read_sql(sa.text(src.sql), conn, params=params)
    raise ValueError(f"sync {spec.name}: an asset source is handed in by the Dagster asset, not read here")
