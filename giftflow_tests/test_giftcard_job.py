"""The whole giftcard_sync job through Dagster against the simulators over HTTP.

Expected Stripe state comes from an independent, loop-by-loop reading of the contract (`expected_metadata`),
not from giftflow's own reconcile code.
"""

from datetime import date, datetime, timezone

import dagster as dg
import httpx
import pytest

from giftflow.adapters.store import GiftflowStore
from giftflow.orchestration.definitions import resources_for

DAYS = [date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20), date(2026, 11, 21)]
KEYS = (
    "giftcard_redeemed_total",
    "giftcard_currency",
    "giftcard_redemptions",
    "giftcard_last_redeemed_at",
    "giftcard_last4",
)


@pytest.fixture
def world_days():
    return DAYS


def expected_metadata(redemptions, customers):
    """The contract, read plainly: customer id -> wanted gift-card metadata (None = key absent)."""
    by_id = {c["id"]: c for c in customers}
    by_email = {}
    for c in sorted(customers, key=lambda c: (c["created"], c["id"])):
        if c.get("email"):
            by_email[c["email"].strip().lower()] = c["id"]  # newest wins
    mine = {}
    for r in redemptions:
        cid = r["stripe_customer_id"] if r["stripe_customer_id"] in by_id else None
        email = ((r.get("customer") or {}).get("email") or "").strip().lower()
        cid = cid or by_email.get(email)
        if cid:
            mine.setdefault(cid, []).append(r)
    out = {}
    for cid, rs in mine.items():
        done = [r for r in rs if r["status"] == "completed"]
        if len({r["currency"] for r in done}) > 1:
            out[cid] = "multi_currency"
            continue
        if not done:
            out[cid] = {
                "giftcard_redeemed_total": "0",
                "giftcard_redemptions": "0",
                "giftcard_currency": None,
                "giftcard_last_redeemed_at": None,
                "giftcard_last4": None,
            }
            continue
        last = max(done, key=lambda r: (r["redeemed_at"], r["id"]))
        out[cid] = {
            "giftcard_redeemed_total": str(sum(r["amount"] for r in done)),
            "giftcard_redemptions": str(len(done)),
            "giftcard_currency": done[0]["currency"],
            "giftcard_last_redeemed_at": last["redeemed_at"],
            "giftcard_last4": last["gift_card"]["code"][-4:],
        }
    return out


def stripe_metadata(sims):
    return {c["id"]: {k: c["metadata"].get(k) for k in KEYS} for c in sims.stripe_state.customers()}


@pytest.mark.e2e  # many in-process runs: ~7 s
def test_partitions_out_of_order_reach_the_contract_state_and_rerun_writes_nothing(sims, world, giftflow):
    instance = dg.DagsterInstance.ephemeral()
    results = giftflow.run("giftcard_sync", [DAYS[2], DAYS[0], DAYS[3], DAYS[1]], instance)
    assert all(r.success for r in results)
    assert sims.writes() > 0
    known = {c["id"] for c in world.customers}
    anonymous = [
        r
        for r in world.redemptions
        if not ((r["customer"] or {}).get("email") or "").strip() and r["stripe_customer_id"] not in known
    ]
    reported = sum(
        r.asset_materializations_for_node("giftcard_customer_plan")[0].metadata["left_out_anonymous"].value for r in results
    )
    assert anonymous and reported == len(anonymous)  # left out, but reported with their reason

    expected = expected_metadata(world.redemptions, world.customers)
    actual = stripe_metadata(sims)
    assert any(v == "multi_currency" for v in expected.values())
    for cid, want in expected.items():
        if want == "multi_currency":
            assert actual[cid] == {k: None for k in KEYS}, cid  # reported, never written
        else:
            assert actual[cid] == want, cid
    untouched = set(actual) - set(expected)
    assert untouched and all(actual[c] == {k: None for k in KEYS} for c in untouched)

    before = sims.writes()
    assert all(r.success for r in giftflow.run("giftcard_sync", DAYS, instance))
    assert sims.writes() == before  # counted at the server


@pytest.mark.e2e  # several in-process runs: ~6 s
def test_a_late_void_changes_an_old_day(sims, world, giftflow):
    instance = dg.DagsterInstance.ephemeral()
    giftflow.run("giftcard_sync", DAYS, instance)
    victim = next(
        r
        for r in world.redemptions
        if r["status"] == "completed"
        and r["stripe_customer_id"] is None
        and r["customer"]
        and r["customer"]["email"]
        and expected_metadata(world.redemptions, world.customers).get(_customer_of(r, world)) not in (None, "multi_currency")
    )
    cid = _customer_of(victim, world)
    sims.cardivo_state.void(victim["id"], datetime(2026, 11, 24, tzinfo=timezone.utc))
    day = date.fromisoformat(victim["redeemed_at"][:10])
    assert giftflow.run("giftcard_sync", [day], instance)[0].success
    voided = [r if r["id"] != victim["id"] else {**r, "status": "voided"} for r in world.redemptions]
    assert stripe_metadata(sims)[cid] == expected_metadata(voided, world.customers)[cid]


def _customer_of(redemption, world):
    email = redemption["customer"]["email"].strip().lower()
    matches = sorted(
        (c for c in world.customers if (c.get("email") or "").strip().lower() == email),
        key=lambda c: (c["created"], c["id"]),
    )
    return matches[-1]["id"] if matches else None


def test_dry_run_plans_everything_and_writes_nothing(sims, giftflow):
    results = giftflow.but(dry_run=True).run("giftcard_sync", DAYS[:2], dg.DagsterInstance.ephemeral())
    assert all(r.success for r in results)
    assert sims.writes() == 0
    mat = results[0].asset_materializations_for_node("giftcard_customer_updates")[0]
    assert mat.metadata["would_update"].value > 0 and mat.metadata["dry_run"].value is True
    # What would be written shows as a table in the UI, the rows to write first, the counts beside it.
    planned = results[0].asset_materializations_for_node("giftcard_customer_plan")[0].metadata
    table = planned["plan"]
    assert isinstance(table, dg.TableMetadataValue) and table.records
    assert {c.name: c.type for c in table.schema.columns}["redemptions"] == "int"
    actions = [rec.data["action"] for rec in table.records]
    writes = sum(a in ("create", "update") for a in actions)
    assert writes and set(actions[:writes]) <= {"create", "update"}
    assert planned["customers"].value >= len(actions)
    left_out = [rec.data for rec in planned["left_out"].records]  # every skipped customer, with the reason
    assert len(left_out) == planned["action_skip"].value > 0 and all(r["reason"] for r in left_out)


def test_a_dry_run_is_chosen_per_run_by_tag_for_the_gift_card_sync_and_the_sync_files(sims, giftflow):
    """GIFTFLOW_DRY_RUN is off; the launchpad's tag giftflow/dry_run=true makes this one run a dry run."""
    defs, instance = giftflow.defs(), dg.DagsterInstance.ephemeral()
    tags = {"giftflow/dry_run": "true"}
    result = defs.resolve_job_def("giftcard_sync").execute_in_process(
        partition_key=DAYS[0].isoformat(), instance=instance, tags=tags
    )
    sync = defs.resolve_job_def("sync_crm_customers_job").execute_in_process(instance=instance, tags=tags)
    assert sims.writes() == 0
    mat = result.asset_materializations_for_node("giftcard_customer_updates")[0]
    assert mat.metadata["would_update"].value > 0 and mat.metadata["dry_run"].value is True
    assert sync.asset_materializations_for_node("sync_crm_customers")[0].metadata["dry_run"].value is True
    # run config on the settings resource says the same; without either the run writes
    configured = defs.resolve_job_def("giftcard_sync").execute_in_process(
        partition_key=DAYS[0].isoformat(),
        instance=instance,
        run_config={"resources": {"settings": {"config": {"dry_run": True}}}},
    )
    assert configured.success and sims.writes() == 0
    defs.resolve_job_def("giftcard_sync").execute_in_process(partition_key=DAYS[0].isoformat(), instance=instance)
    assert sims.writes() > 0


def test_a_bad_dry_run_tag_fails_the_run_naming_it(sims, giftflow):
    job = giftflow.job("giftcard_sync")
    with pytest.raises(dg.DagsterResourceFunctionError) as raised:  # the settings resource refuses the tag
        job.execute_in_process(
            partition_key=DAYS[0].isoformat(), instance=dg.DagsterInstance.ephemeral(), tags={"giftflow/dry_run": "maybe"}
        )
    assert sims.writes() == 0
    failure = raised.value.__cause__
    assert isinstance(failure, dg.Failure), failure
    assert "giftflow/dry_run='maybe' is not valid; allowed: true, false" in (failure.description or "")


@pytest.mark.e2e  # many in-process runs: ~8 s
def test_upsert_creates_each_missing_customer_once_across_reruns(sims, world, giftflow):
    instance, upsert = dg.DagsterInstance.ephemeral(), giftflow.but(sync_mode="upsert")
    upsert.run("giftcard_sync", DAYS, instance)
    created = [c for c in sims.stripe_state.customers() if c["id"] not in {w["id"] for w in world.customers}]
    assert created
    emails = [c["email"] for c in created]
    assert len(emails) == len(set(emails))
    before = sims.writes()
    upsert.run("giftcard_sync", list(reversed(DAYS)), instance)
    assert sims.writes() == before
    assert len(sims.stripe_state.customers()) == len(world.customers) + len(created)


def test_crash_between_create_and_ledger_does_not_create_twice(sims, world, giftflow):
    """A create that reached Stripe but never got recorded as sent is found, not repeated."""
    instance, upsert = dg.DagsterInstance.ephemeral(), giftflow.but(sync_mode="upsert")
    upsert.run("giftcard_sync", DAYS[:1], instance)
    store = GiftflowStore(database_url=giftflow.settings.store_url)
    ledger = store.ledger_frame()
    creates = ledger[ledger["kind"] == "create_customer"]
    assert len(creates)
    # Simulate the crash: the create happened at Stripe, the ledger still says planned, the mirror never saw it.
    for key in creates["op_key"]:
        store.record_result(key, status="planned")
    store.delete_customers(list(creates["stripe_object_id"]))
    customers_before = len(sims.stripe_state.customers())
    stale_mirror = upsert.but(customer_mirror_max_age_s=3600)  # keep the stale mirror: the worst case
    assert stale_mirror.job("giftcard_sync").execute_in_process(partition_key=DAYS[0].isoformat(), instance=instance).success
    assert len(sims.stripe_state.customers()) == customers_before


def test_a_customer_stripe_refuses_is_rejected_and_the_others_are_written(sims, world, giftflow):
    instance = dg.DagsterInstance.ephemeral()
    expected = expected_metadata(world.redemptions, world.customers)
    victim, partition = next(
        (c["id"], d.isoformat())
        for d in DAYS
        for c in world.customers
        if isinstance(expected.get(c["id"]), dict) and _touches(world, c["id"], d)
    )
    # Stripe refuses writes to one customer: delete it at Stripe after the mirror was taken.
    job = giftflow.job("giftcard_sync")
    first = job.execute_in_process(
        partition_key=partition,
        instance=instance,
        op_selection=["cardivo_redemptions", "stripe_customers", "giftcard_customer_plan"],
    )
    assert first.success
    deleted = httpx.delete(f"{sims.stripe_url}/v1/customers/{victim}", headers={"Authorization": "Bearer sk_test_x"})
    assert deleted.json()["deleted"] is True
    before = sims.writes()
    applied = job.execute_in_process(partition_key=partition, instance=instance, op_selection=["giftcard_customer_updates"])
    md = applied.asset_materializations_for_node("giftcard_customer_updates")[0].metadata
    [rejected] = [r.data for r in md["rejected_rows"].records]  # a table in the UI
    assert md["rejected"].value == 1 and rejected["customer_id"] == victim and "No such customer" in rejected["reason"]
    assert md["updated"].value == sims.writes() - before > 0  # the other customers' writes went out
    [report] = GiftflowStore(database_url=giftflow.settings.store_url).sync_runs("giftcard")
    assert report["partition"] == partition and report["counts"]["rejected"] == 1


def test_failed_writes_fail_the_step_and_a_retry_sends_only_those(sims, giftflow):
    instance = dg.DagsterInstance.ephemeral()
    partition = DAYS[0].isoformat()
    job = giftflow.job("giftcard_sync")
    sims.stripe_state.lose_next_responses(2)  # applied at Stripe, but the answers never arrive
    no_retries = {
        "resources": {
            "stripe_api": {"config": {"max_network_retries": 0, "api_key": "sk_test_x", "api_base": sims.stripe_url}}
        }
    }
    failing = job.execute_in_process(partition_key=partition, instance=instance, raise_on_error=False, run_config=no_retries)
    assert not failing.success
    failure = [e for e in failing.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "2 Stripe write(s) failed" in failure.step_failure_data.error.message
    sent = sims.writes()
    assert sent > 2  # the other customers' writes went out too
    again = job.execute_in_process(partition_key=partition, instance=instance, op_selection=["giftcard_customer_updates"])
    assert again.success
    assert sims.writes() == sent  # the two lost answers are replayed by Stripe, not written again
    assert sims.stripe_state.stats()["replays"] == 2


def _touches(world, cid, day):
    email = next(c["email"] for c in world.customers if c["id"] == cid).strip().lower()
    return any(
        r["redeemed_at"].startswith(day.isoformat())
        and r["customer"]
        and (r["customer"].get("email") or "").strip().lower() == email
        for r in world.redemptions
    )


@pytest.mark.e2e  # two days through dg.materialize: ~5 s
def test_a_customer_written_then_multi_currency_is_listed_by_the_warning_check(sims, world, giftflow):
    """Written on one day, multi-currency after the next: the plan skips the customer while Stripe still shows
    the first day's total, and the non-blocking check warns with the customer and the values Stripe holds."""
    from giftflow.orchestration import giftcard
    from giftflow.orchestration.giftcard_checks import no_stale_giftcard_values

    assets = [
        giftcard.cardivo_redemptions,
        giftcard.stripe_customers,
        giftcard.giftcard_customer_plan,
        giftcard.giftcard_customer_updates,
        no_stale_giftcard_values,
    ]
    instance = dg.DagsterInstance.ephemeral()

    def materialize(day):
        return dg.materialize(
            assets,
            partition_key=day.isoformat(),
            instance=instance,
            raise_on_error=False,
            resources=resources_for(giftflow.settings, secrets_from_env=False),
        )

    def check_of(result):
        [evaluation] = result.get_asset_check_evaluations()
        return evaluation

    day = DAYS[0]
    expected = expected_metadata(
        [r for r in world.redemptions if r["redeemed_at"].startswith(day.isoformat())], world.customers
    )
    cid = next(c for c, want in sorted(expected.items()) if want != "multi_currency" and want["giftcard_currency"])
    first = materialize(day)
    assert first.success and check_of(first).passed
    held = stripe_metadata(sims)[cid]
    assert held == expected[cid]

    # The next day the same customer redeems a card in another currency.
    mine = next(
        r
        for r in world.redemptions
        if r["status"] == "completed"
        and r["redeemed_at"].startswith(day.isoformat())
        and (r["stripe_customer_id"] == cid or (r["customer"] or {}).get("email") and _customer_of(r, world) == cid)
    )
    other = "usd" if held["giftcard_currency"] != "usd" else "eur"
    later = day.replace(day=day.day + 1).isoformat() + "T12:00:00Z"
    sims.cardivo_state.add(
        {
            **mine,
            "id": "rdm_other_currency",
            "currency": other,
            "amount": 700,
            "gift_card": {**mine["gift_card"], "id": "gc_other", "code": "CRDV-OTHR-CURR-0042", "currency": other},
            "redeemed_at": later,
            "updated_at": later,
        }
    )
    second = materialize(DAYS[1])
    assert second.success  # a warning, not a failure: the run goes on
    evaluation = check_of(second)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    rows = [r.data for r in evaluation.metadata["stale_customers"].records]
    assert evaluation.metadata["stale"].value == len(rows) >= 1
    [row] = [r for r in rows if r["customer_id"] == cid]
    assert row["reason"] == "multi_currency" and row["redeemed_total"] == held["giftcard_redeemed_total"]
    # Short column names keep the id and e-mail readable; "Show schema" names each Stripe metadata key.
    columns = {c.name: c.description for c in evaluation.metadata["stale_customers"].schema.columns}
    assert list(columns)[:4] == ["customer_id", "email", "reason", "note"]
    assert "giftcard_redeemed_total" in columns["redeemed_total"] and "giftcard_last4" in columns["last4"]
    assert DAYS[1].isoformat() in evaluation.description  # the UI shows no partition for a check's evaluation
    assert stripe_metadata(sims)[cid] == held  # not written: still the first day's values


RANGE_TAGS = {
    "dagster/asset_partition_range_start": DAYS[0].isoformat(),
    "dagster/asset_partition_range_end": DAYS[-1].isoformat(),
}


@pytest.mark.e2e  # two in-process runs: ~6 s
def test_a_range_is_one_run_one_cardivo_fetch_one_write_per_customer_and_every_day_materialized(sims, world, giftflow):
    """What a single-run backfill does: the range's run reads Cardivo once (one paged fetch), plans the range as
    one and writes each customer once with its final values, and Dagster records every day as materialized."""
    instance = dg.DagsterInstance.ephemeral()
    job = giftflow.job("giftcard_sync")
    result = job.execute_in_process(instance=instance, tags=RANGE_TAGS, raise_on_error=False)
    assert result.success
    fetches = sims.cardivo_state.stats()["requests"]
    assert (
        sum(fetches.values()) == result.asset_materializations_for_node("cardivo_redemptions")[0].metadata["api_calls"].value
    )
    expected = expected_metadata(world.redemptions, world.customers)
    actual = stripe_metadata(sims)
    for cid, want in expected.items():
        assert actual[cid] == ({k: None for k in KEYS} if want == "multi_currency" else want), cid
    changed = sum(1 for want in expected.values() if want != "multi_currency")
    assert sims.writes() == changed  # each customer once, with its final values
    for asset in ("cardivo_redemptions", "stripe_customers", "giftcard_customer_plan", "giftcard_customer_updates"):
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == {d.isoformat() for d in DAYS}, asset
    # A day of the range run again on its own: nothing left to write.
    before = sims.writes()
    assert all(r.success for r in giftflow.run("giftcard_sync", [DAYS[1]], instance)) and sims.writes() == before


def _mirror_step(result) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node("stripe_customers")[0].metadata.items()}


def test_a_daily_run_without_the_events_sensor_looks_up_only_what_the_mirror_lacks(sims, world, giftflow):
    """The first run lists every customer; the next day's run, with the mirror younger than a day, lists no
    customers but asks Stripe only for the day's e-mails the mirror lacks (a customer created since is found)."""
    instance = dg.DagsterInstance.ephemeral()
    [first] = giftflow.run("giftcard_sync", [DAYS[0]], instance)
    assert first.success and _mirror_step(first)["refresh"] == "relist"
    day = [r for r in world.redemptions if r["redeemed_at"].startswith(DAYS[1].isoformat())]
    walk_in = next(
        r
        for r in day
        if r["customer"]
        and r["customer"]["email"]
        and _customer_of(r, world) is None
        and r["stripe_customer_id"] is None
        and r["status"] == "completed"
    )
    sims.stripe_state.load(
        [
            {
                "id": "cus_joined_today",
                "email": walk_in["customer"]["email"].strip(),
                "created": int(datetime(2026, 11, 19, tzinfo=timezone.utc).timestamp()),
            }
        ]
    )
    sims.stripe_state.reset_stats()
    [second] = giftflow.run("giftcard_sync", [DAYS[1]], instance)
    assert second.success
    step = _mirror_step(second)
    lists = sims.stripe_state.requests_to("GET /v1/customers")
    assert step["refresh"] == "lookup" and lists and all("email" in r["params"] for r in lists)
    assert step["api_calls"] == len(lists) + len(sims.stripe_state.requests_to("GET /v1/customers/{id}"))
    assert step["found"] >= 1
    assert sims.stripe_state.get("cus_joined_today")["metadata"].get("giftcard_redemptions")
