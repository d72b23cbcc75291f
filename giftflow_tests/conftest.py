"""Real servers on 127.0.0.1 for the tests: localstripe, a throwaway PostgreSQL, giftflow's simulators."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from giftflow_tests.harness import (
    ROOT,
    free_port,
    pg_bindir,
    throwaway_postgres,
    wait_for,
)

__all__ = ["ROOT", "free_port", "wait_for"]


@pytest.fixture
def localstripe():
    """A fresh localstripe (a Stripe fake nobody here wrote) on a free port; yields its base URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("localstripe")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([str(exe), "--port", str(port), "--from-scratch"], cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
        # The tests that run whole Dagster stacks (daemon, webserver, runs in subprocesses) take a core or more
        # each: with `-n 2` they share one worker, one after another, while the other worker runs the rest.
        if item.module.__name__.rsplit(".", 1)[-1] in HEAVY_MODULES:
            item.add_marker(pytest.mark.xdist_group("stack"))


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster for the session. A missing server fails the tests, never skips them."""
    if pg_bindir() is None:
        pytest.fail("PostgreSQL server binaries are missing: apt-get install postgresql (as .ci/run does)")
    with throwaway_postgres() as url:
        yield url
