"""Alembic environment for giftflow's store. The store runs it (giftflow/adapters/store/db.py::migrate) on the
connection it holds under its lock, so there is no alembic.ini; to run it by hand (or autogenerate a revision):

    python -c "from giftflow.adapters.store.db import alembic_config; from alembic import command; \\
               cfg = alembic_config(); cfg.set_main_option('sqlalchemy.url', 'sqlite:///x.sqlite'); \\
               command.revision(cfg, 'what changed', autogenerate=True)"
"""

import sqlalchemy as sa
from alembic import context

from giftflow.adapters.store.schema import metadata_obj

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata_obj, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("giftflow's migrations read the database they change; run them online")
elif (connection := config.attributes.get("connection")) is not None:
    _run(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("giftflow's migrations need sqlalchemy.url or a connection")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        _run(connection)
    engine.dispose()
