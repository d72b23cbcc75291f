"""The one place giftflow reaches into Dagster's internals, because Dagster 1.13 offers no public API for it.

Everything else in giftflow uses `import dagster as dg` only. What is here is guarded by
giftflow_tests/test_private_apis.py, which fails with a plain message when a Dagster upgrade moves or changes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import dagster as dg

MISSING_PUBLIC_API = (
    "a public way for a sensor to launch ONE backfill of several partitions across several assets: "
    "RunRequest.for_asset_graph_subset exists, but the AssetGraphSubset it takes (and AssetKeyPartitionKey, "
    "RepositoryDefinition.asset_graph, AssetSelection.resolve used to build it) are not exported by `dagster`"
)


def backfill_run_request(
    repository_def: dg.RepositoryDefinition | None,
    selection: dg.AssetSelection,
    partition_keys: Iterable[str],
    tags: Mapping[str, str],
) -> dg.RunRequest:
    """A RunRequest that the daemon turns into one backfill (listed under Backfills in the UI) of every partition
    in `partition_keys` of every asset in `selection`.

    Missing public API: see MISSING_PUBLIC_API. The alternatives that are public are not the same thing: one
    RunRequest per partition is many runs and no backfill, and a single-run partition range needs every asset
    to have BackfillPolicy.single_run(). Dagster's own declarative automation builds its backfills this way.
    """
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.definitions.events import AssetKeyPartitionKey

    if repository_def is None:
        raise dg.DagsterInvariantViolationError("a backfill request needs the sensor's repository definition")
    graph = repository_def.asset_graph
    keys = selection.resolve(graph)
    partitions = {AssetKeyPartitionKey(key, partition) for key in keys for partition in partition_keys}
    subset = AssetGraphSubset.from_asset_partition_set(partitions, graph)
    return dg.RunRequest.for_asset_graph_subset(subset, tags=dict(tags))
