"""Public APIs only: the single Dagster internal giftflow needs stays in one function, and an upgrade that breaks it
fails here, by name, instead of in production at 01:00 UTC when the late-data backfill does not start."""

from __future__ import annotations

import ast
from pathlib import Path

import dagster as dg
import pytest

from giftflow.orchestration import dagster_internals
from giftflow.orchestration.dagster_internals import MISSING_PUBLIC_API, backfill_run_request

ROOT = Path(__file__).resolve().parents[1]
UPGRADE_BROKE = (
    "A Dagster upgrade broke giftflow/orchestration/dagster_internals.py:backfill_run_request ({what}); the "
    "late_data_backfill sensor cannot launch its backfill. Rebuild it with Dagster's current internals "
    "or, better, the public API that now exists for: " + MISSING_PUBLIC_API
)

daily = dg.DailyPartitionsDefinition(start_date="2026-01-01")


@dg.asset(partitions_def=daily, group_name="late")
def upstream() -> None: ...


@dg.asset(partitions_def=daily, group_name="late", deps=[upstream])
def downstream() -> None: ...


@dg.asset(partitions_def=daily, group_name="other")
def elsewhere() -> None: ...


def test_the_backfill_request_still_covers_every_partition_of_every_selected_asset_as_one_backfill():
    repo = dg.Definitions(assets=[upstream, downstream, elsewhere]).get_repository_def()
    days = ["2026-01-02", "2026-01-03"]
    try:
        request = backfill_run_request(repo, dg.AssetSelection.groups("late"), days, {"giftflow/trigger": "t"})
        subset = request.asset_graph_subset
        got = {(p.asset_key.to_user_string(), p.partition_key) for p in subset.iterate_asset_partitions()}
        daemon = request.requires_backfill_daemon()
        # The sensor daemon stores the request with the tick: it must survive Dagster's serialisation.
        again = dg.deserialize_value(dg.serialize_value(request), dg.RunRequest)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        pytest.fail(UPGRADE_BROKE.format(what=f"{type(exc).__name__}: {exc}"), pytrace=False)
    want = {(asset, day) for asset in ("upstream", "downstream") for day in days}
    assert got == want, UPGRADE_BROKE.format(what=f"the subset is {sorted(got)}, not {sorted(want)}")
    assert daemon, UPGRADE_BROKE.format(what="the request no longer goes to the backfill daemon")
    assert again == request and request.tags == {"giftflow/trigger": "t"}, UPGRADE_BROKE.format(
        what="the request no longer round-trips through serialisation with its tags"
    )


PRIVATE_MODULES = ("dagster._", "httpx._", "httpcore._", "stripe._", "pydantic._", "sqlalchemy._")


def _private_uses(path: Path) -> list[str]:
    """Imports of private modules and attributes with a leading underscore read off another package's objects."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: import {n}" for n in names if n.startswith(PRIVATE_MODULES)]
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("dg", "dagster", "httpx", "httpcore", "stripe")
            and node.attr.startswith("_")
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_private_api_of_a_library_outside_the_one_guarded_place():
    allowed = Path(dagster_internals.__file__).resolve()
    files = [p for d in ("giftflow", "giftflow_tests", "bench") for p in (ROOT / d).rglob("*.py") if p != allowed]
    found = [use for p in files for use in _private_uses(p)]
    assert not found, "private library APIs outside giftflow/orchestration/dagster_internals.py:\n" + "\n".join(found)
