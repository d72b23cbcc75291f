"""The whole code location loads: catches wiring errors (resources, partitions, jobs) at once."""

import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from pydantic import ValidationError

import giftflow
from giftflow.orchestration.definitions import build_defs
from giftflow.settings import KNOWN_VARIABLES, Settings, SettingsError, SettingsWarning, describe_errors


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


@pytest.mark.parametrize(
    "name,value,allowed",
    [
        ("GIFTFLOW_SYNC_MODE", "merge", "one of update, upsert"),
        ("GIFTFLOW_DRY_RUN", "maybe", "true, false, 1, 0, yes, no, on, off"),
        ("GIFTFLOW_REFUNDS_ENABLED", "t", "true, false, 1, 0, yes, no, on, off"),  # pydantic's lax bool would take it
        ("GIFTFLOW_SMTP_PORT", "70000", "an integer >= 1 and <= 65535"),
        ("GIFTFLOW_BACKFILL_HOUR_UTC", "24", "an integer >= 0 and <= 23"),
        ("GIFTFLOW_STRIPE_MAX_RPS", "fast", "an integer >= 1"),
        ("GIFTFLOW_WEBHOOK_READ_TIMEOUT_S", "0", "a number > 0"),
    ],
)
def test_a_bad_setting_names_the_variable_its_value_and_what_is_allowed(monkeypatch, name, value, allowed):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        Settings.from_env()
    [problem] = raised.value.problems
    assert problem.startswith(f"{name}={value!r} is not valid; allowed: {allowed}")


def test_every_bad_setting_is_listed_and_secrets_are_masked():
    with pytest.raises(ValidationError) as raised:
        Settings(stripe_api_key=12345, dry_run="maybe", sync_mode="bogus")
    problems = describe_errors(raised.value)
    assert [p.split("=")[0] for p in problems] == ["STRIPE_API_KEY", "GIFTFLOW_SYNC_MODE", "GIFTFLOW_DRY_RUN"]
    assert "12345" not in problems[0] and "secret, not shown" in problems[0]


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("GIFTFLOW_SYNC_MODE", "Upsert")
    monkeypatch.setenv("GIFTFLOW_DRY_RUN", "TRUE")
    monkeypatch.setenv("GIFTFLOW_SMTP_STARTTLS", "off")
    monkeypatch.setenv("GIFTFLOW_TEAM_EMAIL", "")  # empty is unset
    settings = Settings.from_env()
    assert (settings.sync_mode, settings.dry_run, settings.smtp_starttls, settings.team_email) == (
        "upsert",
        True,
        False,
        None,
    )


def test_a_misspelt_variable_warns_with_the_name_meant(monkeypatch):
    monkeypatch.setenv("GIFTFLOW_DRYRUN", "true")
    with pytest.warns(
        SettingsWarning, match="GIFTFLOW_DRYRUN is not a giftflow setting and is ignored: did you mean GIFTFLOW_DRY_RUN"
    ):
        settings = Settings.from_env()
    assert settings.dry_run is False and settings.notices


def test_every_variable_of_the_readme_is_a_setting_with_its_default():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `")]
    named = set(re.findall(r"`((?:GIFTFLOW|CARDIVO|STRIPE)_[A-Z0-9_]+)`", "\n".join(rows)))
    assert named == {n for n in KNOWN_VARIABLES if n != "DAGSTER_HOME"}


def test_sensors_take_their_intervals_from_the_settings(monkeypatch):
    for name, value in {
        "GIFTFLOW_SENSOR_INTERVAL_S": "42",
        "GIFTFLOW_RERUN_DAYS": "3",
        "GIFTFLOW_BACKFILL_HOUR_UTC": "5",
    }.items():
        monkeypatch.setenv(name, value)
    defs = build_defs()
    assert defs.resolve_sensor_def("cardivo_redemptions_sensor").minimum_interval_seconds == 42
    assert defs.resolve_sensor_def("stripe_events_sensor").minimum_interval_seconds == 42
    backfill = defs.resolve_sensor_def("late_data_backfill")
    assert "05:00 UTC" in backfill.description and "3 days" in backfill.description


def test_bad_settings_keep_the_code_location_and_fail_every_asset_naming_them(monkeypatch, tmp_path):
    monkeypatch.setenv("GIFTFLOW_SYNC_MODE", "bogus")
    monkeypatch.setenv("GIFTFLOW_DRY_RUN", "maybe")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    defs = build_defs()
    job = defs.resolve_job_def("giftcard_sync")  # every job and sensor is still there
    defs.resolve_job_def("stripe_workflows")
    for sensor in ("cardivo_redemptions_sensor", "stripe_events_sensor", "late_data_backfill"):
        defs.resolve_sensor_def(sensor)
    for spec in defs.resolve_all_asset_specs():  # the UI shows why on every asset
        assert "GIFTFLOW_SYNC_MODE='bogus'" in spec.description and "GIFTFLOW_DRY_RUN='maybe'" in spec.description
    result = job.execute_in_process(partition_key="2026-11-20", raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures and all(e.step_key in {"cardivo_redemptions", "stripe_customers"} for e in failures)
    error = result.failure_data_for_node(failures[0].step_key).error
    message = error.message
    assert "Failure" in error.cls_name
    assert "GIFTFLOW_SYNC_MODE='bogus' is not valid; allowed: one of update, upsert" in message
    assert "GIFTFLOW_DRY_RUN='maybe' is not valid; allowed: true, false, 1, 0, yes, no, on, off" in message


HOSTILE = {
    "GIFTFLOW_SYNC_MODE": "bogus",
    "GIFTFLOW_DRY_RUN": "maybe",
    "GIFTFLOW_SENSOR_INTERVAL_S": "soon",
    "GIFTFLOW_CARDIVO_LOOKBACK_S": "-1",
    "GIFTFLOW_RERUN_DAYS": "x",
    "GIFTFLOW_BACKFILL_HOUR_UTC": "99",
    "GIFTFLOW_STRIPE_MAX_RPS": "0",
    "GIFTFLOW_WEBHOOK_MAX_BODY_BYTES": "big",
    "GIFTFLOW_DRYRUN": "true",
}


def _hostile_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIFTFLOW_", "DAGSTER_"))}
    return {**env, **HOSTILE, "DAGSTER_HOME": str(tmp_path)}


@pytest.mark.e2e  # Python subprocesses importing giftflow and Dagster: ~12 s
def test_importing_every_module_reads_no_environment(tmp_path):
    """Every module of giftflow imports under settings that are all wrong: nothing is read at import."""
    code = (
        "import importlib, pkgutil, giftflow\n"
        "names = [m.name for m in pkgutil.walk_packages(giftflow.__path__, 'giftflow.')\n"
        # Alembic's env.py and revisions are scripts Alembic runs, not modules to import.
        "         if '.migrations.' not in m.name]\n"
        "for name in names: importlib.import_module(name)\n"
        "assert 'defs' not in vars(giftflow), 'import giftflow built the Definitions'\n"
        "print(len(names))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_hostile_env(tmp_path),
        cwd=Path(__file__).parents[1],
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 30


@pytest.mark.e2e  # `dagster definitions validate` and a Python subprocess: ~40 s
def test_giftflow_defs_and_dagster_validate_load_with_bad_settings(tmp_path):
    """`giftflow.defs` loads and `dagster definitions validate` passes (the code location loads), logging the
    problems; the jobs are there, their assets fail naming each bad variable."""
    env = _hostile_env(tmp_path)
    code = "import giftflow\njob = giftflow.defs.resolve_job_def('giftcard_sync')\nprint(job.name)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1], timeout=120
    )
    assert done.returncode == 0 and "giftcard_sync" in done.stdout, done.stderr
    assert "did you mean GIFTFLOW_DRY_RUN" in done.stderr
    validate = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-m", "giftflow"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[1],
        timeout=180,
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
    logs = validate.stdout + validate.stderr
    for name in ("GIFTFLOW_SYNC_MODE", "GIFTFLOW_DRY_RUN", "GIFTFLOW_SENSOR_INTERVAL_S", "GIFTFLOW_BACKFILL_HOUR_UTC"):
        assert f"{name}=" in logs, logs
