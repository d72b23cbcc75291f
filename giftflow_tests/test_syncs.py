"""Reverse-ETL syncs: sync files, validation, diff, the shared writer, reports — over real HTTP."""

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
import stripe

from giftflow.adapters.config_files import load_folder
from giftflow.adapters.store import GiftflowStore
from giftflow.adapters.stripe import StripeClient
from giftflow.domain.sync_plan import current_frame, fields_of, plan_sync, wanted_frame
from giftflow.domain.sync_spec import SyncSpecError, parse_sync
from giftflow.orchestration.resources import StoreResource, StripeResource
from giftflow.orchestration.reverse_etl import build_sync_asset, build_sync_definitions
from giftflow.services.customer_writer import _refused
from giftflow.services.sync_runner import run_sync
from giftflow.settings import Settings
from giftflow_simulators import stripe as sim
from giftflow_simulators.server import BackgroundServer

KEY = "sk_test_sync"
FULL = """
version: 1
name: {name}
source: {{csv: rows.csv}}
mode: {mode}
identifier: {identifier}
primary_key: ref
empty_values: {empty}
mapping:
  id: stripe_id
  email: email
  name: name
  phone: phone
  description: notes
  balance: balance
  tax_id: {{type_column: tax_type, value: tax_value}}
  source: token
  coupon: coupon
  address: {{line1: a_line1, line2: a_line2, city: a_city, state: a_state, postal_code: a_zip, country: a_country}}
  shipping: {{name: s_name, phone: s_phone, line1: s_line1, city: s_city, postal_code: s_zip, country: s_country}}
  metadata: {{columns: {{tier: tier}}, json: extra}}
"""
COLUMNS = [
    "ref",
    "stripe_id",
    "email",
    "name",
    "phone",
    "notes",
    "balance",
    "tax_type",
    "tax_value",
    "token",
    "coupon",
    "a_line1",
    "a_line2",
    "a_city",
    "a_state",
    "a_zip",
    "a_country",
    "s_name",
    "s_phone",
    "s_line1",
    "s_city",
    "s_zip",
    "s_country",
    "tier",
    "extra",
]


def row(ref, **given):
    return {c: "" for c in COLUMNS} | {"ref": ref} | given


ANA = row(
    "r1",
    email="Ana@Example.com",
    name="Ana López",
    phone="+34 612 345 678",
    notes="wholesale",
    balance="-500",
    tax_type="eu_vat",
    tax_value="ESB12345678",
    token="tok_visa",
    coupon="WELCOME10",
    a_line1="Calle Mayor 1",
    a_line2="Piso 2",
    a_city="Madrid",
    a_state="M",
    a_zip="28013",
    a_country="es",
    s_name="Ana López",
    s_phone="+34612345678",
    s_line1="Calle Mayor 1",
    s_city="Madrid",
    s_zip="28013",
    s_country="ES",
    tier="gold",
    extra='{"since": 2019, "vip": true}',
)


class World:
    """A Stripe simulator on loopback, a store, and a folder holding one sync file and its CSV."""

    def __init__(self, tmp_path: Path, rate_limit=None):
        self.state = sim.StripeState()
        self.server = BackgroundServer(sim.create_app(self.state, api_key=KEY, rate_limit_per_s=rate_limit))
        self.tmp = tmp_path
        self.store = GiftflowStore(database_url=f"sqlite:///{tmp_path}/giftflow.sqlite")

    def __enter__(self):
        self.url = self.server.start()
        httpx.post(
            self.url + "/v1/coupons",
            data={"id": "WELCOME10", "percent_off": "10"},
            headers={"Authorization": f"Bearer {KEY}"},
        ).raise_for_status()
        self.state.reset_stats()
        return self

    def __exit__(self, *exc):
        self.server.stop()

    def api(self, retries=3):
        return StripeClient(api_key=KEY, api_base=self.url, max_requests_per_second=200, max_network_retries=retries)

    def write(self, rows, *, name="crm", mode="upsert", identifier="email", empty="leave", text=None):
        folder = self.tmp / "syncs"
        folder.mkdir(exist_ok=True)
        (folder / "sync.yaml").write_text(text or FULL.format(name=name, mode=mode, identifier=identifier, empty=empty))
        pd.DataFrame(rows, columns=COLUMNS).to_csv(folder / "rows.csv", index=False)
        return load_folder(folder)[0]

    def resources(self, retries=3, **settings) -> dict:
        """The Dagster resources a sync asset runs with, on this world's simulator and store."""
        return {
            "stripe_api": StripeResource(
                api_key=KEY, api_base=self.url, max_requests_per_second=200, max_network_retries=retries
            ),
            "store": StoreResource(database_url=self.store.database_url),
            "settings": Settings.of(**settings),
        }

    def materialize(self, spec_base, *, retries=3, dry_run=False, max_age=0):
        asset = build_sync_asset(*spec_base)
        return dg.materialize(
            [asset],
            raise_on_error=False,
            resources=self.resources(retries, dry_run=dry_run, customer_mirror_max_age_s=max_age),
        )

    def writes(self):
        return self.state.stats()["writes"]

    def customers(self):
        return {c["email"]: c for c in self.state.customers()}


@pytest.fixture
def world(tmp_path):
    with World(tmp_path) as w:
        yield w


def metadata_of(result):
    [event] = result.get_asset_materialization_events()
    [mat] = result.asset_materializations_for_node(event.asset_key.to_user_string())  # node named after its asset
    return {k: v.value for k, v in mat.metadata.items()}


# -- sync files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,line,problem",
    [
        (
            "version: 1\nname: x\nsource: {csv: a.csv}\nidentifier: email\nmapping:\n  email: e\n  balanse: b\n",
            7,
            "mapping.balanse: Extra inputs are not permitted (did you mean balance?)",
        ),
        (
            "version: 1\nname: x\nsource: {csv: a.csv, sql: select 1}\nidentifier: email\nmapping: {email: e}\n",
            3,
            "give exactly one of csv, parquet, sql, asset",
        ),
        (
            "version: 1\nname: x\nsource: {csv: a.csv}\nidentifier: id\nmapping:\n  email: e\n",
            1,
            "identifier 'id' needs mapping.id",
        ),
        (
            "version: 1\nname: x\nsource: {csv: a.csv}\nidentifier: email\nmapping:\n  email: e\n  tax_id:\n"
            "    type: xx_vat\n    value: v\n",
            8,
            "not one of Stripe's tax-id types",
        ),
        (
            "version: 1\nname: x\nsource: {csv: a.csv}\nidentifier: email\nmode: merge\nmapping: {email: e}\n",
            5,
            "mode: Input should be 'update' or 'upsert'",
        ),
        (
            "version: 1\nname: x\nsource: {csv: a.csv}\nidentifier: email\nschedule: every day\nmapping: {email: e}\n",
            5,
            "is not a cron expression",
        ),
        (
            "version: 1\nname: x\nsource: {csv: a.csv}\nidentifier: email\nmapping:\n  email: e\n  metadata:\n"
            "    columns: {a_key_that_is_far_too_long_for_stripe_metadata: c}\n",
            8,
            "at most 40 characters",
        ),
        ("version: 1\nname: x\n  source: [\n", None, "not valid YAML"),
    ],
)
def test_bad_sync_files_name_file_line_and_problem(text, line, problem):
    with pytest.raises(SyncSpecError) as err:
        parse_sync(text, "syncs/bad.yaml")
    message = str(err.value)
    assert message.startswith("syncs/bad.yaml"), message
    assert problem in message, message
    if line:
        assert f"syncs/bad.yaml:{line}:" in message, message


def test_shipped_example_loads_and_every_sync_is_an_asset():
    ((spec, base),) = load_folder()
    assert (base / spec.source.csv).exists()
    defs = build_sync_definitions()
    specs = [s for asset in defs.assets for s in asset.specs]
    assert [s.key.to_user_string() for s in specs] == ["sync_crm_customers"]
    assert specs[0].group_name == "reverse_etl" and "stripe" in specs[0].kinds
    assert "| `tax_id.value` | `vat_id` |" in specs[0].description
    assert [(s.name, s.cron_schedule) for s in defs.schedules] == [("sync_crm_customers_schedule", "0 6 * * *")]


# -- every Catalytic field, through the simulator -----------------------------------------------------------
def test_every_field_round_trips_and_the_rerun_writes_nothing(world):
    spec = world.write([ANA])
    result = world.materialize(spec)
    assert result.success
    assert {k: metadata_of(result)[k] for k in ("read", "created", "rejected")} == {"read": 1, "created": 1, "rejected": 0}
    changes = metadata_of(result)["changes"]  # what was written, as a table the UI shows without "Show Markdown"
    assert [c.name for c in changes.schema.columns] == ["row_key", "customer_id", "action", "changed"]
    assert [(r.data["row_key"], r.data["action"]) for r in changes.records] == [("r1", "create")]
    ana = world.customers()["ana@example.com"]
    assert (ana["name"], ana["phone"], ana["description"], ana["balance"]) == (
        "Ana López",
        "+34612345678",
        "wholesale",
        -500,
    )
    assert ana["address"] == {
        "line1": "Calle Mayor 1",
        "line2": "Piso 2",
        "city": "Madrid",
        "state": "M",
        "postal_code": "28013",
        "country": "ES",
    }
    assert ana["shipping"] == {
        "name": "Ana López",
        "phone": "+34612345678",
        "address": {
            "line1": "Calle Mayor 1",
            "line2": None,
            "city": "Madrid",
            "state": None,
            "postal_code": "28013",
            "country": "ES",
        },
    }
    assert ana["metadata"] == {"tier": "gold", "since": "2019", "vip": "true"}
    auth = {"Authorization": f"Bearer {KEY}"}
    tax_ids = httpx.get(f"{world.url}/v1/customers/{ana['id']}/tax_ids", headers=auth).json()["data"]
    assert [(t["type"], t["value"], t["customer"]) for t in tax_ids] == [("eu_vat", "ESB12345678", ana["id"])]
    card = httpx.get(f"{world.url}/v1/customers/{ana['id']}/sources", headers=auth).json()["data"][0]
    assert ana["default_source"] == card["id"] and card["last4"] == "4242"
    # `coupon` is the customer's discount, applied under the last API version that takes a customer's coupon.
    assert ana["discount"]["source"] == {"coupon": "WELCOME10", "type": "coupon"}
    [applied] = [r for r in world.state.request_log if "coupon" in (r["params"] or {})]
    assert (applied["method"], applied["path"], applied["stripe_version"], applied["params"]) == (
        "POST",
        f"/v1/customers/{ana['id']}",
        "2025-02-24.acacia",
        {"coupon": "WELCOME10"},
    )
    assert {r["stripe_version"] for r in world.state.request_log if r is not applied and r["method"] == "POST"} == {
        stripe.api_version
    }  # every other write on the pinned version
    promo = httpx.get(f"{world.url}/v1/promotion_codes", params={"customer": ana["id"]}, headers=auth).json()
    assert promo["data"] == []  # no promotion code unless the mapping asks for one
    assert world.store.sync_ids("crm") == {"r1": ana["id"]}

    before = world.writes()
    again = world.materialize(spec)
    assert again.success and world.writes() == before
    assert metadata_of(again)["unchanged"] == 1


def test_the_simulator_takes_a_customer_coupon_only_under_an_older_stripe_version(world):
    auth = {"Authorization": f"Bearer {KEY}"}
    cid = httpx.post(f"{world.url}/v1/customers", data={"email": "c@example.com"}, headers=auth).json()["id"]
    refused = httpx.post(f"{world.url}/v1/customers/{cid}", data={"coupon": "WELCOME10"}, headers=auth)
    newer = httpx.post(
        f"{world.url}/v1/customers/{cid}",
        data={"coupon": "WELCOME10"},
        headers={**auth, "Stripe-Version": "2025-03-31.basil"},
    )
    assert refused.status_code == newer.status_code == 400
    assert refused.json()["error"]["message"] == "Received unknown parameter: coupon"
    missing = httpx.post(
        f"{world.url}/v1/customers/{cid}", data={"coupon": "NOPE"}, headers={**auth, "Stripe-Version": "2025-02-24.acacia"}
    )
    assert missing.status_code in (400, 404) and "No such coupon" in missing.json()["error"]["message"]
    ok = httpx.post(
        f"{world.url}/v1/customers/{cid}",
        data={"coupon": "WELCOME10"},
        headers={**auth, "Stripe-Version": "2025-02-24.acacia"},
    )
    assert ok.status_code == 200 and ok.json()["discount"]["coupon"]["id"] == "WELCOME10"
    assert world.state.get(cid)["discount"]["source"]["coupon"] == "WELCOME10"


PROMO = """
version: 1
name: promo
source: {csv: rows.csv}
mode: upsert
identifier: email
primary_key: ref
mapping:
  email: email
  promotion_code: {coupon: coupon, code: tax_value, max_redemptions: 1}
"""


def test_the_promotion_code_mapping_creates_one_code_per_customer_and_reports_it(world):
    spec = world.write([row("r1", email="bo@example.com", coupon="WELCOME10", tax_value="BOWELCOME")], text=PROMO)
    result = world.materialize(spec)
    assert result.success
    bo = world.customers()["bo@example.com"]
    assert bo["discount"] is None  # a code to hand out, not a discount
    auth = {"Authorization": f"Bearer {KEY}"}
    [code] = httpx.get(f"{world.url}/v1/promotion_codes", params={"customer": bo["id"]}, headers=auth).json()["data"]
    assert (code["code"], code["max_redemptions"], code["promotion"]["coupon"]) == ("BOWELCOME", 1, "WELCOME10")
    metadata = metadata_of(result)
    [shown] = [r.data for r in metadata["promotion_codes"].records]
    assert shown == {
        "row_key": "r1",
        "customer_id": bo["id"],
        "coupon": "WELCOME10",
        "code": "BOWELCOME",
        "promotion_code": code["id"],
        "max_redemptions": 1,
    }
    assert metadata["promotion_codes_created"] == 1
    before = world.writes()
    again = world.materialize(spec)
    assert again.success and world.writes() == before and metadata_of(again)["unchanged"] == 1


def test_only_changed_fields_are_sent_and_empty_values_follow_the_policy(world):
    spec = world.write([ANA])
    world.materialize(spec)
    changed = dict(ANA, name="Ana L.", tier="", a_city="Sevilla")
    world.write([changed], empty="leave")
    world.state.reset_stats()
    assert world.materialize(spec).success
    ana = world.customers()["ana@example.com"]
    assert ana["name"] == "Ana L." and ana["metadata"]["tier"] == "gold"  # leave: the empty tier is not sent
    assert ana["address"]["city"] == "Sevilla" and ana["address"]["line2"] == "Piso 2"  # the rest kept
    assert world.writes() == 1
    event = world.state.objects("event")[0]
    assert event["type"] == "customer.updated" and set(event["data"]["previous_attributes"]) == {"name", "address"}

    assert world.materialize(world.write([changed], empty="clear")).success
    assert "tier" not in world.customers()["ana@example.com"]["metadata"]


def test_update_by_id_writes_existing_customers_and_rejects_unknown_ids(world):
    known = world.state  # a customer that exists already, updated by id
    auth = {"Authorization": f"Bearer {KEY}"}
    cid = httpx.post(f"{world.url}/v1/customers", data={"email": "zoe@example.com"}, headers=auth).json()["id"]
    spec = world.write(
        [row("z", stripe_id=cid, name="Zoë", tier="new"), row("y", stripe_id="cus_nope", name="Y"), row("x", name="no id")],
        mode="update",
        identifier="id",
    )
    result = world.materialize(spec)
    assert result.success
    md = metadata_of(result)
    assert (md["updated"], md["created"], md["rejected"]) == (1, 0, 2)
    assert known.get(cid)["name"] == "Zoë" and known.get(cid)["metadata"] == {"tier": "new"}
    reasons = {r["row_key"]: r["reason"] for r in world.store.sync_runs("crm")[0]["rejections"]}
    assert reasons == {
        "y": "no Stripe customer with this id (mode update)",
        "x": "no Stripe customer with this id (mode update)",
    }


def test_rejected_rows_carry_their_reasons_and_the_rest_go_on(world):
    rows = [
        row("ok", email="ok@example.com", name="OK"),
        row("mail", email="not-an-email"),
        row("phone", email="p@example.com", phone="0612"),
        row("country", email="c@example.com", a_line1="x", a_country="UK"),
        row("tax", email="t@example.com", tax_type="xx_tax", tax_value="1"),
        row("bal", email="b@example.com", balance="12.50"),
        row("meta", email="m@example.com", tier="x" * 501),
        row("ship", email="s@example.com", s_line1="1 Road"),
        row("vat", email="v@example.com", tax_type="eu_vat", tax_value="DE12"),  # Stripe refuses it
        row("card", email="d@example.com", token="tok_chargeDeclined"),  # Stripe declines it
        row("dup", email="OK@example.com", name="twice"),
    ]
    result = world.materialize(world.write(rows))
    assert result.success
    md = metadata_of(result)
    assert (md["read"], md["created"], md["rejected"], md["failed"]) == (11, 1, 10, 0)
    reasons = {r["row_key"]: r["reason"] for r in world.store.sync_runs("crm")[0]["rejections"]}
    assert reasons["mail"] == "email: not a valid e-mail address"
    assert reasons["phone"].startswith("phone: not an international phone number")
    assert reasons["country"] == "address.country: not an ISO 3166-1 alpha-2 code"
    assert reasons["tax"] == "tax_id: type is not one of Stripe's tax-id types"
    assert reasons["bal"] == "balance: not a whole amount in minor units (cents)"
    assert reasons["meta"] == "metadata.tier: longer than 500 characters"
    assert reasons["ship"] == "shipping: a shipping address needs shipping.name"
    assert reasons["vat"] == "Invalid value for eu_vat."
    assert reasons["card"] == "Your card was declined."
    assert reasons["dup"] == "another row of this sync creates a customer with the same e-mail"
    assert list(world.customers()) == ["ok@example.com"]
    table = md["rejected_rows"]
    assert len(table.records) == 10

    # Rerun: Stripe's refusals are remembered, the same requests are not sent again (counted at the server).
    refused_before = world.state.stats()["by_route"]["POST /v1/customers"]["requests"]
    again = world.materialize(world.write(rows), max_age=3600)
    assert metadata_of(again)["rejected"] == 10 and metadata_of(again)["unchanged"] == 1
    assert world.state.stats()["by_route"]["POST /v1/customers"]["requests"] == refused_before
    reasons = {r["row_key"]: r["reason"] for r in world.store.sync_runs("crm")[0]["rejections"]}
    assert reasons["vat"].startswith("Invalid value for eu_vat. (Stripe's answer to this same request before")
    # After a day the refusal is forgotten (its cause may have been outside the request): sent once more.
    with world.store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE stripe_ledger SET updated_at = '2020-01-01 00:00:00' WHERE status = 'refused'")
    world.materialize(world.write(rows), max_age=3600)
    assert world.state.stats()["by_route"]["POST /v1/customers"]["requests"] == refused_before + 2
    # A corrected row is a new request: it goes out.
    fixed = [r if r["ref"] != "vat" else {**r, "tax_value": "DE123456789"} for r in rows]
    assert metadata_of(world.materialize(world.write(fixed), max_age=3600))["created"] == 1


def test_upsert_by_email_creates_once_across_reruns_and_a_crash(world):
    spec = world.write([ANA, row("r2", email="bob@example.com", name="Bob")])
    assert world.materialize(spec).success
    assert world.materialize(spec).success
    assert sorted(world.customers()) == ["ana@example.com", "bob@example.com"]
    # The crash: the creates reached Stripe, the ledger still says planned, mirror and written-back ids lost.
    ledger = world.store.ledger_frame()
    creates = ledger[ledger["kind"] == "create_customer"]
    for key in creates["op_key"]:
        world.store.record_result(key, status="planned")
    world.store.replace_customers([])
    world.store.delete_sync_ids("crm")
    # Meanwhile Bob's row changed: the customer found must end up with the new values in the same run.
    spec = world.write([ANA, row("r2", email="bob@example.com", name="Bob B.", tier="silver")])
    result = world.materialize(spec, max_age=3600)  # keep the stale (empty) mirror: the worst case
    assert result.success
    customers = world.customers()
    assert sorted(customers) == ["ana@example.com", "bob@example.com"]
    assert metadata_of(result)["recovered"] == 2
    assert (customers["bob@example.com"]["name"], customers["bob@example.com"]["metadata"]["tier"]) == ("Bob B.", "silver")
    assert world.store.sync_ids("crm").keys() == {"r1", "r2"}
    writes = world.writes()
    assert metadata_of(world.materialize(spec)).get("updated", 0) == 0 and world.writes() == writes


def test_create_by_row_id_survives_a_crash_by_replaying_its_idempotency_key(world):
    spec = world.write([row("n1", name="No e-mail")], identifier="id")
    assert world.materialize(spec).success
    [made] = world.state.customers()
    ledger = world.store.ledger_frame()
    world.store.record_result(ledger["op_key"].iloc[0], status="planned")
    world.store.replace_customers([])
    world.store.delete_sync_ids("crm")
    assert world.materialize(spec, max_age=3600).success
    assert [c["id"] for c in world.state.customers()] == [made["id"]]
    assert world.store.sync_ids("crm") == {"n1": made["id"]}


def test_a_partial_stripe_failure_fails_the_step_and_the_retry_makes_no_duplicates(world):
    spec = world.write([row(f"r{i}", email=f"p{i}@example.com", name=f"P{i}") for i in range(6)])
    world.state.lose_next_responses(2)  # applied at Stripe, but the answer never arrives
    failed = world.materialize(spec, retries=0)
    assert not failed.success
    report = world.store.sync_runs("crm")[0]
    assert report["status"] == "failed" and report["counts"]["failed"] == 2 and report["counts"]["created"] == 4
    retry = world.materialize(spec, retries=0)
    assert retry.success
    assert len(world.state.customers()) == 6  # the two whose answers were lost are found, not created again
    assert (metadata_of(retry)["unchanged"], metadata_of(retry)["created"]) == (6, 0)


def test_a_lost_update_is_resent_with_its_key_and_stripe_replays_it(world):
    spec = world.write([row(f"r{i}", email=f"p{i}@example.com", name=f"P{i}") for i in range(3)])
    assert world.materialize(spec).success
    world.write([row(f"r{i}", email=f"p{i}@example.com", name=f"Q{i}") for i in range(3)])
    world.state.lose_next_responses(1)
    assert not world.materialize(spec, retries=0).success
    writes = world.writes()
    assert world.materialize(spec, retries=0, max_age=3600).success  # the mirror still says P: resend
    assert world.writes() == writes and world.state.stats()["replays"] == 1  # same key: Stripe's saved answer
    assert sorted(c["name"] for c in world.state.customers()) == ["Q0", "Q1", "Q2"]


def test_dry_run_writes_nothing(world):
    result = world.materialize(world.write([ANA]), dry_run=True)
    assert result.success and world.writes() == 0
    assert metadata_of(result)["would_create"] == 1


def test_upstream_asset_and_store_sql_sources(world):
    @dg.asset
    def crm_export() -> pd.DataFrame:
        return pd.DataFrame([{"ref": "u1", "email": "up@example.com", "name": "Up"}])

    text = (
        "version: 1\nname: {n}\nsource: {src}\nmode: upsert\nidentifier: email\nprimary_key: ref\n"
        "mapping: {{email: email, name: name}}\n"
    )
    folder = world.tmp / "up"
    folder.mkdir()
    (folder / "a.yaml").write_text(text.format(n="from_asset", src="{asset: crm_export}"))
    (folder / "b.yaml").write_text(
        text.format(n="from_store", src="{sql: \"select 's1' as ref, 'sql@example.com' as email, 'Sql' as name\"}")
    )
    defs = build_sync_definitions(folder)
    assets = [crm_export, *defs.assets]
    result = dg.materialize(assets, resources=world.resources())
    assert result.success
    assert {c["email"]: c["name"] for c in world.state.customers()} == {"up@example.com": "Up", "sql@example.com": "Sql"}


def test_a_daily_partitioned_sync_with_a_schedule_loads_and_runs_the_last_whole_day(tmp_path):
    (tmp_path / "d.yaml").write_text(
        "version: 1\nname: daily_crm\nsource: {csv: 'x/{partition}.csv'}\nmode: update\nidentifier: email\n"
        "primary_key: ref\nschedule: '0 6 * * *'\npartitions: daily\nmapping: {email: email, name: name}\n"
    )
    defs = build_sync_definitions(tmp_path)
    assert not [a for a in defs.assets if "does not load" in (a.descriptions_by_key.get(a.key) or "")]
    schedule = next(s for s in defs.schedules if s.name == "sync_daily_crm_schedule")
    tick = datetime(2026, 3, 10, 6, 0, tzinfo=timezone.utc)
    request = schedule(dg.build_schedule_context(scheduled_execution_time=tick))
    assert request.partition_key == "2026-03-09"


@pytest.mark.e2e  # the `giftflow` command as subprocesses: ~3 s
def test_syncs_report_command_prints_the_stored_report(world):
    rows = [ANA, row("bad", email="nope")]
    result = world.materialize(world.write(rows))
    exe = Path(sys.executable).with_name("giftflow")
    done = subprocess.run(
        [str(exe), "syncs", "report", "crm", "--database-url", world.store.database_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"run {result.run_id}" in done.stdout
    lines = done.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.split()[:2] == ["read", "created"]))
    assert lines[header + 1].split()[:6] == ["2", "1", "0", "0", "1", "0"]
    assert "bad" in done.stdout and "email: not a valid e-mail address" in done.stdout
    missing = subprocess.run(
        [str(exe), "syncs", "report", "crm", "--run", "nope", "--database-url", world.store.database_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "no report" in missing.stderr


# -- localstripe, where it supports the field --------------------------------------------------------------
def test_supported_fields_round_trip_through_localstripe(localstripe, tmp_path):
    api = StripeClient(api_key="sk_test_12345", api_base=localstripe, max_requests_per_second=50)
    store = GiftflowStore(database_url=f"sqlite:///{tmp_path}/s.sqlite")
    spec = parse_sync("""
version: 1
name: ls
source: {csv: unused.csv}
mode: upsert
identifier: email
primary_key: ref
mapping:
  email: email
  name: name
  phone: phone
  description: notes
  tax_id: {type: eu_vat, value: vat}
  address: {line1: street, city: city, postal_code: zip, country: country}
  metadata: {columns: {tier: tier}}
""")
    frame = pd.DataFrame(
        [
            {
                "ref": "1",
                "email": "Ana@Example.com",
                "name": "Ana",
                "phone": "+34612345678",
                "notes": "wholesale",
                "vat": "DE123456789",
                "street": "1 Road",
                "city": "Berlin",
                "zip": "10115",
                "country": "de",
                "tier": "gold",
            }
        ]
    )
    first = run_sync(spec, frame, api, store, dry_run=False, run_id="r1")
    assert first.counts["created"] == 1 and first.ok
    [ana] = [c for page, _ in api.iter_customer_objects(with_tax_ids=True) for c in page]
    assert (ana["email"], ana["name"], ana["phone"], ana["description"]) == (
        "ana@example.com",
        "Ana",
        "+34612345678",
        "wholesale",
    )
    assert ana["address"]["city"] == "Berlin" and ana["address"]["country"] == "DE"
    assert ana["metadata"] == {"tier": "gold"}
    assert [(t["type"], t["value"]) for t in ana["tax_ids"]["data"]] == [("eu_vat", "DE123456789")]
    again = run_sync(spec, frame.assign(name="Ana B."), api, store, dry_run=False, run_id="r2")
    assert (again.counts["updated"], again.counts["created"]) == (1, 0)
    assert api.retrieve("customers", ana["id"])["name"] == "Ana B."


# -- sources ---------------------------------------------------------------------------------------------
SOURCE_SYNC = """
version: 1
name: shop
source: {source}
mode: upsert
identifier: email
primary_key: ref
{extra}
mapping:
  email: email
  name: name
  balance: balance
  address: {{postal_code: zip, country: country}}
  metadata: {{columns: {{ref: ref}}}}
"""


def _write_sync(folder: Path, source: str, extra: str = ""):
    folder.mkdir(exist_ok=True)
    (folder / "shop.yaml").write_text(SOURCE_SYNC.format(source=source, extra=extra))
    return load_folder(folder)[0]


def test_a_parquet_source_keeps_its_types_and_leading_zeros(world):
    folder = world.tmp / "syncs"
    folder.mkdir()
    pd.DataFrame(
        {
            "ref": ["p1", "p2", "p3"],
            "email": ["a@x.com", "b@x.com", None],
            "name": ["A", None, "C"],
            "balance": [-250, 0, 7],
            "zip": ["01234", "99999", "00001"],
            "country": ["fr", "DE", "US"],
        }
    ).to_parquet(folder / "shop.parquet")
    result = world.materialize(_write_sync(folder, "{parquet: shop.parquet}"))
    assert result.success
    assert (metadata_of(result)["created"], metadata_of(result)["rejected"]) == (2, 1)  # p3 has no e-mail
    made = world.customers()
    assert (
        made["a@x.com"]["balance"],
        made["a@x.com"]["address"]["postal_code"],
        made["a@x.com"]["address"]["country"],
    ) == (-250, "01234", "FR")
    assert made["b@x.com"]["name"] is None and made["b@x.com"]["metadata"] == {"ref": "p2"}
    assert world.materialize(_write_sync(folder, "{parquet: shop.parquet}")).success
    assert world.writes() == 2  # the rerun reads the same typed values and finds nothing to change


def test_a_daily_partitioned_csv_source_syncs_each_day_from_its_own_file(world):
    folder = world.tmp / "syncs"
    folder.mkdir()
    for day, refs in (("2026-11-20", ["d1", "d2"]), ("2026-11-21", ["d3"])):
        pd.DataFrame(
            {"ref": refs, "email": [f"{r}@x.com" for r in refs], "name": refs, "balance": "", "zip": "", "country": ""}
        ).to_csv(folder / f"shop_{day}.csv", index=False)
    spec = _write_sync(folder, "{csv: 'shop_{partition}.csv'}", "partitions: daily")
    asset = build_sync_asset(*spec)
    assert asset.partitions_def is not None
    resources = world.resources()
    assert dg.materialize([asset], partition_key="2026-11-21", resources=resources).success
    assert set(world.customers()) == {"d3@x.com"}
    assert dg.materialize([asset], partition_key="2026-11-20", resources=resources).success
    assert set(world.customers()) == {"d1@x.com", "d2@x.com", "d3@x.com"}
    reports = {r["partition"]: r["counts"]["created"] for r in world.store.sync_runs("shop")}
    assert reports == {"2026-11-20": 2, "2026-11-21": 1}
    missing = dg.materialize([asset], partition_key="2026-11-22", resources=resources, raise_on_error=False)
    assert not missing.success  # no file for the day: the run fails, it does not sync nothing quietly


def test_a_daily_partitioned_sql_source_gets_the_partition_window(world):
    with world.store.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE signups (ref TEXT, email TEXT, name TEXT, balance INTEGER, zip TEXT, "
            "country TEXT, signed_up_at TEXT)"
        )
        conn.exec_driver_sql(
            "INSERT INTO signups VALUES ('s1', 's1@x.com', 'S1', 100, NULL, NULL, "
            "'2026-11-20 23:59:59'), ('s2', 's2@x.com', 'S2', NULL, NULL, NULL, "
            "'2026-11-21 00:00:00')"
        )
    # The bounds are UTC-aware datetimes; SQLite keeps times as text, so the query normalises them.
    query = (
        "{sql: 'select * from signups where signed_up_at >= datetime(:partition_start) "
        "and signed_up_at < datetime(:partition_end)'}"
    )
    spec = _write_sync(world.tmp / "syncs", query, "partitions: daily")
    asset = build_sync_asset(*spec)
    resources = world.resources()
    assert dg.materialize([asset], partition_key="2026-11-20", resources=resources).success
    assert {e: c["balance"] for e, c in world.customers().items()} == {"s1@x.com": 100}
    assert dg.materialize([asset], partition_key="2026-11-21", resources=resources).success
    assert set(world.customers()) == {"s1@x.com", "s2@x.com"}


def test_key_problems_fail_the_run_and_row_problems_are_rejections():
    def error(cls, status, *args):
        return cls(*args, http_status=status)

    assert _refused(error(stripe.InvalidRequestError, 400, "Invalid value for eu_vat.", "tax_id_data"))
    assert _refused(error(stripe.CardError, 402, "Your card was declined.", None, "card_declined"))
    assert not _refused(error(stripe.AuthenticationError, 401, "Invalid API Key provided"))
    assert not _refused(error(stripe.PermissionError, 403, "The provided key does not have the required permissions"))
    assert not _refused(error(stripe.RateLimitError, 429, "Too many requests"))


def test_a_sync_matching_by_email_never_clears_the_email_of_a_row_named_by_id():
    spec = parse_sync(
        "version: 1\nname: x\nsource: {csv: a.csv}\nidentifier: email\nprimary_key: id\n"
        "empty_values: clear\nmapping: {id: id, email: email, name: name}\n"
    )
    wanted, invalid = wanted_frame(pd.DataFrame({"id": ["cus_1"], "email": [""], "name": [""]}), spec)
    current = current_frame([{"id": "cus_1", "email": "a@x.com", "name": "A", "created": 1}], fields_of(wanted))
    plan = plan_sync(spec, wanted, invalid, current)
    assert (plan["action"][0], plan["changed"][0]) == ("update", "name")  # the name is cleared, the e-mail kept


def test_the_gift_card_sync_name_is_reserved(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "version: 1\nname: giftcard\nsource: {csv: a.csv}\nidentifier: email\nmapping: {email: e}\n"
    )
    with pytest.raises(SyncSpecError, match="is the gift-card sync's"):
        load_folder(tmp_path)


def test_a_partitioned_upstream_asset_is_synced_partition_by_partition(world):
    from giftflow.orchestration.partitions import daily

    @dg.asset(partitions_def=daily)
    def signups(context: dg.AssetExecutionContext) -> pd.DataFrame:
        day = context.partition_key
        return pd.DataFrame(
            [
                {
                    "ref": f"{day}-{i}",
                    "email": f"{day}.{i}@example.com",
                    "name": day,
                    "balance": "",
                    "zip": "",
                    "country": "",
                }
                for i in range(2)
            ]
        )

    folder = world.tmp / "syncs"
    spec = _write_sync(folder, "{asset: signups}", "partitions: daily")
    asset = build_sync_asset(*spec)
    assert asset.partitions_def == daily
    resources = world.resources()
    assert dg.materialize([signups, asset], partition_key="2026-11-21", resources=resources).success
    assert sorted(world.customers()) == ["2026-11-21.0@example.com", "2026-11-21.1@example.com"]
    [report] = world.store.sync_runs("shop")
    assert (report["partition"], report["counts"]["created"]) == ("2026-11-21", 2)


# -- what a sync file may read -------------------------------------------------------------------------------
SECRET = "sk_live_do_not_leak_4242"


def failure_text(result) -> str:
    """Everything Dagster shows about the failed step: message, description, cause and stack."""
    [step] = result.get_failed_step_keys()
    return result.failure_data_for_node(step).error.to_string()


@pytest.mark.parametrize("where", ["/proc/self/environ", "../outside.csv", "link.csv"])
def test_a_file_source_outside_the_sync_folder_is_refused_at_load(tmp_path, where):
    (tmp_path / "outside.csv").write_text(f"email,{SECRET}\na@x.com,{SECRET}\n")
    folder = tmp_path / "syncs"
    folder.mkdir()
    (folder / "link.csv").symlink_to(tmp_path / "outside.csv")  # inside by name, outside once resolved
    with pytest.raises(SyncSpecError) as err:
        _write_sync(folder, f"{{csv: '{where}'}}")
    message = str(err.value)
    assert f"{folder / 'shop.yaml'}:4: csv '{where}': a source file must be inside the sync file's folder" in message
    assert SECRET not in message


def test_a_link_made_after_load_is_refused_and_errors_never_quote_the_file(world):
    folder = world.tmp / "syncs"
    folder.mkdir()
    (folder / "shop.csv").write_text("email,name\na@x.com,A\n")
    spec = _write_sync(folder, "{csv: shop.csv}")
    (world.tmp / "secret.csv").write_text(f"email,name\n{SECRET},{SECRET}\n")
    (folder / "shop.csv").unlink()
    (folder / "shop.csv").symlink_to(world.tmp / "secret.csv")
    text = failure_text(world.materialize(spec))
    assert f"{folder / 'shop.yaml'}:4: csv 'shop.csv': a source file must be inside" in text and SECRET not in text

    # A file that is not the expected table: the missing columns and the file are named, its header is not.
    (folder / "shop.csv").unlink()
    (folder / "shop.csv").write_text(f"email,{SECRET}\n{SECRET}@x.com,{SECRET}\n")
    text = failure_text(world.materialize(spec))
    assert f"{folder / 'shop.yaml'}:4: csv 'shop.csv' has no column(s) balance, country, name, ref, zip" in text
    assert SECRET not in text and world.writes() == 0

    (folder / "shop.csv").unlink()  # a missing file: named with the sync file and line
    assert f"{folder / 'shop.yaml'}:4: csv file shop.csv: no such file" in failure_text(world.materialize(spec))


@pytest.mark.parametrize(
    "sql,problem",
    [
        ("DELETE FROM stripe_ledger; COMMIT; SELECT 1 AS email", "one SELECT statement only, found 3 statements"),
        ("SELECT 1 AS email; DELETE FROM stripe_ledger", "one SELECT statement only, found 2 statements"),
        ("CREATE ROLE evil SUPERUSER LOGIN PASSWORD 'x'", "only a SELECT may run here, not CREATE"),
        ("DELETE FROM stripe_ledger", "only a SELECT may run here, not DELETE"),
    ],
)
def test_a_sql_source_is_one_select_statement(tmp_path, sql, problem):
    with pytest.raises(SyncSpecError) as err:
        _write_sync(tmp_path / "syncs", f'{{sql: "{sql}"}}')
    assert f"shop.yaml:4: source.sql: {problem}" in str(err.value)


def test_a_trailing_semicolon_and_a_quoted_one_are_still_one_statement(tmp_path):
    ((spec, _),) = [_write_sync(tmp_path / "syncs", "{sql: \"select ';' as email; -- the end\"}")]
    assert spec.source.sql.startswith("select")


def _ledger_row(store: GiftflowStore) -> None:
    store.record_planned("survivor", "refund", "ch_1", {}, None, None)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def test_sql_sources_read_through_a_read_only_connection(world, request, backend, monkeypatch):
    from giftflow.adapters.sync_sources import read_only_engine
    from giftflow_tests.harness import create_database

    store = world.store
    if backend == "postgresql":
        store = GiftflowStore(
            database_url=create_database(
                request.getfixturevalue("postgres_url"), f"ro_{world.tmp.name.lower().replace('-', '_')}"[:60]
            )
        )
    _ledger_row(store)
    engine = read_only_engine(store.engine.url)
    for statement in ("DELETE FROM stripe_ledger", "CREATE TABLE evil (x int)", "DROP TABLE stripe_ledger"):
        with pytest.raises(sa.exc.DBAPIError, match="read-only|readonly"):
            with engine.begin() as conn:
                conn.exec_driver_sql(statement)
    if backend == "postgresql":
        with pytest.raises(sa.exc.DBAPIError, match="read-only"):
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE ROLE evil SUPERUSER")
    engine.dispose()

    # One SELECT that still writes (PostgreSQL runs a DELETE inside a WITH): the database refuses it. The URL
    # comes from an environment variable, so no password is in the sync file.
    monkeypatch.setenv("CRM_DATABASE_URL", store.engine.url.render_as_string(hide_password=False))
    sneaky = (
        "WITH gone AS (DELETE FROM stripe_ledger RETURNING op_key) SELECT op_key AS ref, "
        "'a@x.com' AS email, 'A' AS name, 1 AS balance, '' AS zip, '' AS country FROM gone"
        if backend == "postgresql"
        else "SELECT op_key AS ref, 'a@x.com' AS email, 'A' AS name, 1 AS balance, '' AS zip, '' AS country "
        "FROM stripe_ledger"
    )
    result = world.materialize(_write_sync(world.tmp / "syncs", f'{{sql: "{sneaky}", url: {{env: CRM_DATABASE_URL}}}}'))
    if backend == "postgresql":
        assert "shop.yaml:4: sql: the database refused the query" in failure_text(result)
        assert "read-only transaction" in failure_text(result)
    else:
        assert result.success and metadata_of(result)["created"] == 1  # reading the store is fine
    assert list(store.ledger_entries(["survivor"])) == ["survivor"]

    monkeypatch.delenv("CRM_DATABASE_URL")
    text = failure_text(
        world.materialize(_write_sync(world.tmp / "syncs", '{sql: "select 1", url: {env: CRM_DATABASE_URL}}'))
    )
    assert "shop.yaml:4: url: the environment variable CRM_DATABASE_URL is not set" in text


def test_one_bad_sync_file_does_not_stop_the_code_location(tmp_path):
    from giftflow.orchestration.definitions import build_defs
    from giftflow.settings import Settings

    folder = tmp_path / "syncs"
    _write_sync(folder, "{csv: shop.csv}")
    (folder / "leaky.yaml").write_text(
        SOURCE_SYNC.format(source="{csv: /proc/self/environ}", extra="").replace("name: shop", "name: leaky")
    )
    (folder / "broken yaml.yaml").write_text("version: 1\nname: [\n")
    defs = build_defs(Settings.of(syncs_dir=folder, dagster_home=tmp_path))
    assert defs.resolve_job_def("giftcard_sync") and defs.resolve_job_def("stripe_workflows")
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    assert {"sync_shop", "sync_leaky", "sync_broken_yaml", "giftcard_customer_updates", "workflow_actions"} <= set(specs)
    assert f"{folder / 'leaky.yaml'}:4: csv '/proc/self/environ'" in specs["sync_leaky"].description
    bad = defs.resolve_assets_def("sync_leaky")
    result = dg.materialize([bad], raise_on_error=False)
    assert not result.success
    assert f"{folder / 'leaky.yaml'}:4: csv '/proc/self/environ': a source file must be inside" in failure_text(result)
    assert "not valid YAML" in specs["sync_broken_yaml"].description
