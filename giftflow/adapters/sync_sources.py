"""Where a sync's rows come from: a CSV or Parquet file inside the sync file's folder, one read-only SELECT
over a SQLAlchemy URL (SQLite or PostgreSQL) or giftflow's store, or an upstream Dagster asset (handed in by
the asset).

Errors name the sync file and line and never repeat what the source holds: a file that is not the table
the sync expects must not end up, cells or header, in a Dagster error message."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from giftflow.domain.sync_spec import EnvRef, SyncSourceError, SyncSpec

READ_ONLY_BACKENDS = ("sqlite", "postgresql")


def describe_source(spec: SyncSpec) -> str:
    src = spec.source
    if src.kind == "sql":
        where = "giftflow store" if not src.url else f"${src.url.env}" if isinstance(src.url, EnvRef) else _redact(src.url)
        return f"SQL (read-only) on {where}: `{' '.join((src.sql or '').split())}`"
    return f"{src.kind} `{getattr(src, src.kind)}`"


def _redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def source_url(spec: SyncSpec) -> sa.URL | None:
    """The `url:` of a SQL source (read from its environment variable where it names one); None: the store."""
    url = spec.source.url
    if url is None:
        return None
    if isinstance(url, EnvRef):
        value = os.environ.get(url.env)
        if not value:
            raise SyncSourceError(f"{spec.where('url')}: url: the environment variable {url.env} is not set")
        try:
            return sa.engine.make_url(value)
        except sa.exc.ArgumentError:  # its message repeats the value, password included
            raise SyncSourceError(f"{spec.where('url')}: url: {url.env} does not hold a SQLAlchemy URL") from None
    return sa.engine.make_url(url)


def read_only_engine(url: sa.URL, where: str = "<sync>") -> sa.Engine:
    """A dedicated engine whose every connection refuses writes at the database: SQLite `PRAGMA query_only`,
    PostgreSQL `default_transaction_read_only` set at connection start (a rollback cannot undo it). No pool:
    the connection is closed after the query, so nothing it changed in its session outlives it."""
    backend = url.get_backend_name()
    if backend not in READ_ONLY_BACKENDS:
        raise SyncSourceError(
            f"{where}: url: {backend} is not supported; a sql source reads SQLite or PostgreSQL, "
            "where giftflow can make the connection read-only"
        )
    if backend == "postgresql":
        return sa.create_engine(
            url, poolclass=sa.pool.NullPool, connect_args={"options": "-c default_transaction_read_only=on"}
        )
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    @sa.event.listens_for(engine, "connect")
    def _query_only(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA query_only=ON")

    return engine


def _read_sql(spec: SyncSpec, url: sa.URL, params: dict) -> pd.DataFrame:
    assert spec.source.sql is not None, "a sql source has its query"
    engine = read_only_engine(url, spec.where("url"))
    try:
        with engine.connect() as conn:
            if url.get_backend_name() == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")  # this transaction too, whatever the role says
            return pd.read_sql(sa.text(spec.source.sql), conn, params=params)
    except (sa.exc.DBAPIError, pd.errors.DatabaseError) as exc:  # pandas wraps the driver's error
        orig = getattr(exc, "orig", None) or getattr(exc.__cause__, "orig", None) or exc.__cause__ or exc
        first_line = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        raise SyncSourceError(f"{spec.where()}: sql: the database refused the query: {first_line[:300]}") from None
    finally:
        engine.dispose()


def read_source(
    spec: SyncSpec,
    base: Path,
    *,
    store_engine: sa.Engine | None = None,
    partition_key: str | None = None,
    window: tuple[datetime, datetime] | None = None,
) -> pd.DataFrame:
    """The source rows as a DataFrame of text columns (files) or as the database typed them (SQL).

    Partitioned syncs: `{partition}` in a file path is the partition key; a query may use the bind
    parameters `:partition_start` and `:partition_end` (the partition's time window)."""
    src = spec.source
    if src.kind in ("csv", "parquet"):
        path = source_path(spec, base, partition_key or "")  # again now: a link may have appeared since load
        shown = f"{src.kind} file {path.relative_to(base.resolve())}"
        try:
            if src.kind == "csv":
                # All text: phone numbers, postal codes and ids keep their leading zeros.
                return pd.read_csv(path, dtype=str, keep_default_na=False)
            return pd.read_parquet(path, engine="pyarrow")
        except FileNotFoundError:
            raise SyncSourceError(f"{spec.where()}: {shown}: no such file in {base.resolve()}") from None
        except OSError as exc:
            raise SyncSourceError(f"{spec.where()}: {shown}: cannot read it: {exc.strerror}") from None
        except Exception as exc:  # a parser's message may quote the file: name the kind of problem only
            raise SyncSourceError(
                f"{spec.where()}: {shown}: not a readable {src.kind} file ({type(exc).__name__})"
            ) from None
    if src.kind == "sql" and src.sql is not None:
        url = source_url(spec)
        if url is None:
            if store_engine is None:  # a caller's mistake, not the file's: say so instead of an AttributeError
                raise ValueError(f"sync {spec.name}: a sql source without url: reads giftflow's store; pass store_engine")
            url = store_engine.url  # giftflow's own store: the ledger is readable here, never writable
        params = {}
        if window is not None:
            params = {k: v for k, v in (("partition_start", window[0]), ("partition_end", window[1])) if f":{k}" in src.sql}
        return _read_sql(spec, url, params)
    raise ValueError(f"sync {spec.name}: an asset source is handed in by the Dagster asset, not read here")


def check_columns(spec: SyncSpec, frame: pd.DataFrame) -> None:
    """Every mapped column is in the source; the message names the missing ones and the file, never the
    columns the source does have (a file that is not the expected table would show its first line)."""
    wanted = [*spec.mapping.columns().values(), spec.key_column]
    missing = sorted({c for c in wanted if c not in frame.columns})
    if missing:
        src = spec.source
        what = "the query" if src.kind == "sql" else f"{src.kind} {getattr(src, src.kind)!r}"
        raise SyncSourceError(
            f"{spec.where()}: {what} has no column(s) {', '.join(missing)} (the sync maps {', '.join(sorted(set(wanted)))})"
        )


def source_path(spec: SyncSpec, base: Path, partition: str | None = None) -> Path:
    """The file a csv/parquet source reads, which must lie inside the sync file's folder once resolved (symlinks
    followed): a sync file cannot read /proc/self/environ, ../secrets or a link pointing out of its folder."""
    template = getattr(spec.source, spec.source.kind)
    root = base.resolve()
    path = (root / template.format(partition=partition or "2024-01-01")).resolve()
    if not path.is_relative_to(root):
        raise SyncSourceError(
            f"{spec.where()}: {spec.source.kind} {template!r}: a source file must be inside "
            f"the sync file's folder {root} (symlinks included)"
        )
    return path
