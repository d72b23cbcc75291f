"""Opening giftflow's database: one engine per URL and process, brought to the migrations' head on first use,
and the few SQL helpers every repository shares."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from functools import lru_cache, partial
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).with_name("migrations")
# PostgreSQL advisory lock key: one process at a time changes the schema (the key the pre-Alembic store used).
LOCK_KEY = 7263531
_CHUNK = 2000

# JSON columns are written with sorted keys (stable text, as json.dumps(sort_keys=True) was before) and anything
# JSON has no type for (a datetime, a Decimal) as its str, as before.
_json_dumps = partial(json.dumps, sort_keys=True, default=str)


def default_database_url(home: str | Path = ".dagster_home") -> str:
    """A SQLite file in `home` (the entry points pass Settings.store_url: $DAGSTER_HOME/giftflow.sqlite)."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(home / 'giftflow.sqlite').resolve()}"


_engine_lock = threading.Lock()


def engine_for(url: str) -> sa.Engine:
    with _engine_lock:  # writer threads may be the first to ask; migrate once
        return _make_engine(url)


@lru_cache(maxsize=8)
def _make_engine(url: str) -> sa.Engine:
    # hide_parameters: an error or a statement log must not carry a payload, an e-mail or a card code.
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60}, hide_parameters=True, json_serializer=_json_dumps)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(conn, _record):  # concurrent runs share the file: WAL lets readers and a writer overlap
            conn.execute("PRAGMA busy_timeout=60000")
            _set_wal(conn)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True, hide_parameters=True, json_serializer=_json_dumps)
    migrate(engine)
    return engine


def _set_wal(dbapi_conn, wait_s: float = 60.0) -> None:
    """Switch a SQLite file to WAL. While another process switches a new file, SQLite answers "database is
    locked" at once, without waiting out busy_timeout: try again until the deadline."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


# -- migrations ---------------------------------------------------------------------------------------------
def alembic_config(connection: sa.Connection | None = None) -> Config:
    """Alembic's configuration for giftflow's migrations (no alembic.ini: they run from the store)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None, "giftflow's migrations have no head revision"
    return head


def current_revision(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer giftflow than this one."""


def migrate(engine: sa.Engine) -> None:
    """Bring the database to the head revision, once, even when many runs of a backfill open a new (or an old)
    database at the same moment. A database made before giftflow had migrations (its tables, no alembic_version)
    is taken over by revision 1, which creates only the tables it lacks, and upgraded from there."""
    head = head_revision()
    with engine.connect() as conn:  # the usual case, and no lock for it: already at head
        current = current_revision(conn)
    if current == head:
        return
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            # Concurrent CREATE TABLEs collide in PostgreSQL's catalog: one process at a time. PostgreSQL's DDL is
            # transactional, so the upgrade and the revision stamp commit together or not at all.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            _upgrade(conn, head)
        return
    if engine.dialect.name == "sqlite":
        # The same on SQLite: BEGIN IMMEDIATE takes the database's write lock (others wait, busy_timeout), so the
        # revision check and the upgrade happen with no other process in between, in one transaction.
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            _upgrade(conn, head)
            conn.commit()
        return
    with engine.begin() as conn:  # pragma: no cover - other databases are not supported
        _upgrade(conn, head)


def _upgrade(conn: sa.Connection, head: str) -> None:
    current = current_revision(conn)  # again, under the lock: another process may have upgraded meanwhile
    if current == head:
        return
    if current is not None and current not in {s.revision for s in _scripts().walk_revisions()}:
        raise SchemaTooNewError(
            f"giftflow's database is at revision {current}, which this giftflow does not know "
            f"(its newest is {head}): it was upgraded by a newer giftflow; run that one"
        )
    command.upgrade(alembic_config(conn), "head")


# Kept under its old name: tests and tools call it to set up a database.
_create_tables = migrate


# -- helpers shared by the repositories ---------------------------------------------------------------------
def now() -> datetime:
    return datetime.now(timezone.utc)


def upsert(conn: sa.Connection, table: sa.Table, rows: list[dict], keys: list[str], newer: str | None = None) -> None:
    """Insert or update by `keys`; with `newer`, a stored row is replaced only by a row whose `newer` column is
    at least as late."""
    if not rows:
        return
    # PostgreSQL refuses one INSERT ... ON CONFLICT that touches a row twice: the last version wins.
    rows = list({tuple(r[k] for k in keys): r for r in rows}.values())
    insert = dialect_insert(conn)
    for start in range(0, len(rows), _CHUNK):
        stmt = insert(table).values(rows[start : start + _CHUNK])
        update = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        where = table.c[newer] <= stmt.excluded[newer] if newer else None
        conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update, where=where))


def dialect_insert(conn: sa.Connection | sa.Engine):
    """The INSERT with ON CONFLICT of the database's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]  # PostgreSQL's API, another class
    else:  # pragma: no cover - other databases are not supported
        raise NotImplementedError(conn.dialect.name)
    return insert


def chunks(values: Iterable, size: int = _CHUNK) -> Iterator[list]:
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start : start + size]


def aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value
