"""The usual mistakes fail the step with a `dg.Failure` that names what to fix, not an exception and a traceback:
a key the API refuses, a key nobody set, and the plan asked for a day whose redemptions were never fetched."""

import os
from datetime import date

import dagster as dg
import pytest

from giftflow.cli import DEMO_CARDIVO_KEY, DEMO_STRIPE_KEY, simulators
from giftflow.orchestration.definitions import build_defs

DAY = date(2026, 11, 20)
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@pytest.fixture
def env(monkeypatch, tmp_path):
    for name in (
        "GIFTFLOW_DRY_RUN",
        "GIFTFLOW_SYNC_MODE",
        "GIFTFLOW_RULES",
        "GIFTFLOW_SYNCS_DIR",
        "GIFTFLOW_SMTP_HOST",
        "GIFTFLOW_STRIPE_RATE_DB",
        "GIFTFLOW_DATABASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    with simulators([DAY], 7) as values:
        for k, v in {**values, "DAGSTER_HOME": str(tmp_path)}.items():
            monkeypatch.setenv(k, v)
        yield monkeypatch


def _failures(selection: list[str] | None = None) -> dict[str, dg.Failure]:
    """Run the day (the job, or only `selection`) and return each failed step's error."""
    defs = build_defs()
    with dg.DagsterInstance.ephemeral() as instance:
        if selection:
            job = defs.resolve_implicit_global_asset_job_def()
            result = job.execute_in_process(
                partition_key=DAY.isoformat(),
                instance=instance,
                raise_on_error=False,
                asset_selection=[dg.AssetKey(a) for a in selection],
                run_config=QUIET,
            )
        else:
            result = defs.resolve_job_def("giftcard_sync").execute_in_process(
                partition_key=DAY.isoformat(), instance=instance, raise_on_error=False, run_config=QUIET
            )
    assert not result.success
    return {e.step_key: e.event_specific_data.error for e in result.all_events if e.is_step_failure}


def _is_failure(error) -> bool:
    """The step raised dg.Failure (its description is the message), not some other exception."""
    return error.cls_name == "Failure" and not error.cause


def test_a_refused_stripe_key_names_the_variable_masked_and_the_base_url(env):
    env.setenv("STRIPE_API_KEY", "sk_test_wrongkey_2e2e")
    failed = _failures()
    error = failed["stripe_customers"]
    base = os.environ["STRIPE_API_BASE"]
    assert _is_failure(error), error.to_string()
    assert f"STRIPE_API_KEY (sk_test_…2e2e) was refused by {base}" in error.message
    assert "wrongkey" not in error.to_string()  # the key itself never shows
    assert len(error.message.strip().splitlines()) <= 3


def test_a_refused_cardivo_key_names_cardivo_api_key(env):
    env.setenv("CARDIVO_API_KEY", "not-the-demo-key-abcd")
    error = _failures()["cardivo_redemptions"]
    assert _is_failure(error), error.to_string()
    assert "CARDIVO_API_KEY (…abcd) was refused by" in error.message and "401" in error.message
    assert "not-the-demo" not in error.to_string()


def test_a_missing_key_names_the_variable_and_where_it_is_documented(env):
    env.delenv("STRIPE_API_KEY")
    failed = _failures()
    assert "cardivo_redemptions" not in failed  # the steps that do not need it still run
    error = failed["stripe_customers"]
    assert _is_failure(error)
    assert "STRIPE_API_KEY is not set" in error.message and "README.md, Configuration" in error.message


def test_the_plan_of_a_day_never_fetched_fails_saying_so(env):
    error = _failures(["giftcard_customer_plan"])["giftcard_customer_plan"]
    assert _is_failure(error)
    assert f"cardivo_redemptions has not been materialized for {DAY.isoformat()}" in error.message


def test_the_demo_keys_still_work(env):
    # The same fixture with the right keys: the checks above fail for the reason they name, not the setup.
    assert DEMO_CARDIVO_KEY and DEMO_STRIPE_KEY
    defs = build_defs()
    with dg.DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("giftcard_sync").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False, run_config=QUIET
        )
    assert result.success
