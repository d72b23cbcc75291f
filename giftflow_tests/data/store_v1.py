"""giftflow's store schema as of commit 5bce313 (giftflow/resources/store.py at the start of the session), before
Alembic: the table definitions of that file, verbatim, without its store class (which imported Dagster and a
module that no longer exists). The migration tests create a database with `metadata_obj.create_all` and fill it
the way that version did, then open it with today's store."""

import sqlalchemy as sa

metadata_obj = sa.MetaData()
TS = sa.DateTime(timezone=True)

redemptions = sa.Table(
    "redemptions",
    metadata_obj,
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

customers = sa.Table(
    "stripe_customers",
    metadata_obj,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("email", sa.String(320)),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("synced_at", TS, nullable=False),
)

ledger = sa.Table(
    "stripe_ledger",
    metadata_obj,
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
    "quarantine",
    metadata_obj,
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
    "stripe_objects",
    metadata_obj,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("object_id", sa.String(64), primary_key=True),
    sa.Column("created", sa.BigInteger, nullable=False, index=True),
    sa.Column("customer_id", sa.String(64), index=True),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("synced_at", TS, nullable=False),
)

# Pushed deliveries (Cardivo and Stripe webhooks), kept until a sensor has handled them.
webhook_events = sa.Table(
    "webhook_events",
    metadata_obj,
    sa.Column("source", sa.String(16), primary_key=True),  # cardivo | stripe
    sa.Column("event_id", sa.String(128), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("received_at", TS, nullable=False, index=True),
    sa.Column("processed_at", TS),
)

# Reverse-ETL syncs: the full customer mirror they diff against (Stripe's object plus giftflow's `_tax_ids`
# and `_coupons`), one report per sync run, and the ids of the customers each sync created, per source row.
customer_objects = sa.Table(
    "stripe_customer_objects",
    metadata_obj,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("email_norm", sa.String(320), index=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("synced_at", TS, nullable=False),
)

sync_runs = sa.Table(
    "sync_runs",
    metadata_obj,
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
    "sync_customer_ids",
    metadata_obj,
    sa.Column("sync", sa.String(64), primary_key=True),
    sa.Column("row_key", sa.String(320), primary_key=True),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("created_at", TS, nullable=False),
)

kv = sa.Table(
    "giftflow_state",
    metadata_obj,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
