"""giftflow's own state on SQLAlchemy 2: redemptions seen, the Stripe customer mirror, the write ledger,
quarantined input and small key/value state (cursors).

SQLite under $DAGSTER_HOME by default; PostgreSQL (or any SQLAlchemy URL) via GIFTFLOW_DATABASE_URL.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import overload

import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from giftflow.domain.redemptions import REDEMPTION_COLUMNS, redemptions_frame

metadata_obj = sa.MetaData()
TS = sa.DateTime(timezone=True)

redemptions = sa.Table(
    "redemptions", metadata_obj,
    sa.Column("redemption_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("card_last4", sa.String(4), nullable=False),  # never the full code: it is a bearer secret
    sa.Column("gift_card_id", sa.String(64)),
    sa.Column("email", sa.String(320)),
    sa.Column("email_norm", sa.String(320), index=True),
    sa.Column("name", sa.String(256)),
    sa.Column("phone", sa.String(64)),
    sa.Column("stripe_customer_id", sa.String(64), index=True),
    sa.Column("location", sa.String(128)),
    sa.Column("redeemed_at", TS, nullable=False, index=True),
    sa.Column("updated_at", TS, nullable=False),
)


ledger = sa.Table(
    "stripe_ledger", metadata_obj,
    sa.Column("op_key", sa.String(128), primary_key=True),  # also the Stripe idempotency key
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("target", sa.String(320), nullable=False, index=True),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # planned | sent | failed
    sa.Column("partition", sa.String(32)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("stripe_request_id", sa.String(64)),
    sa.Column("stripe_object_id", sa.String(64)),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

quarantine = sa.Table(
    "quarantine", metadata_obj,
    sa.Column("source", sa.String(32), primary_key=True),
    sa.Column("record_key", sa.String(128), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # redacted: card code cut to last 4
    sa.Column("partition", sa.String(32)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("seen_at", TS, nullable=False),
)

# Payment intents, charges and early fraud warnings as Stripe returned them, for the workflows.
stripe_objects = sa.Table(
    "stripe_objects", metadata_obj,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("object_id", sa.String(64), primary_key=True),
    sa.Column("created", sa.BigInteger, nullable=False, index=True),
    sa.Column("customer_id", sa.String(64), index=True),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("synced_at", TS, nullable=False),
)

# Pushed deliveries (Cardivo and Stripe webhooks), kept until a sensor has handled them.
webhook_events = sa.Table(
    "webhook_events", metadata_obj,
    sa.Column("source", sa.String(16), primary_key=True),  # cardivo | stripe
    sa.Column("event_id", sa.String(255), primary_key=True),  # as long as the receiver accepts
    sa.Column("type", sa.String(100), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("received_at", TS, nullable=False, index=True),
)

# The one mirror of Stripe customers (Stripe's object plus giftflow's `_tax_ids` and `_coupons`), every sync's
# run reports, and the ids of the customers each sync created, per source row.
customer_objects = sa.Table(
    "stripe_customer_objects", metadata_obj,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("email_norm", sa.String(320), index=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("synced_at", TS, nullable=False),
)

sync_runs = sa.Table(
    "sync_runs", metadata_obj,
    sa.Column("sync", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("partition", sa.String(32)),
    sa.Column("status", sa.String(16), nullable=False),  # success | failed
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("counts", sa.Text, nullable=False),
    sa.Column("rejections", sa.Text, nullable=False),  # [{row_key, customer_id, stage, reason}]
    sa.Column("started_at", TS, nullable=False),
    sa.Column("finished_at", TS, nullable=False, index=True),
)

sync_ids = sa.Table(
    "sync_customer_ids", metadata_obj,
    sa.Column("sync", sa.String(64), primary_key=True),
    sa.Column("row_key", sa.String(320), primary_key=True),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("created_at", TS, nullable=False),
)

kv = sa.Table(
    "giftflow_state", metadata_obj,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

_CHUNK = 2000


def default_database_url(home: str | Path = ".dagster_home") -> str:
    """A SQLite file in `home` (the entry points pass Settings.store_url: $DAGSTER_HOME/giftflow.sqlite)."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(home / 'giftflow.sqlite').resolve()}"


_engine_lock = threading.Lock()


def _engine(url: str) -> sa.Engine:
    with _engine_lock:  # writer threads may be the first to ask; create the tables once
        return _make_engine(url)


@lru_cache(maxsize=8)
def _make_engine(url: str) -> sa.Engine:
    # hide_parameters: an error or a statement log must not carry a payload, an e-mail or a card code.
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60}, hide_parameters=True)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(conn, _record):  # concurrent runs share the file: WAL lets readers and a writer overlap
            conn.execute("PRAGMA busy_timeout=60000")
            _set_wal(conn)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True, hide_parameters=True)
    _create_tables(engine)
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


def _create_tables(engine: sa.Engine) -> None:
    """Create giftflow's tables once, even when many runs of a backfill open a new database at once."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            # Concurrent CREATE TABLEs collide in PostgreSQL's catalog: one process at a time.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7263531)"))
            metadata_obj.create_all(conn)
            _widen_webhook_columns(conn)
        return
    if engine.dialect.name == "sqlite":
        # The same on SQLite: BEGIN IMMEDIATE takes the database's write lock (others wait, busy_timeout), so
        # the check for each table and its CREATE happen with no other process in between.
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            metadata_obj.create_all(conn)
            conn.commit()
        return
    metadata_obj.create_all(engine)


def _widen_webhook_columns(conn: sa.Connection) -> None:
    """Databases created when webhook ids were at most 128 and types 64 characters long get the current widths.
    Widening a varchar only changes PostgreSQL's catalog (no rewrite); SQLite does not enforce lengths."""
    narrow = conn.execute(sa.text(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = 'webhook_events' AND ((column_name = 'event_id' AND character_maximum_length < 255) "
        "OR (column_name = 'type' AND character_maximum_length < 100))")).first()
    if narrow:
        conn.execute(sa.text("ALTER TABLE webhook_events ALTER COLUMN event_id TYPE varchar(255), "
                             "ALTER COLUMN type TYPE varchar(100)"))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _upsert(conn: sa.Connection, table: sa.Table, rows: list[dict], keys: list[str], newer: str | None = None) -> None:
    """Insert or update by `keys`; with `newer`, a stored row is replaced only by a row whose `newer` column is
    at least as late."""
    if not rows:
        return
    # PostgreSQL refuses one INSERT ... ON CONFLICT that touches a row twice: the last version wins.
    rows = list({tuple(r[k] for k in keys): r for r in rows}.values())
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]  # PostgreSQL's API, another class
    else:  # pragma: no cover - other databases are not supported
        raise NotImplementedError(conn.dialect.name)
    for start in range(0, len(rows), _CHUNK):
        stmt = insert(table).values(rows[start:start + _CHUNK])
        update = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        where = table.c[newer] <= stmt.excluded[newer] if newer else None
        conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update, where=where))


def _chunks(values: Iterable, size: int = _CHUNK) -> Iterator[list]:
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start:start + size]


@overload
def _aware(value: datetime) -> datetime: ...


@overload
def _aware(value: None) -> None: ...


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _ledger_row(row) -> dict:
    return {**row, "created_at": _aware(row["created_at"]), "updated_at": _aware(row["updated_at"])}


class GiftflowStore(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    """giftflow's own database: what was seen, what was sent, what was refused."""

    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite under $DAGSTER_HOME")

    @property
    def engine(self) -> sa.Engine:
        return _engine(self.database_url or default_database_url())

    # -- redemptions -------------------------------------------------------------------------------
    def upsert_redemptions(self, frame: pd.DataFrame) -> int:
        rows = frame[REDEMPTION_COLUMNS].astype(object).where(frame[REDEMPTION_COLUMNS].notna(), None).to_dict("records")
        for row in rows:
            row["redeemed_at"] = row["redeemed_at"].to_pydatetime()
            row["updated_at"] = row["updated_at"].to_pydatetime()
        with self.engine.begin() as conn:
            # Two runs of one day may fetch it at different moments and store in either order: an older copy
            # (fetched before a void) must never replace a newer one.
            _upsert(conn, redemptions, rows, ["redemption_id"], newer="updated_at")
        return len(rows)

    def load_redemptions(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        emails: Iterable[str] = (),
        customer_ids: Iterable[str] = (),
    ) -> pd.DataFrame:
        """Redemptions redeemed in [start, end), or (with emails/customer_ids) those linked to them."""
        rows: dict[str, dict] = {}
        with self.engine.connect() as conn:
            queries = []
            if start is not None:
                queries.append(sa.select(redemptions).where(redemptions.c.redeemed_at >= start,
                                                            redemptions.c.redeemed_at < end))
            queries += [sa.select(redemptions).where(redemptions.c.email_norm.in_(c)) for c in _chunks(emails)]
            queries += [sa.select(redemptions).where(redemptions.c.stripe_customer_id.in_(c))
                        for c in _chunks(customer_ids)]
            for query in queries:
                for row in conn.execute(query).mappings():
                    rows[row["redemption_id"]] = dict(row)
        for rec in rows.values():
            rec["redeemed_at"] = _aware(rec["redeemed_at"])
            rec["updated_at"] = _aware(rec["updated_at"])
        return redemptions_frame(list(rows.values()))

    def redemption_versions(self, ids: list[str]) -> dict[str, datetime]:
        """`updated_at` of each stored redemption among `ids`: tells a new change from one already seen."""
        out = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                query = sa.select(redemptions.c.redemption_id, redemptions.c.updated_at).where(
                    redemptions.c.redemption_id.in_(chunk))
                out.update({r.redemption_id: _aware(r.updated_at) for r in conn.execute(query)})
        return out

    # -- Stripe objects (workflows) -----------------------------------------------------------------
    def upsert_objects(self, kind: str, rows: list[dict]) -> None:
        now = _now()
        records = [{"kind": kind, "object_id": r["id"], "created": int(r["created"]),
                    "customer_id": r.get("customer") if isinstance(r.get("customer"), str) else None,
                    "data": json.dumps(r, sort_keys=True, default=str), "synced_at": now} for r in rows]
        with self.engine.begin() as conn:
            _upsert(conn, stripe_objects, records, ["kind", "object_id"])

    def load_objects(self, kind: str, *, created_gte: int | None = None, created_lt: int | None = None,
                     ids: Iterable[str] | None = None, customer_ids: Iterable[str] | None = None) -> list[dict]:
        t = stripe_objects
        base = sa.select(t.c.data).where(t.c.kind == kind)
        if created_gte is not None:
            base = base.where(t.c.created >= created_gte, t.c.created < created_lt)
        queries = [base]
        if ids is not None:
            queries = [base.where(t.c.object_id.in_(c)) for c in _chunks(ids)]
        elif customer_ids is not None:
            queries = [base.where(t.c.customer_id.in_(c)) for c in _chunks(customer_ids)]
        with self.engine.connect() as conn:
            return [json.loads(row.data) for q in queries for row in conn.execute(q)]

    # -- ledger ---------------------------------------------------------------------------------------
    def ledger_entries(self, op_keys: Iterable[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(op_keys):
                for row in conn.execute(sa.select(ledger).where(ledger.c.op_key.in_(chunk))).mappings():
                    out[row["op_key"]] = _ledger_row(row)
        return out

    def ledger_for_target(self, target: str, kind: str) -> list[dict]:
        with self.engine.connect() as conn:
            query = sa.select(ledger).where(ledger.c.target == target, ledger.c.kind == kind)
            return [_ledger_row(r) for r in conn.execute(query).mappings()]

    def record_planned(self, op_key: str, kind: str, target: str, params: dict, partition: str | None,
                       run_id: str | None) -> None:
        now = _now()
        with self.engine.begin() as conn:
            existing = conn.execute(sa.select(ledger.c.attempts).where(ledger.c.op_key == op_key)).scalar()
            if existing is None:
                conn.execute(ledger.insert().values(
                    op_key=op_key, kind=kind, target=target, params=json.dumps(params, sort_keys=True),
                    status="planned", partition=partition, run_id=run_id, attempts=1, created_at=now, updated_at=now))
            else:
                conn.execute(ledger.update().where(ledger.c.op_key == op_key).values(
                    status="planned", run_id=run_id, attempts=existing + 1, error=None, updated_at=now))

    def record_result(self, op_key: str, *, status: str, request_id: str | None = None,
                      object_id: str | None = None, error: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(ledger.update().where(ledger.c.op_key == op_key).values(
                status=status, stripe_request_id=request_id, stripe_object_id=object_id, error=error,
                updated_at=_now()))

    def ledger_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(sa.select(ledger).order_by(ledger.c.created_at), conn)

    # -- quarantine -----------------------------------------------------------------------------------
    def quarantine(self, source: str, bad: list[dict], partition: str | None, run_id: str | None) -> None:
        now = _now()
        rows = [{"source": source, "record_key": b["record_key"], "reason": b["reason"],
                 "payload": json.dumps(b["payload"], sort_keys=True, default=str), "partition": partition,
                 "run_id": run_id, "seen_at": now} for b in bad]
        with self.engine.begin() as conn:
            _upsert(conn, quarantine, rows, ["source", "record_key"])

    def quarantined(self, source: str = "cardivo") -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(sa.select(quarantine).where(quarantine.c.source == source), conn)

    # -- webhook deliveries ----------------------------------------------------------------------
    def record_webhook_event(self, source: str, event_id: str, event_type: str, payload: dict) -> bool:
        """Store a delivery durably; False where this event id was already received (a replay).

        One statement, no look-up first: senders deliver the same event concurrently, and a look-up then insert
        lets two of them both find nothing; the key decides, and the loser learns it from the row count."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]  # PostgreSQL's API, another class
        else:  # pragma: no cover - other databases are not supported
            raise NotImplementedError(self.engine.dialect.name)
        stmt = insert(webhook_events).values(
            source=source, event_id=event_id, type=event_type, payload=json.dumps(payload, default=str),
            received_at=_now()).on_conflict_do_nothing(index_elements=["source", "event_id"])
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def webhook_events_since(self, source: str, received_after: datetime, limit: int = 1000) -> list[dict]:
        """Deliveries received at or after `received_after`, oldest first, `payload` decoded. Read-only, so a
        sensor can read them on every tick and move its own cursor only when Dagster commits the tick."""
        t = webhook_events
        query = (sa.select(t).where(t.c.source == source, t.c.received_at >= received_after)
                 .order_by(t.c.received_at, t.c.event_id).limit(limit))
        with self.engine.connect() as conn:
            return [{**dict(r), "payload": json.loads(r["payload"]), "received_at": _aware(r["received_at"])}
                    for r in conn.execute(query).mappings()]

    # -- the Stripe customer mirror -----------------------------------------------------------------------
    # One mirror for every customer writer and reader: Stripe's customer objects (plus giftflow's `_tax_ids`
    # and `_coupons`, which Stripe leaves out unless expanded or listed apart). A copy never replaces one
    # mirrored later (`synced_at`): a listing takes minutes, events arrive out of order, writes go on meanwhile.
    def replace_customers(self, rows: list[dict], *, listed_from: datetime | None = None,
                          refreshed_keys: Iterable[str] = ("customers_refreshed_at",)) -> None:
        """Make the mirror this full listing of Stripe customers, begun at `listed_from`: customers not in it
        and not mirrored since are dropped; `_tax_ids` / `_coupons` a row does not carry are kept."""
        listed_from = listed_from or _now()
        with self.engine.begin() as conn:
            self._merge(conn, rows, listed_from)
            conn.execute(customer_objects.delete().where(customer_objects.c.synced_at < listed_from))
            for key in refreshed_keys:
                self._set(conn, key, listed_from.isoformat())

    def upsert_customers(self, rows: list[dict], *, as_of: datetime | None = None, add_tax_ids: Iterable[str] = (),
                         add_coupons: Iterable[str] = ()) -> None:
        """Mirror customers as Stripe showed them at `as_of` (a write's answer, an event; default now), with
        the given tax ids and coupons added to those already mirrored."""
        with self.engine.begin() as conn:
            self._merge(conn, rows, as_of or _now(), list(add_tax_ids), list(add_coupons))

    @staticmethod
    def _merge(conn: sa.Connection, rows: list[dict], as_of: datetime, add_tax_ids: Iterable[str] = (),
               add_coupons: Iterable[str] = ()) -> None:
        known = {r.customer_id: json.loads(r.data) for chunk in _chunks([r["id"] for r in rows])
                 for r in conn.execute(sa.select(customer_objects.c.customer_id, customer_objects.c.data)
                                       .where(customer_objects.c.customer_id.in_(chunk)))}
        records = []
        for row in rows:
            row, old = dict(row), known.get(row["id"], {})
            for extra, added in (("_tax_ids", add_tax_ids), ("_coupons", add_coupons)):
                merged = row.get(extra) if extra in row else old.get(extra, [])
                row[extra] = list(dict.fromkeys([*(merged or []), *added]))
            records.append(_object_record(row, as_of))
        _upsert(conn, customer_objects, records, ["customer_id"], newer="synced_at")

    def delete_customers(self, ids: list[str]) -> None:
        with self.engine.begin() as conn:
            for chunk in _chunks(ids):
                conn.execute(customer_objects.delete().where(customer_objects.c.customer_id.in_(chunk)))

    def load_customers(self, ids: Iterable[str] | None = None, *, emails: Iterable[str] | None = None) -> list[dict]:
        """The mirror as Stripe's customer objects: all of it, or the customers among `ids` and those whose
        trimmed, lower-cased e-mail is among `emails`."""
        t = customer_objects
        if ids is None and emails is None:
            queries = [sa.select(t.c.customer_id, t.c.data)]
        else:
            ids, emails = list(ids if ids is not None else ()), list(emails if emails is not None else ())
            queries = [sa.select(t.c.customer_id, t.c.data).where(t.c.customer_id.in_(c)) for c in _chunks(ids)]
            queries += [sa.select(t.c.customer_id, t.c.data).where(t.c.email_norm.in_(c)) for c in _chunks(emails)]
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for query in queries:
                found.update({r.customer_id: r.data for r in conn.execute(query)})
        return [json.loads(data) for data in found.values()]

    def count_customers(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(customer_objects)).scalar_one()

    def customers_refreshed_at(self, key: str = "customers_refreshed_at") -> datetime | None:
        value = self.get_state(key)
        return datetime.fromisoformat(value) if value else None

    # -- sync runs and created ids --------------------------------------------------------------------
    def record_sync_run(self, sync: str, run_id: str, *, partition: str | None, status: str, dry_run: bool,
                        counts: dict, rejections: list[dict], started_at: datetime) -> None:
        row = {"sync": sync, "run_id": run_id, "partition": partition, "status": status, "dry_run": dry_run,
               "counts": json.dumps(counts, sort_keys=True), "started_at": started_at, "finished_at": _now(),
               "rejections": json.dumps(rejections, sort_keys=True, default=str)}
        with self.engine.begin() as conn:
            _upsert(conn, sync_runs, [row], ["sync", "run_id"])

    def sync_runs(self, sync: str, run_id: str | None = None, limit: int = 20) -> list[dict]:
        """Reports of a sync's runs, newest first (or the one run), counts and rejections decoded."""
        query = sa.select(sync_runs).where(sync_runs.c.sync == sync)
        if run_id:
            query = query.where(sync_runs.c.run_id == run_id)
        query = query.order_by(sync_runs.c.finished_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [{**dict(r), "counts": json.loads(r["counts"]), "rejections": json.loads(r["rejections"]),
                     "started_at": _aware(r["started_at"]), "finished_at": _aware(r["finished_at"])}
                    for r in conn.execute(query).mappings()]

    def record_sync_ids(self, sync: str, created: dict[str, str], run_id: str | None) -> None:
        """Source row key -> the Stripe customer id a sync created for it."""
        now = _now()
        rows = [{"sync": sync, "row_key": k, "customer_id": v, "run_id": run_id, "created_at": now}
                for k, v in created.items()]
        with self.engine.begin() as conn:
            _upsert(conn, sync_ids, rows, ["sync", "row_key"])

    def sync_ids(self, sync: str) -> dict[str, str]:
        with self.engine.connect() as conn:
            return {r.row_key: r.customer_id
                    for r in conn.execute(sa.select(sync_ids).where(sync_ids.c.sync == sync))}

    def delete_sync_ids(self, sync: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sync_ids.delete().where(sync_ids.c.sync == sync))

    # -- small state (cursors) ---------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(kv.c.value).where(kv.c.key == key)).scalar()

    def set_state(self, key: str, value: str) -> None:
        with self.engine.begin() as conn:
            self._set(conn, key, value)

    @staticmethod
    def _set(conn: sa.Connection, key: str, value: str) -> None:
        _upsert(conn, kv, [{"key": key, "value": value}], ["key"])


def _object_record(row: dict, now: datetime) -> dict:
    return {"customer_id": row["id"], "email_norm": (row.get("email") or "").strip().lower() or None,
            "created": int(row.get("created") or 0), "data": json.dumps(row, sort_keys=True, default=str),
            "synced_at": now}
