"""JSON documents as JSON columns instead of text holding json.dumps output.

PostgreSQL: `jsonb` for documents Stripe returned and giftflow's own counts; `json` (the text kept as sent, which
`jsonb` would refuse where it holds \\u0000 or a lone surrogate) for what a sender or a source file wrote: webhook
payloads, quarantined records, ledger parameters, sync rejections. The stored text is already JSON: a cast.
SQLite: nothing to change; its JSON is text, and these columns already hold JSON text.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = {
    ("stripe_objects", "data"): "jsonb",
    ("stripe_customer_objects", "data"): "jsonb",
    ("sync_runs", "counts"): "jsonb",
    ("sync_runs", "rejections"): "json",
    ("stripe_ledger", "params"): "json",
    ("quarantine", "payload"): "json",
    ("webhook_events", "payload"): "json",
}


def _types(bind, table: str) -> dict[str, str]:
    return {c["name"]: str(c["type"]).lower() for c in sa.inspect(bind).get_columns(table)}


def _retype(to_text: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for (table, column), json_type in COLUMNS.items():
        target = "text" if to_text else json_type
        if _types(bind, table)[column] != target:
            op.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" TYPE {target} USING "{column}"::{target}')


def upgrade() -> None:
    _retype(to_text=False)


def downgrade() -> None:
    _retype(to_text=True)
