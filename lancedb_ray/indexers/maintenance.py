"""Keeping a table's indexes current and its fragments compact, on Ray tasks.

- ``optimize_indices``: new rows into every existing index (vector, scalar,
  full-text) with lance's ``optimize_indices``. A vector index gets a new delta
  segment over the new fragments (``num_indices_to_merge=0``) instead of being
  merged into one segment, so a segmented index keeps its parallel layout.
- ``compact``: lance-ray's ``compact_files``: the plan on the driver, its tasks
  on a pool of Ray actors, one commit of all rewrites (lance remaps the indexes
  to the new fragments in that commit).
- ``cleanup``: ``cleanup_old_versions`` on a Ray task.

``optimize_indices`` and ``cleanup`` stay this module's own Ray tasks:
lance-ray's ``optimize_indices`` runs lance's call in the calling process (the
agent's replica, or a job's driver), and lance-ray has no cleanup.
- ``unindexed_rows``: read from the manifest alone, so it runs anywhere.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import lance_ray

from lancedb_ray.indexers.handle import TableHandle
from lancedb_ray.indexers.runtime import (
    METRICS,
    JobContext,
    context,
    hand_over,
    operation,
    pool_arguments,
    require_ray,
    run_one,
    watched,
)
from lancedb_ray.types import is_vector_index

_LOG = logging.getLogger(__name__)
_CLEANUP_STATS = ("old_versions", "bytes_removed", "data_files_removed", "index_files_removed",
                  "deletion_files_removed", "transaction_files_removed", "failed_deletes")


def unindexed_rows(handle: TableHandle) -> dict[str, int]:
    """Index name -> rows (deletions excluded) in fragments none of its segments covers."""
    dataset = handle.open()
    rows = {f.fragment_id: f.metadata.num_rows - f.metadata.num_deletions for f in dataset.get_fragments()}
    covered: dict[str, set[int]] = {}
    for index in dataset.describe_indices():
        ids = covered.setdefault(index.name, set())
        for segment in index.segments:
            ids.update(segment.fragment_ids or ())
    return {name: sum(n for fid, n in rows.items() if fid not in ids) for name, ids in covered.items()}


def optimize_indices(handle: TableHandle, *, merge_vector_segments: bool = False,
                     ctx: JobContext | None = None) -> int:
    """Index newly written rows into every index; the new version, or the current one if none lagged.

    Running it again with nothing new written changes nothing.
    """
    require_ray("optimize_indices")
    ctx = context(ctx)
    with operation("optimize_indices"):
        version = run_one(lambda: _optimize.options(**ctx.resources.options()).remote(
            handle, merge_vector_segments), "optimize_indices", ctx, step="indexing new rows")
        METRICS.inc("tasks_total", kind="optimize_indices", device="cpu")
        return version


def compact(handle: TableHandle, *, target_rows_per_fragment: int, parallelism: int,
            ctx: JobContext | None = None, **options: Any) -> int | None:
    """Rewrite small fragments into ones of about ``target_rows_per_fragment`` rows, in parallel.

    The table's version once the rewrite is committed, or None if lance planned
    nothing to do. ``options`` are further ``lance.optimize.CompactionOptions``
    (``materialize_deletions`` ...). ``parallelism``: at most this many pool workers.
    """
    require_ray("compact")
    ctx = context(ctx)
    with operation("compact"):
        metrics = hand_over(lambda: lance_ray.compact_files(
            handle.uri, storage_options=handle.storage_options or None,
            compaction_options={"target_rows_per_fragment": target_rows_per_fragment, **options},
            **pool_arguments(ctx, parallelism)), "compact", ctx, step="rewriting fragments")
        if metrics is None:
            return None
        version = handle.open().version
        METRICS.inc("fragments_compacted_total", metrics.fragments_removed)
        _LOG.info("%s: compaction replaced %d fragments with %d (version %d)", handle.table,
                  metrics.fragments_removed, metrics.fragments_added, version)
        return version


def cleanup(handle: TableHandle, *, older_than_seconds: float,
            ctx: JobContext | None = None) -> dict[str, int]:
    """Remove versions older than ``older_than_seconds`` and the files only they used."""
    require_ray("cleanup")
    ctx = context(ctx)
    with operation("cleanup"):
        stats = run_one(lambda: _cleanup.options(**ctx.resources.options()).remote(
            handle, older_than_seconds), "cleanup", ctx, step="removing old versions")
        METRICS.inc("tasks_total", kind="cleanup", device="cpu")
        return stats


@watched
def _optimize(handle: TableHandle, merge_vector_segments: bool) -> int:
    dataset = handle.open()
    lagging = {name for name, rows in unindexed_rows(handle).items() if rows > 0}
    if not lagging:
        return dataset.version
    types = {index.name: str(index.index_type) for index in dataset.describe_indices()}
    vector = sorted(name for name in lagging if is_vector_index(types[name]))
    other = sorted(lagging - set(vector))
    if vector:
        kwargs = {} if merge_vector_segments else {"num_indices_to_merge": 0}
        dataset.optimize.optimize_indices(index_names=vector, **kwargs)
    if other:
        dataset = handle.open()
        dataset.optimize.optimize_indices(index_names=other)
    return handle.open().version


@watched
def _cleanup(handle: TableHandle, older_than_seconds: float) -> dict[str, int]:
    stats = handle.open().cleanup_old_versions(older_than=timedelta(seconds=older_than_seconds))
    return {name: int(getattr(stats, name)) for name in _CLEANUP_STATS if hasattr(stats, name)}
