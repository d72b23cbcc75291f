"""`giftflow demo` as a user runs it: a subprocess with nothing but the installed package."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from giftflow_tests.harness import ROOT


@pytest.mark.e2e  # the installed `giftflow demo` as a subprocess: ~10 s
def test_demo_runs_and_the_rerun_writes_nothing(tmp_path):
    exe = Path(sys.executable).with_name("giftflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIFTFLOW_", "STRIPE_", "CARDIVO_", "DAGSTER_"))}
    env["TMPDIR"] = str(tmp_path)
    env["PYTHONPATH"] = str(ROOT)  # this checkout, whichever one the console script was installed from
    done = subprocess.run(
        [str(exe), "demo", "--days", "2"], capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "First run: giftcard_sync per day" in out
    first, second = out.split("Second run")
    assert int(first.split("Stripe writes in total:")[1].split()[0]) > 0
    assert "Stripe writes in total: 0" in second
    assert "OK: the rerun made 0 Stripe writes and sent 0 mails" in out
    workflows = first.split("Stripe Workflows (")[1]
    assert "refund_small_fraud_warnings" in workflows and "personalise_large_orders" in workflows
    assert int(workflows.split("outbox: ")[1].split()[0]) > 0  # mails went to the outbox as .eml files
    assert "sk_test" not in out + done.stderr  # the demo's key never shows
    synced = first.split("Reverse ETL: sync crm_customers")[1]
    assert "no report" not in synced and int(synced.split("Stripe writes:")[1].split()[0]) > 0
    assert "FAILED" not in out
    # The mails stay where the demo says, and the demo says where each went.
    outbox = Path(out.split("The demo's mails are kept in ")[1].split()[0])
    assert outbox.is_dir() and any(outbox.glob("*.eml"))
    assert "  to team@example.com: " in workflows and ".eml)" in workflows


def test_help_lists_every_command_with_a_summary():
    exe = Path(sys.executable).with_name("giftflow")
    done = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0
    for command in ("check", "demo", "dev", "simulate", "webhooks", "syncs"):
        assert f"\n    {command} " in done.stdout, done.stdout


def test_syncs_report_says_which_database_it_read(tmp_path):
    exe = Path(sys.executable).with_name("giftflow")
    url = f"sqlite:///{tmp_path}/empty.sqlite"
    done = subprocess.run(
        [str(exe), "syncs", "report", "nothing_here", "--database-url", url],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 1 and f"in {url} (--database-url)" in done.stderr, done.stderr


def test_unknown_command_is_a_usage_error():
    exe = Path(sys.executable).with_name("giftflow")
    done = subprocess.run([str(exe), "frobnicate"], capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice" in done.stderr
