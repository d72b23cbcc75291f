"""Real servers on 127.0.0.1 for the tests: localstripe, a throwaway PostgreSQL, giftflow's simulators; and the
one way a test builds a world, serves it and points giftflow at it.

    def test_x(world, sims, giftflow):        # world: dataset.build_world(11, world_days)
        giftflow.run("giftcard_sync", world_days, instance)             # settings passed in, no environment
        giftflow.but(dry_run=True).run(...)                             # other settings: a new object
        sims.stripe_state.customers()                                   # what Stripe holds now

A module needs other days or another world: it overrides the `world_days` or `world` fixture."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from giftflow.orchestration.definitions import build_defs
from giftflow.settings import Settings
from giftflow_simulators import cardivo, dataset, stripe
from giftflow_simulators.server import BackgroundServer
from giftflow_tests.harness import (
    ROOT,
    free_port,
    pg_bindir,
    throwaway_postgres,
    wait_for,
)

__all__ = ["ROOT", "free_port", "wait_for", "Giftflow", "Simulators", "QUIET"]

CARDIVO_KEY = "ck"
STRIPE_KEY = "sk_test_x"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@pytest.fixture
def world_days() -> list[date]:
    return [date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)]


@pytest.fixture
def world(world_days) -> dataset.World:
    return dataset.build_world(11, world_days)


class Simulators:
    """The Cardivo and Stripe simulators serving `world` (Stripe with its payments, charges and warnings)."""

    def __init__(self, world: dataset.World, *, stripe_rps: float | None = None, stripe_key: str = STRIPE_KEY):
        self.cardivo_state = cardivo.CardivoState.from_world(world)
        self.stripe_state = stripe.StripeState.from_world(world)
        self.stripe_key = stripe_key
        self._servers = [
            BackgroundServer(cardivo.create_app(self.cardivo_state, CARDIVO_KEY)),
            BackgroundServer(stripe.create_app(self.stripe_state, api_key=stripe_key, rate_limit_per_s=stripe_rps)),
        ]

    def __enter__(self) -> Simulators:
        self.cardivo_url, self.stripe_url = (s.start() for s in self._servers)
        return self

    def __exit__(self, *exc) -> None:
        for s in self._servers:
            s.stop()

    def writes(self) -> int:
        return self.stripe_state.stats()["writes"]


@pytest.fixture
def sims(world):
    with Simulators(world) as s:
        yield s


@dataclasses.dataclass(frozen=True)
class Giftflow:
    """giftflow's Definitions built from `settings` given in the test: no environment variable is read or set."""

    settings: Settings

    def but(self, **changes) -> Giftflow:
        return Giftflow(Settings.of(**{**self.settings.model_dump(), **changes}))

    def defs(self) -> dg.Definitions:
        return build_defs(self.settings)

    def job(self, name: str) -> dg.JobDefinition:
        return self.defs().resolve_job_def(name)

    def run(self, job: str, days, instance: dg.DagsterInstance, **kwargs) -> list[dg.ExecuteInProcessResult]:
        """`job` once per day, in order, on `instance`; failures are returned, not raised."""
        job_def = self.job(job)
        kwargs.setdefault("raise_on_error", False)
        return [job_def.execute_in_process(partition_key=d.isoformat(), instance=instance, **kwargs) for d in days]


@pytest.fixture
def giftflow(sims, tmp_path) -> Giftflow:
    """giftflow pointed at `sims`, its database and files under `tmp_path`, every other setting at its default."""
    return Giftflow(
        Settings.of(
            cardivo_api_base=sims.cardivo_url,
            cardivo_api_key=CARDIVO_KEY,
            stripe_api_base=sims.stripe_url,
            stripe_api_key=sims.stripe_key,
            database_url=f"sqlite:///{tmp_path}/giftflow.sqlite",
            dagster_home=tmp_path,
        )
    )


@pytest.fixture
def localstripe():
    """A fresh localstripe (a Stripe fake nobody here wrote) on a free port; yields its base URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("localstripe")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [str(exe), "--port", str(port), "--from-scratch"], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(base + "/v1/customers")
            yield base
        finally:
            proc.terminate()
            proc.wait(10)


HEAVY_MODULES = {"test_production_e2e", "test_live_traffic", "test_chaos", "test_cli", "test_cli_dev"}


def pytest_collection_modifyitems(items):
    """A test that needs the throwaway PostgreSQL cluster (initdb and a server: seconds) is an e2e test, so
    `pytest -m "not e2e"` stays a fast loop; plain `pytest` (CI) runs it like any other."""
    for item in items:
        # A parametrised database fixture asks for the cluster through getfixturevalue: its id says "postgresql".
        if "postgres_url" in getattr(item, "fixturenames", ()) or "[postgresql" in item.name:
            item.add_marker(pytest.mark.e2e)
        # The tests that run whole Dagster stacks (daemon, webserver, runs in subprocesses) take a core or more
        # each: with `-n 2` they share one worker, one after another, while the other worker runs the rest.
        if item.module.__name__.rsplit(".", 1)[-1] in HEAVY_MODULES:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.xdist_group("stack"))


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster for the session. A missing server fails the tests, never skips them."""
    if pg_bindir() is None:
        pytest.fail("PostgreSQL server binaries are missing: apt-get install postgresql (as .ci/run does)")
    with throwaway_postgres() as url:
        yield url
