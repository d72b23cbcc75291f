"""The whole code location loads: catches wiring errors (resources, partitions, jobs) at once."""

import dagster as dg
import pytest

import giftflow
from giftflow.orchestration.definitions import build_defs
from giftflow.settings import Settings


def test_defs_load_and_jobs_resolve():
    defs = giftflow.defs
    assert isinstance(defs, dg.Definitions)
    job = defs.resolve_job_def("giftcard_sync")
    assert job.partitions_def is not None
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"cardivo_redemptions", "stripe_customers", "giftcard_customer_plan", "giftcard_customer_updates"} <= keys


def test_every_asset_has_description_group_and_kinds():
    for spec in giftflow.defs.resolve_all_asset_specs():
        assert spec.description, spec.key
        assert spec.group_name in {"giftcard_sync", "stripe_workflows", "reverse_etl"}, spec.key
        assert spec.kinds, spec.key


@pytest.mark.parametrize("name,value", [("GIFTFLOW_SYNC_MODE", "merge"), ("GIFTFLOW_DRY_RUN", "maybe")])
def test_bad_settings_fail_loudly(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        build_defs()


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("GIFTFLOW_SYNC_MODE", "Upsert")
    monkeypatch.setenv("GIFTFLOW_DRY_RUN", "TRUE")
    settings = Settings.from_env()
    assert (settings.sync_mode, settings.dry_run) == ("upsert", True)
