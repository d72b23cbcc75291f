"""Real servers on 127.0.0.1 for the tests: localstripe, a throwaway PostgreSQL, giftflow's simulators."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


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


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster for the session. With CI=true a missing server fails, never skips."""
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL server binaries are missing (.ci/run should have installed them)")
        pytest.skip("PostgreSQL server binaries not installed")
    tmp = tempfile.mkdtemp(prefix="giftflow-pg-")
    as_user = [] if os.geteuid() != 0 else ["runuser", "-u", "nobody", "--"]
    if os.geteuid() == 0:
        shutil.chown(tmp, "nobody")
    port = free_port()
    data = f"{tmp}/data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", data, "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", data, "-l", f"{tmp}/log", "-w", "-o",
                    f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
