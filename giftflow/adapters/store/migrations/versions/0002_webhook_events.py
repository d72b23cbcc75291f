"""webhook_events: ids up to 255 and types up to 100 characters (what the receiver accepts); no `processed_at`
(the sensors keep a cursor instead of marking deliveries).

Widening a varchar changes only PostgreSQL's catalog (no rewrite); SQLite does not enforce lengths. Databases made
after 5bce313 without migrations may already be wide or lack the column: both steps look first.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _columns() -> dict:
    return {c["name"]: c for c in sa.inspect(op.get_bind()).get_columns("webhook_events")}


def upgrade() -> None:
    bind = op.get_bind()
    columns = _columns()
    if bind.dialect.name == "postgresql":
        if columns["event_id"]["type"].length < 255 or columns["type"]["type"].length < 100:
            op.execute(
                "ALTER TABLE webhook_events ALTER COLUMN event_id TYPE varchar(255), ALTER COLUMN type TYPE varchar(100)"
            )
    if "processed_at" in columns:
        if bind.dialect.name == "sqlite" and _sqlite_version(bind) >= (3, 35):
            op.execute("ALTER TABLE webhook_events DROP COLUMN processed_at")  # in place, no table copy
        else:
            with op.batch_alter_table("webhook_events") as batch:
                batch.drop_column("processed_at")


def downgrade() -> None:
    # The widths stay: narrowing would fail on any id longer than 128 characters stored since.
    op.add_column("webhook_events", sa.Column("processed_at", sa.DateTime(timezone=True)))


def _sqlite_version(bind) -> tuple[int, ...]:
    return tuple(int(p) for p in bind.exec_driver_sql("SELECT sqlite_version()").scalar().split("."))
