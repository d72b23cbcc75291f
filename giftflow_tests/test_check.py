"""`giftflow check` against the simulators: a good setup is all ok (exit 0); each usual mistake is a `problem`
line naming the variable or file:line (exit 1)."""

import os
from datetime import date
from pathlib import Path

import pytest

from giftflow.adapters.config_files import DEFAULT_RULES
from giftflow.cli import main, simulators

DAY = date(2026, 11, 20)


@pytest.fixture
def env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("GIFTFLOW_", "DAGSTER_POSTGRES_")):
            monkeypatch.delenv(name)
    with simulators([DAY], 7) as values:
        for k, v in {**values, "DAGSTER_HOME": str(tmp_path / "home"), "GIFTFLOW_TEAM_EMAIL": "team@example.com"}.items():
            monkeypatch.setenv(k, v)
        yield monkeypatch


def _check(capsys) -> tuple[int, dict[str, list[str]]]:
    code = main(["check"])
    lines: dict[str, list[str]] = {}
    for line in capsys.readouterr().out.splitlines():
        if line and not line.startswith(("all checks", " ")) and "problem(s)" not in line:
            status, rest = line.split(None, 1)
            lines.setdefault(status, []).append(rest)
    return code, lines


def test_a_good_setup_is_all_ok(env, capsys):
    code, lines = _check(capsys)
    assert code == 0, lines
    assert set(lines) <= {"ok", "skip"}, lines
    items = " ".join(lines["ok"])
    for item in ("settings", "rules", "sync files", "cardivo", "stripe", "giftflow database", "mail"):
        assert item in items
    assert any(x.startswith("dagster database") for x in lines["skip"])  # DAGSTER_POSTGRES_* unset


def test_a_broken_setup_names_each_problem_and_exits_1(env, capsys, tmp_path):
    rules = tmp_path / "rules.yaml"
    text = DEFAULT_RULES.read_text()
    rules.write_text(text.replace("amount_gt", "amont_gt", 1))
    line = text[: text.index("amount_gt")].count("\n") + 1
    env.setenv("GIFTFLOW_RULES", str(rules))
    env.setenv("STRIPE_API_KEY", "sk_test_wrongkey_2e2e")
    env.setenv("CARDIVO_API_KEY", "not-the-demo-key-abcd")
    env.setenv("GIFTFLOW_SYNC_MODE", "bogus")
    code, lines = _check(capsys)
    assert code == 1
    problems = "\n".join(lines["problem"])
    base = os.environ["STRIPE_API_BASE"]
    assert f"STRIPE_API_KEY (sk_test_…2e2e) was refused by {base}" in problems
    assert "CARDIVO_API_KEY (…abcd) was refused by" in problems and "401" in problems
    assert f"{rules}:{line}:" in problems and "amont_gt" in problems and "did you mean amount_gt?" in problems
    assert "GIFTFLOW_SYNC_MODE='bogus' is not valid" in problems
    assert "wrongkey" not in problems and "not-the-demo" not in problems
    assert any(x.startswith("giftflow database") for x in lines["ok"])  # the rest is still checked


def test_unset_keys_and_an_unreachable_dagster_database(env, capsys, tmp_path):
    env.delenv("STRIPE_API_KEY")
    env.setenv("DAGSTER_POSTGRES_HOST", "127.0.0.1")
    env.setenv("DAGSTER_POSTGRES_PORT", "1")  # nothing listens there
    code, lines = _check(capsys)
    problems = "\n".join(lines["problem"])
    assert code == 1
    assert "STRIPE_API_KEY is not set" in problems and "README.md, Configuration" in problems
    assert "DAGSTER_POSTGRES_USER, DAGSTER_POSTGRES_PASSWORD, DAGSTER_POSTGRES_DB not set" in problems


def test_a_broken_sync_file_is_a_problem_with_its_line(env, capsys, tmp_path):
    folder = tmp_path / "syncs"
    folder.mkdir()
    (folder / "shop.yaml").write_text("version: 1\nname: shop\nsource: {csv: shop.csv}\nmode: sideways\n")
    env.setenv("GIFTFLOW_SYNCS_DIR", str(folder))
    code, lines = _check(capsys)
    assert code == 1
    assert any(x.startswith("sync files") and "shop.yaml:" in x for x in lines["problem"]), lines
    assert Path(folder).is_dir()
