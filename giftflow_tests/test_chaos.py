"""End to end: bench/chaos.py over 3 seeds (faulty simulators, a worker killed mid-apply, reruns) ends with no
duplicate, no lost update and no failed seed."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_chaos_run_over_three_seeds_has_no_duplicate_no_loss_no_failed_seed():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--seeds", "3", "--first-seed", "101"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    total = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "duplicates 0, lost updates 0, failed seeds 0" in total, done.stdout
    assert " kills 0," not in total, done.stdout  # the workers really were killed
