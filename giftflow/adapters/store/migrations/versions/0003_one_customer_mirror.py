"""One customer mirror: `stripe_customers` (id, e-mail, created, metadata; the gift-card sync's old mirror) is
superseded by `stripe_customer_objects` (Stripe's whole object). A customer only the old table has is copied into
the new one, as the old store returned it; then the old table goes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
# The two tables as this revision finds them (data still text; 0004 makes it JSON).
old = sa.table(
    "stripe_customers",
    sa.column("customer_id", sa.String),
    sa.column("email", sa.String),
    sa.column("created", sa.BigInteger),
    sa.column("metadata", sa.Text),
    sa.column("synced_at", TS),
)
new = sa.table(
    "stripe_customer_objects",
    sa.column("customer_id", sa.String),
    sa.column("email_norm", sa.String),
    sa.column("created", sa.BigInteger),
    sa.column("data", sa.Text),
    sa.column("synced_at", TS),
)
_CHUNK = 1000


def upgrade() -> None:
    bind = op.get_bind()
    if not sa.inspect(bind).has_table("stripe_customers"):
        return
    missing = sa.select(old).where(old.c.customer_id.not_in(sa.select(new.c.customer_id))).order_by(old.c.customer_id)
    rows = [_object(r) for r in bind.execute(missing).mappings()]
    for start in range(0, len(rows), _CHUNK):
        bind.execute(new.insert(), rows[start : start + _CHUNK])
    op.drop_table("stripe_customers")


def _object(row) -> dict:
    # The copy keeps its synced_at: a newer listing or event still replaces it, an older one still does not.
    data = {
        "id": row["customer_id"],
        "email": row["email"],
        "created": row["created"],
        "metadata": json.loads(row["metadata"] or "{}"),
        "_tax_ids": [],
        "_coupons": [],
    }
    return {
        "customer_id": row["customer_id"],
        "email_norm": (row["email"] or "").strip().lower() or None,
        "created": int(row["created"] or 0),
        "data": json.dumps(data, sort_keys=True),
        "synced_at": row["synced_at"],
    }


def downgrade() -> None:
    op.create_table(
        "stripe_customers",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("email", sa.String(320)),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("synced_at", TS, nullable=False),
    )
    bind = op.get_bind()
    rows = []
    for r in bind.execute(sa.select(new)).mappings():
        data = json.loads(r["data"])
        rows.append(
            {
                "customer_id": r["customer_id"],
                "email": data.get("email"),
                "created": r["created"],
                "metadata": json.dumps(data.get("metadata") or {}, sort_keys=True),
                "synced_at": r["synced_at"],
            }
        )
    for start in range(0, len(rows), _CHUNK):
        bind.execute(old.insert(), rows[start : start + _CHUNK])
