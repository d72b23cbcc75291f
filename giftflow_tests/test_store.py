"""The store on real SQLite and a real PostgreSQL, and the repo's dagster.yaml on that PostgreSQL."""

import shutil
from datetime import datetime, timezone
from urllib.parse import urlparse

import pytest
import sqlalchemy as sa

from giftflow.adapters.store import GiftflowStore
from giftflow.domain.redemptions import validate_redemptions
from giftflow_tests.conftest import ROOT
from giftflow_tests.factories import redemption


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield GiftflowStore(database_url=f"sqlite:///{tmp_path}/store.sqlite")
        return
    url = request.getfixturevalue("postgres_url")
    name = f"t_{tmp_path.name.lower().replace('-', '_')}"[:60]
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    yield GiftflowStore(database_url=url.rsplit("/", 1)[0] + "/" + name)


def test_pruning_webhook_deliveries_deletes_only_the_old_ones_in_batches(store):
    for i in range(7):
        store.record_webhook_event("stripe" if i % 2 else "cardivo", f"evt_{i}", "x.y", {"n": i})
    with store.engine.begin() as conn:  # five of them received in 2020
        conn.execute(
            sa.text(
                "UPDATE webhook_events SET received_at = :t WHERE event_id IN ('evt_0', 'evt_1', 'evt_2', 'evt_3', 'evt_4')"
            ),
            {"t": datetime(2020, 1, 1, tzinfo=timezone.utc)},
        )
    assert store.repos.webhook_events.prune(datetime(2021, 1, 1, tzinfo=timezone.utc), batch=2) == 5
    epoch = datetime(2000, 1, 1, tzinfo=timezone.utc)
    left = store.webhook_events_since("cardivo", epoch) + store.webhook_events_since("stripe", epoch)
    assert sorted(e["event_id"] for e in left) == ["evt_5", "evt_6"]


def test_redemptions_upsert_by_id_and_keep_only_last4(store):
    record = redemption(email="Ana@X.com")
    frame, _ = validate_redemptions([record])
    store.upsert_redemptions(frame)
    record.update(status="voided", updated_at="2026-11-21T00:00:00Z")
    store.upsert_redemptions(validate_redemptions([record])[0])
    start = datetime(2026, 11, 20, tzinfo=timezone.utc)
    loaded = store.load_redemptions(start=start, end=start.replace(day=21))
    assert list(loaded["status"]) == ["voided"] and len(loaded) == 1
    assert loaded.loc[0, "redeemed_at"] == datetime(2026, 11, 20, 14, 3, 11, tzinfo=timezone.utc)
    with store.engine.connect() as conn:
        dumped = str(conn.execute(sa.text("SELECT * FROM redemptions")).all())
    assert record["gift_card"]["code"] not in dumped and record["gift_card"]["code"][-4:] in dumped
    assert len(store.load_redemptions(emails=["ana@x.com"])) == 1
    assert store.load_redemptions(emails=["other@x.com"]).empty


def test_an_older_copy_of_a_redemption_never_replaces_a_newer_one(store):
    """Two runs of one day fetch it at different moments and may store in either order."""
    record = redemption(email="ana@x.com")
    voided = {**record, "status": "voided", "updated_at": "2026-11-21T00:00:00Z"}
    store.upsert_redemptions(validate_redemptions([voided])[0])
    store.upsert_redemptions(validate_redemptions([record])[0])  # the slower run's older copy lands last
    start = datetime(2026, 11, 20, tzinfo=timezone.utc)
    assert list(store.load_redemptions(start=start, end=start.replace(day=21))["status"]) == ["voided"]


def test_a_listing_begun_before_a_write_keeps_the_written_copy(store):
    from datetime import timedelta

    listed_from = datetime.now(timezone.utc) - timedelta(seconds=5)
    store.upsert_customers([{"id": "cus_1", "email": "a@x.com", "created": 1, "metadata": {"total": "2"}}])
    store.replace_customers(
        [
            {"id": "cus_1", "email": "a@x.com", "created": 1, "metadata": {"total": "1"}},
            {"id": "cus_2", "email": "b@x.com", "created": 2, "metadata": {}},
        ],
        listed_from=listed_from,
    )
    mirror = {c["id"]: c["metadata"] for c in store.load_customers()}
    assert mirror == {"cus_1": {"total": "2"}, "cus_2": {}}
    # An event older than the mirrored copy does not take it back either.
    store.upsert_customers(
        [{"id": "cus_1", "email": "a@x.com", "created": 1, "metadata": {"total": "1"}}], as_of=listed_from
    )
    assert {c["id"]: c["metadata"] for c in store.load_customers()}["cus_1"] == {"total": "2"}


def test_customer_mirror_replace_drops_deleted(store):
    store.replace_customers(
        [
            {"id": "cus_1", "email": "a@x.com", "created": 1, "metadata": {"k": "v"}},
            {"id": "cus_2", "email": "b@x.com", "created": 2, "metadata": {}},
        ]
    )
    store.replace_customers([{"id": "cus_2", "email": "b@x.com", "created": 2, "metadata": {"n": "1"}}])
    assert store.load_customers() == [
        {"id": "cus_2", "email": "b@x.com", "created": 2, "metadata": {"n": "1"}, "_tax_ids": [], "_coupons": []}
    ]
    assert store.customers_refreshed_at() is not None
    assert store.count_customers() == 1
    assert [c["id"] for c in store.load_customers(ids=["cus_2", "cus_1", "cus_nope"])] == ["cus_2"]


def test_one_batch_may_carry_the_same_customer_twice(store):
    # A sensor tick sees customer.created and customer.updated of one customer together.
    store.upsert_customers(
        [
            {"id": "cus_1", "email": "a@x.com", "created": 1, "metadata": {}},
            {"id": "cus_1", "email": "a@x.com", "created": 1, "metadata": {"v": "2"}},
        ]
    )
    assert store.load_customers()[0]["metadata"] == {"v": "2"}


def test_ledger_lifecycle(store):
    store.record_planned("k1", "update_customer", "cus_1", {"metadata": {"a": "1"}}, "2026-11-20", "run-1")
    store.record_result("k1", status="failed", error="boom")
    store.record_planned("k1", "update_customer", "cus_1", {"metadata": {"a": "1"}}, "2026-11-20", "run-2")
    store.record_result("k1", status="sent", request_id="req_1", object_id="cus_1")
    entry = store.ledger_entries(["k1", "nope"])
    assert list(entry) == ["k1"]
    assert (entry["k1"]["status"], entry["k1"]["attempts"], entry["k1"]["run_id"]) == ("sent", 2, "run-2")
    assert entry["k1"]["stripe_request_id"] == "req_1" and entry["k1"]["error"] is None
    assert entry["k1"]["params"] == '{"metadata": {"a": "1"}}'  # JSON text: a create is replayed from it


def test_quarantine_is_deduplicated_and_redacted(store):
    bad = [{"record_key": "rdm_x", "reason": "amount: bad", "payload": {"gift_card": {"code": "…1234"}}}]
    store.quarantine("cardivo", bad, "2026-11-20", "r1")
    store.quarantine("cardivo", bad, "2026-11-20", "r2")
    q = store.quarantined()
    assert len(q) == 1 and q.loc[0, "run_id"] == "r2" and q.loc[0, "reason"] == "amount: bad"


def test_state_roundtrip(store):
    assert store.get_state("cursor") is None
    store.set_state("cursor", "a")
    store.set_state("cursor", "b")
    assert store.get_state("cursor") == "b"


def test_repo_dagster_yaml_runs_on_postgres(postgres_url, tmp_path, monkeypatch):
    """The production instance file loads and stores runs and events in PostgreSQL."""
    import dagster as dg

    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    parsed = urlparse(postgres_url)
    for name, value in {
        "HOST": parsed.hostname,
        "PORT": str(parsed.port),
        "USER": "postgres",
        "PASSWORD": "",
        "DB": "postgres",
    }.items():
        monkeypatch.setenv(f"DAGSTER_POSTGRES_{name}", value)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))

    @dg.asset
    def probe() -> int:
        return 1

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = dg.materialize([probe], instance=instance)
        assert result.success
        assert instance.get_latest_materialization_event(dg.AssetKey("probe")) is not None
        assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"


def test_many_runs_opening_a_new_postgres_database_at_once(postgres_url):
    """A backfill's first runs all create giftflow's tables at the same moment (seen: catalog collisions)."""
    from concurrent.futures import ThreadPoolExecutor

    from giftflow.adapters.store import _create_tables

    url = postgres_url.rsplit("/", 1)[0] + "/" + "concurrent_create"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text('CREATE DATABASE "concurrent_create"'))
    admin.dispose()
    engines = [sa.create_engine(url) for _ in range(8)]  # one engine each, as separate processes would have
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(_create_tables, engines))
    with engines[0].connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM redemptions")).scalar() == 0


def test_a_batch_of_write_records_stores_what_the_calls_one_by_one_store(store):
    """The customer writer's group commit: several writes' ledger entries and answers in one transaction."""
    from giftflow.adapters.store import MirroredCustomers, PlannedWrite, WriteOutcome

    store.record_planned("retried", "update_customer", "cus_1", {"metadata": {"a": "1"}}, None, "run-1")
    store.record_result("retried", status="failed", error="boom")
    store.upsert_customers([{"id": "cus_9", "email": "z@x.com", "created": 1, "metadata": {}, "_tax_ids": ["eu_vat:1"]}])
    store.record_writes(
        [
            PlannedWrite("retried", "update_customer", "cus_1", {"metadata": {"a": "1"}}, None, "run-2"),
            PlannedWrite("new", "create_customer", "r1", {"email": "n@x.com"}, "2026-11-20", "run-2"),
            WriteOutcome("older", "sent", request_id="req_0", object_id="cus_0"),  # not in the ledger: nothing to update
            MirroredCustomers([{"id": "cus_1", "email": "a@x.com", "created": 1, "metadata": {"a": "1"}}]),
            MirroredCustomers(
                [{"id": "cus_9", "email": "z@x.com", "created": 1, "metadata": {"b": "2"}}], add_coupons=("c1:CODE",)
            ),
            MirroredCustomers([{"id": "cus_1", "email": "a@x.com", "created": 1, "metadata": {"a": "2"}}]),  # later answer
        ]
    )
    entries = store.ledger_entries(["retried", "new", "older"])
    assert set(entries) == {"retried", "new"}
    assert (
        entries["retried"]["status"],
        entries["retried"]["attempts"],
        entries["retried"]["error"],
        entries["retried"]["run_id"],
    ) == ("planned", 2, None, "run-2")
    assert (entries["new"]["status"], entries["new"]["attempts"], entries["new"]["partition"]) == (
        "planned",
        1,
        "2026-11-20",
    )
    store.record_writes(
        [
            WriteOutcome("retried", "sent", request_id="req_1", object_id="cus_1"),
            WriteOutcome("new", "refused", error="Invalid email"),
        ]
    )
    entries = store.ledger_entries(["retried", "new"])
    assert (entries["retried"]["status"], entries["retried"]["stripe_request_id"]) == ("sent", "req_1")
    assert (entries["new"]["status"], entries["new"]["error"]) == ("refused", "Invalid email")
    customers = {c["id"]: c for c in store.load_customers()}
    assert customers["cus_1"]["metadata"] == {"a": "2"}
    assert customers["cus_9"]["metadata"] == {"b": "2"}
    assert (customers["cus_9"]["_tax_ids"], customers["cus_9"]["_coupons"]) == (["eu_vat:1"], ["c1:CODE"])
