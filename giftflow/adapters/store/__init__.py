"""giftflow's own state on SQLAlchemy 2: redemptions seen, the Stripe customer mirror, the write ledger,
quarantined input, webhook deliveries, sync reports and small key/value state (cursors).

SQLite under $DAGSTER_HOME by default; PostgreSQL (or any SQLAlchemy URL) via GIFTFLOW_DATABASE_URL. The schema
is `schema.py`, kept by the Alembic migrations in `migrations/`, which run when a process first opens the database
(`db.migrate`). One repository per group of tables (redemptions, customers, stripe_objects, ledger, quarantine,
webhooks, sync_runs, state); `GiftflowStore` is the facade callers hold.
"""

from giftflow.adapters.store.customers import MirroredCustomers
from giftflow.adapters.store.db import _create_tables, default_database_url, head_revision, migrate
from giftflow.adapters.store.facade import GiftflowStore, Repositories
from giftflow.adapters.store.ledger import PlannedWrite, WriteOutcome
from giftflow.adapters.store.schema import (
    customer_objects,
    kv,
    ledger,
    metadata_obj,
    quarantine,
    redemptions,
    stripe_objects,
    sync_ids,
    sync_runs,
    webhook_events,
)

__all__ = [
    "GiftflowStore",
    "MirroredCustomers",
    "PlannedWrite",
    "Repositories",
    "WriteOutcome",
    "_create_tables",
    "customer_objects",
    "default_database_url",
    "head_revision",
    "kv",
    "ledger",
    "metadata_obj",
    "migrate",
    "quarantine",
    "redemptions",
    "stripe_objects",
    "sync_ids",
    "sync_runs",
    "webhook_events",
]
