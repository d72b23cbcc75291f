"""The store's migrations on real SQLite and PostgreSQL: a database made by giftflow before it had migrations
(git 5bce313, giftflow_tests/data/store_v1.py) is taken over with every row readable through today's API, from
one process or from several at once; a new database gets exactly the schema of schema.py; and JSON columns take
what senders and source files may hold."""

from __future__ import annotations

import json
import multiprocessing
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from giftflow.adapters.store import GiftflowStore, head_revision, metadata_obj
from giftflow.adapters.store.db import alembic_config, current_revision
from giftflow_tests.data import store_v1 as v1
from giftflow_tests.harness import create_database

T0 = datetime(2026, 11, 20, 14, 3, 11, tzinfo=timezone.utc)
EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql"])
def new_url(request, tmp_path) -> str:
    """The URL of a database that does not exist yet (SQLite) or is empty (PostgreSQL)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/giftflow.sqlite"
    return create_database(request.getfixturevalue("postgres_url"), f"mig_{uuid.uuid4().hex[:12]}")


def make_v1_database(url: str) -> None:
    """Tables as 5bce313 created them, rows as its store wrote them (JSON as json.dumps text), one table each."""
    engine = sa.create_engine(url)
    dumps = json.dumps
    with engine.begin() as conn:
        v1.metadata_obj.create_all(conn)
        conn.execute(
            v1.redemptions.insert(),
            [
                {
                    "redemption_id": "rdm_1",
                    "status": "completed",
                    "amount": 2500,
                    "currency": "usd",
                    "card_last4": "1234",
                    "gift_card_id": "gc_1",
                    "email": "Ana@X.com",
                    "email_norm": "ana@x.com",
                    "name": "Ana",
                    "phone": None,
                    "stripe_customer_id": "cus_old",
                    "location": "online",
                    "redeemed_at": T0,
                    "updated_at": T0,
                },
                {
                    "redemption_id": "rdm_2",
                    "status": "voided",
                    "amount": 900,
                    "currency": "eur",
                    "card_last4": "9876",
                    "gift_card_id": None,
                    "email": None,
                    "email_norm": None,
                    "name": None,
                    "phone": None,
                    "stripe_customer_id": None,
                    "location": None,
                    "redeemed_at": T0 + timedelta(hours=1),
                    "updated_at": T0 + timedelta(days=1),
                },
            ],
        )
        # The gift-card sync's old mirror: one customer only there, one in both (the object table's copy is newer).
        conn.execute(
            v1.customers.insert(),
            [
                {
                    "customer_id": "cus_old",
                    "email": " Old@X.com ",
                    "created": 1_700_000_000,
                    "metadata": dumps({"giftcard_redeemed_total": "2500"}, sort_keys=True),
                    "synced_at": T0,
                },
                {
                    "customer_id": "cus_both",
                    "email": "both@x.com",
                    "created": 1_700_000_001,
                    "metadata": dumps({"stale": "yes"}, sort_keys=True),
                    "synced_at": T0,
                },
            ],
        )
        conn.execute(
            v1.customer_objects.insert(),
            [
                {
                    "customer_id": "cus_both",
                    "email_norm": "both@x.com",
                    "created": 1_700_000_001,
                    "data": dumps(
                        {
                            "id": "cus_both",
                            "object": "customer",
                            "email": "both@x.com",
                            "created": 1_700_000_001,
                            "name": "Both",
                            "metadata": {"tier": "gold"},
                            "_tax_ids": ["eu_vat:DE1"],
                            "_coupons": [],
                        },
                        sort_keys=True,
                    ),
                    "synced_at": T0 + timedelta(minutes=1),
                },
            ],
        )
        conn.execute(
            v1.ledger.insert().values(
                op_key="gf-upd-1",
                kind="update_customer",
                target="cus_old",
                params=dumps({"metadata": {"giftcard_redeemed_total": "2500"}}, sort_keys=True),
                status="sent",
                partition="2026-11-20",
                run_id="run-1",
                stripe_request_id="req_1",
                stripe_object_id="cus_old",
                error=None,
                attempts=2,
                created_at=T0,
                updated_at=T0 + timedelta(seconds=3),
            )
        )
        conn.execute(
            v1.quarantine.insert().values(
                source="cardivo",
                record_key="rdm_bad",
                reason="amount: not a number",
                payload=dumps({"amount": "lots", "gift_card": {"code": "…4321"}}, sort_keys=True),
                partition="2026-11-20",
                run_id="run-1",
                seen_at=T0,
            )
        )
        conn.execute(
            v1.stripe_objects.insert().values(
                kind="payment_intent",
                object_id="pi_1",
                created=1_763_647_391,
                customer_id="cus_old",
                data=dumps(
                    {"id": "pi_1", "amount": 150000, "currency": "usd", "customer": "cus_old", "created": 1_763_647_391},
                    sort_keys=True,
                ),
                synced_at=T0,
            )
        )
        conn.execute(
            v1.webhook_events.insert(),
            [
                {
                    "source": "stripe",
                    "event_id": "evt_1",
                    "type": "customer.updated",
                    "payload": dumps({"id": "evt_1", "data": {"object": {"id": "cus_old"}}}),
                    "received_at": T0,
                    "processed_at": T0 + timedelta(seconds=1),
                },
                {
                    "source": "cardivo",
                    "event_id": "evt_c1",
                    "type": "redemption.created",
                    "payload": dumps({"id": "evt_c1", "data": {"id": "rdm_1"}}),
                    "received_at": T0,
                    "processed_at": None,
                },
            ],
        )
        conn.execute(
            v1.sync_runs.insert().values(
                sync="crm",
                run_id="run-2",
                partition=None,
                status="failed",
                dry_run=False,
                counts=dumps({"created": 1, "rejected": 1}, sort_keys=True),
                rejections=dumps(
                    [{"row_key": "r9", "customer_id": None, "stage": "create", "reason": "bad phone"}], sort_keys=True
                ),
                started_at=T0,
                finished_at=T0 + timedelta(minutes=2),
            )
        )
        conn.execute(
            v1.sync_ids.insert().values(sync="crm", row_key="r1", customer_id="cus_made", run_id="run-2", created_at=T0)
        )
        conn.execute(
            v1.kv.insert(),
            [{"key": "customers_refreshed_at", "value": T0.isoformat()}, {"key": "stripe_events_cursor", "value": "evt_1"}],
        )
    engine.dispose()


def assert_v1_rows_readable(store: GiftflowStore) -> None:
    """Every row make_v1_database wrote, read through today's API with the values the old store returned."""
    frame = store.load_redemptions(start=T0 - timedelta(hours=1), end=T0 + timedelta(days=1))
    assert sorted(frame["redemption_id"]) == ["rdm_1", "rdm_2"]
    first = frame.set_index("redemption_id").loc["rdm_1"]
    assert (first["amount"], first["card_last4"], first["redeemed_at"]) == (2500, "1234", T0)
    assert list(store.load_redemptions(emails=["ana@x.com"])["redemption_id"]) == ["rdm_1"]
    assert store.redemption_versions(["rdm_2"]) == {"rdm_2": T0 + timedelta(days=1)}

    customers = {c["id"]: c for c in store.load_customers()}
    assert customers["cus_old"] == {
        "id": "cus_old",
        "email": " Old@X.com ",
        "created": 1_700_000_000,
        "metadata": {"giftcard_redeemed_total": "2500"},
        "_tax_ids": [],
        "_coupons": [],
    }
    assert customers["cus_both"]["metadata"] == {"tier": "gold"} and customers["cus_both"]["_tax_ids"] == ["eu_vat:DE1"]
    assert store.count_customers() == 2
    assert [c["id"] for c in store.load_customers(emails=["old@x.com"])] == ["cus_old"]
    assert store.customers_refreshed_at() == T0

    [entry] = store.ledger_for_target("cus_old", "update_customer")
    assert entry["params"] == '{"metadata": {"giftcard_redeemed_total": "2500"}}'  # JSON text, as it always was
    assert (entry["status"], entry["attempts"], entry["created_at"]) == ("sent", 2, T0)
    assert store.ledger_entries(["gf-upd-1"])["gf-upd-1"]["stripe_request_id"] == "req_1"
    assert list(store.ledger_frame()["params"]) == ['{"metadata": {"giftcard_redeemed_total": "2500"}}']

    quarantined = store.quarantined()
    assert list(quarantined["reason"]) == ["amount: not a number"]
    assert json.loads(quarantined.loc[0, "payload"]) == {"amount": "lots", "gift_card": {"code": "…4321"}}

    assert store.load_objects("payment_intent", ids=["pi_1"])[0]["amount"] == 150000
    assert [o["id"] for o in store.load_objects("payment_intent", customer_ids=["cus_old"])] == ["pi_1"]

    [stripe_event] = store.webhook_events_since("stripe", EPOCH)
    assert stripe_event["payload"] == {"id": "evt_1", "data": {"object": {"id": "cus_old"}}}
    assert (stripe_event["type"], stripe_event["received_at"]) == ("customer.updated", T0)
    assert "processed_at" not in stripe_event
    assert [e["event_id"] for e in store.webhook_events_since("cardivo", EPOCH)] == ["evt_c1"]

    [report] = store.sync_runs("crm")
    assert report["counts"] == {"created": 1, "rejected": 1} and report["status"] == "failed"
    assert report["rejections"] == [{"row_key": "r9", "customer_id": None, "stage": "create", "reason": "bad phone"}]
    assert store.sync_ids("crm") == {"r1": "cus_made"}
    assert store.get_state("stripe_events_cursor") == "evt_1"


def assert_schema_is_current(url: str) -> None:
    """At the head revision, with the tables, columns, types (PostgreSQL) and indexes of schema.py."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        # SQLite keeps JSON as TEXT (its JSON type is text anyway): compare types on PostgreSQL only.
        context = MigrationContext.configure(conn, opts={"compare_type": conn.dialect.name == "postgresql"})
        diff = [d for d in compare_metadata(context, metadata_obj) if not _is_alembic_table(d)]
        assert diff == []
    engine.dispose()


def _is_alembic_table(diff) -> bool:
    return diff[0] == "remove_table" and diff[1].name == "alembic_version"


def test_a_store_made_before_migrations_is_taken_over_with_every_row(new_url):
    make_v1_database(new_url)
    store = GiftflowStore(database_url=new_url)
    assert_v1_rows_readable(store)
    assert_schema_is_current(new_url)
    tables = set(sa.inspect(store.engine).get_table_names())
    assert "stripe_customers" not in tables and "alembic_version" in tables
    # It goes on working: a delivery id as long as the receiver accepts, the mirror, the ledger.
    assert store.record_webhook_event("stripe", "e" * 255, "t" * 100, {"id": "e" * 255})
    store.upsert_customers([{"id": "cus_old", "email": "old@x.com", "created": 1_700_000_000, "metadata": {}}])
    assert store.load_customers(["cus_old"])[0]["metadata"] == {}


def _open_and_check(url: str, barrier, errors) -> None:
    try:
        barrier.wait(30)
        assert_v1_rows_readable(GiftflowStore(database_url=url))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        import traceback

        errors.put(traceback.format_exc()[-2000:])


def test_four_processes_opening_an_old_store_at_once_migrate_it_once(new_url):
    """A deploy's first backfill: several steps open the old database in the same instant."""
    make_v1_database(new_url)
    ctx = multiprocessing.get_context("fork")  # each child starts with no engine cached, like a new step
    barrier, errors = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_open_and_check, args=(new_url, barrier, errors)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, failures
    assert [p.exitcode for p in procs] == [0] * 4
    assert_schema_is_current(new_url)
    engine = sa.create_engine(new_url)
    with engine.connect() as conn:  # migrated once: the customer only the old table had is there once
        assert conn.execute(sa.text("SELECT count(*) FROM stripe_customer_objects")).scalar() == 2
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
    engine.dispose()
    assert_v1_rows_readable(GiftflowStore(database_url=new_url))  # and opening it again changes nothing


def test_a_new_database_gets_the_schema_of_schema_py(new_url):
    GiftflowStore(database_url=new_url).get_state("x")
    assert_schema_is_current(new_url)


def test_downgrade_to_the_old_schema_and_back_keeps_every_row(new_url):
    make_v1_database(new_url)
    GiftflowStore(database_url=new_url).get_state("x")  # migrates to head
    engine = sa.create_engine(new_url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert inspector.has_table("stripe_customers")
        assert "processed_at" in {c["name"] for c in inspector.get_columns("webhook_events")}
        metadata = {
            r.customer_id: json.loads(r.metadata)
            for r in conn.execute(sa.text("SELECT customer_id, metadata FROM stripe_customers"))
        }
        assert metadata == {"cus_old": {"giftcard_redeemed_total": "2500"}, "cus_both": {"tier": "gold"}}
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    engine.dispose()
    assert_schema_is_current(new_url)
    assert_v1_rows_readable(GiftflowStore(database_url=new_url))


HOSTILE = {"nul": "a\u0000b", "lone_surrogate": "\ud800", "emoji": "🎁", "quote": "\"'\\", "big": 10**40}


def test_json_columns_keep_what_senders_and_source_files_may_hold(new_url):
    """A signed delivery or a CSV cell may carry \\u0000 or a lone surrogate, which PostgreSQL's jsonb refuses:
    the columns that hold them take them and give them back unchanged."""
    store = GiftflowStore(database_url=new_url)
    assert store.record_webhook_event("cardivo", "evt_h", "redemption.created", {"id": "evt_h", "data": HOSTILE})
    assert store.webhook_events_since("cardivo", EPOCH)[0]["payload"]["data"] == HOSTILE
    store.record_planned("k1", "create_customer", "r1", {"name": HOSTILE["nul"], "metadata": HOSTILE}, None, "r")
    assert json.loads(store.ledger_entries(["k1"])["k1"]["params"]) == {"name": HOSTILE["nul"], "metadata": HOSTILE}
    store.quarantine("cardivo", [{"record_key": "rdm_h", "reason": "bad", "payload": HOSTILE}], None, "r")
    assert json.loads(store.quarantined().loc[0, "payload"]) == HOSTILE
    store.record_sync_run(
        "crm",
        "r",
        partition=None,
        status="success",
        dry_run=False,
        counts={"created": 0},
        rejections=[{"row_key": HOSTILE["nul"], "reason": HOSTILE["lone_surrogate"]}],
        started_at=T0,
    )
    assert store.sync_runs("crm")[0]["rejections"] == [{"row_key": "a\u0000b", "reason": "\ud800"}]
    # Values JSON has no type for are kept as their text, as the store always did.
    store.upsert_objects("charge", [{"id": "ch_1", "created": 1, "when": T0}])
    assert store.load_objects("charge")[0]["when"] == str(T0)


def test_a_database_upgraded_by_a_newer_giftflow_is_refused_not_misread(tmp_path):
    url = f"sqlite:///{tmp_path}/newer.sqlite"
    GiftflowStore(database_url=url).get_state("x")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    from giftflow.adapters.store.db import SchemaTooNewError, migrate

    with pytest.raises(SchemaTooNewError, match="revision 9999, which this giftflow does not know"):
        migrate(sa.create_engine(url))
