"""`giftflow dev` as a user runs it: it says where things are, serves the UI, and Ctrl-C leaves nothing running
(webserver, daemon, their code servers, the simulators)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from giftflow_tests.harness import ROOT, free_port, wait_for


def _session_members(sid: int) -> list[str]:
    """Every process of session `sid` (ours started giftflow in a new one), as 'pid command'."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp session ...
            if int(fields[3]) == sid and fields[0] != "Z":
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")[:120]
                members.append(f"{entry.name} {command!r}")
        except (OSError, ValueError, IndexError):
            continue
    return members


def test_dev_serves_the_ui_and_ctrl_c_stops_everything(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIFTFLOW_", "STRIPE_", "CARDIVO_", "DAGSTER_"))}
    env["PYTHONPATH"] = str(ROOT)
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [sys.executable, "-m", "giftflow.cli", "dev", "--port", str(port), "--days", "1", "--dagster-home", str(home)],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pgid = proc.pid
    try:
        wait_for(f"http://127.0.0.1:{port}/server_info", timeout=180)
        os.killpg(pgid, signal.SIGINT)  # what a terminal does on Ctrl-C: the foreground group
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _session_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _session_members(pgid) == [], out + err
    try:
        os.killpg(pgid, 0)
        raise AssertionError(f"process group {pgid} still exists")
    except ProcessLookupError:
        pass
    children = int(out.split("processes          group ")[1].split()[0])
    try:
        os.killpg(children, 0)
        raise AssertionError(f"process group {children} (webserver, daemon) still exists")
    except ProcessLookupError:
        pass
    assert f"DAGSTER_HOME       {home}" in out and str(home / "outbox") in out
    assert "production dagster.yaml is not used in dev" in out
    assert (home / "dagster.yaml").is_file()
    assert "stopped" in out and proc.returncode == 0, out + err
    assert "SupersessionWarning" not in err and "superseded" not in err, err
    assert "No dagster instance configuration file" not in err, err
