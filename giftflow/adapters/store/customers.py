"""The one mirror of Stripe customers, for every customer writer and reader: Stripe's customer objects plus
giftflow's `_tax_ids` and `_coupons`, which Stripe leaves out unless expanded or listed apart. A copy never
replaces one mirrored later (`synced_at`): a listing takes minutes, events arrive out of order, writes go on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from giftflow.adapters.store._base import Repository
from giftflow.adapters.store.db import chunks, now, upsert
from giftflow.adapters.store.schema import customer_objects
from giftflow.adapters.store.state import State


@dataclass(frozen=True)
class MirroredCustomers:
    """Customers as a write's answer showed them, to mirror (`upsert_customers`)."""

    rows: list[dict]
    as_of: datetime | None = None
    add_tax_ids: tuple[str, ...] = ()
    add_coupons: tuple[str, ...] = ()


class CustomerMirror(Repository):
    def replace(
        self,
        rows: list[dict],
        *,
        listed_from: datetime | None = None,
        refreshed_keys: Iterable[str] = ("customers_refreshed_at",),
    ) -> None:
        """Make the mirror this full listing of Stripe customers, begun at `listed_from`: customers not in it
        and not mirrored since are dropped; `_tax_ids` / `_coupons` a row does not carry are kept."""
        listed_from = listed_from or now()
        with self.engine.begin() as conn:
            _merge(conn, rows, listed_from)
            conn.execute(customer_objects.delete().where(customer_objects.c.synced_at < listed_from))
            for key in refreshed_keys:
                State.set_in(conn, key, listed_from.isoformat())

    def upsert(
        self,
        rows: list[dict],
        *,
        as_of: datetime | None = None,
        add_tax_ids: Iterable[str] = (),
        add_coupons: Iterable[str] = (),
    ) -> None:
        """Mirror customers as Stripe showed them at `as_of` (a write's answer, an event; default now), with
        the given tax ids and coupons added to those already mirrored."""
        with self.engine.begin() as conn:
            _merge(conn, rows, as_of or now(), list(add_tax_ids), list(add_coupons))

    def delete(self, ids: list[str]) -> None:
        with self.engine.begin() as conn:
            for chunk in chunks(ids):
                conn.execute(customer_objects.delete().where(customer_objects.c.customer_id.in_(chunk)))

    def load(self, ids: Iterable[str] | None = None, *, emails: Iterable[str] | None = None) -> list[dict]:
        """The mirror as Stripe's customer objects: all of it, or the customers among `ids` and those whose
        trimmed, lower-cased e-mail is among `emails`."""
        t = customer_objects
        if ids is None and emails is None:
            queries = [sa.select(t.c.customer_id, t.c.data)]
        else:
            ids, emails = list(ids if ids is not None else ()), list(emails if emails is not None else ())
            queries = [sa.select(t.c.customer_id, t.c.data).where(t.c.customer_id.in_(c)) for c in chunks(ids)]
            queries += [sa.select(t.c.customer_id, t.c.data).where(t.c.email_norm.in_(c)) for c in chunks(emails)]
        found: dict[str, dict] = {}
        with self.engine.connect() as conn:
            for query in queries:
                found.update({r.customer_id: r.data for r in conn.execute(query)})
        return list(found.values())

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(customer_objects)).scalar_one()


def mirror_in(conn: sa.Connection, entries: list[MirroredCustomers]) -> None:
    """Several writes' answers mirrored in `conn`'s transaction, in order: runs of answers that add nothing and
    name distinct customers in one statement each, the others one by one."""
    plain: dict[str, dict] = {}
    for e in entries:
        ids = {r["id"] for r in e.rows}
        if plain and (e.as_of is not None or e.add_tax_ids or e.add_coupons or plain.keys() & ids):
            _merge(conn, list(plain.values()), now())
            plain = {}
        if e.as_of is None and not e.add_tax_ids and not e.add_coupons and len(ids) == len(e.rows):
            plain.update({r["id"]: r for r in e.rows})
        else:
            _merge(conn, e.rows, e.as_of or now(), list(e.add_tax_ids), list(e.add_coupons))
    if plain:
        _merge(conn, list(plain.values()), now())


def _merge(
    conn: sa.Connection, rows: list[dict], as_of: datetime, add_tax_ids: Iterable[str] = (), add_coupons: Iterable[str] = ()
) -> None:
    known = {
        r.customer_id: r.data
        for chunk in chunks([r["id"] for r in rows])
        for r in conn.execute(
            sa.select(customer_objects.c.customer_id, customer_objects.c.data).where(
                customer_objects.c.customer_id.in_(chunk)
            )
        )
    }
    records = []
    for row in rows:
        row, old = dict(row), known.get(row["id"], {})
        for extra, added in (("_tax_ids", add_tax_ids), ("_coupons", add_coupons)):
            merged = row.get(extra) if extra in row else old.get(extra, [])
            row[extra] = list(dict.fromkeys([*(merged or []), *added]))
        records.append(_record(row, as_of))
    upsert(conn, customer_objects, records, ["customer_id"], newer="synced_at")


def _record(row: dict, synced_at: datetime) -> dict:
    return {
        "customer_id": row["id"],
        "email_norm": (row.get("email") or "").strip().lower() or None,
        "created": int(row.get("created") or 0),
        "data": row,
        "synced_at": synced_at,
    }
