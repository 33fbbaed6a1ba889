"""Scalar and full-text indexes built from segments on Ray tasks.

Each task runs ``LanceDataset.create_index_uncommitted(fragment_ids=...)`` on
its group of fragments; one more task merges the segments into one with
``merge_existing_index_segments`` (a full-text index needs whole-table
statistics for its BM25 scores) and publishes it with
``commit_existing_index_segments`` as one new version.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from lancedb_ray.errors import AlreadyExists, InvalidInput
from lancedb_ray.indexers.handle import TableHandle
from lancedb_ray.indexers.runtime import (
    METRICS,
    JobContext,
    context,
    gather,
    operation,
    require_ray,
    run_one,
    watched,
)
from lancedb_ray.indexers.vector import split_fragments

_LOG = logging.getLogger(__name__)

SCALAR_INDEX_TYPES = ("BTREE", "BITMAP", "LABEL_LIST", "INVERTED")
_ALIASES = {"FTS": "INVERTED"}
FTS_PARAMS = frozenset({
    "with_position", "base_tokenizer", "language", "max_token_length", "lower_case", "stem",
    "remove_stop_words", "custom_stop_words", "ascii_folding", "ngram_min_length", "ngram_max_length",
    "prefix_only",
})


def build_scalar_index(handle: TableHandle, column: str, index_type: str, params: dict | None = None, *,
                       num_segments: int = 1, name: str | None = None, replace: bool = True,
                       ctx: JobContext | None = None) -> int:
    """Build a BTREE, BITMAP, LABEL_LIST or full-text (``FTS``/``INVERTED``) index; the new version.

    ``params`` are the full-text tokenizer options lancedb takes (``with_position``,
    ``base_tokenizer``, ``language``, ``stem`` ...); scalar types take none.
    """
    kind = _ALIASES.get(index_type.upper(), index_type.upper())
    if kind not in SCALAR_INDEX_TYPES:
        raise InvalidInput(f"unknown scalar index type '{index_type}': use one of "
                           f"{[*SCALAR_INDEX_TYPES, 'FTS']}")
    params = {k: v for k, v in (params or {}).items() if v is not None}
    allowed = FTS_PARAMS if kind == "INVERTED" else frozenset()
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InvalidInput(f"unknown {kind} index parameters {unknown}: use {sorted(allowed) or 'none'}")
    name = name or f"{column}_idx"
    require_ray("build_scalar_index")
    ctx = context(ctx)
    with operation("scalar_index"):
        dataset = handle.open()
        if column not in dataset.schema.names:
            raise InvalidInput(f"cannot index column '{column}': the table's columns are "
                               f"{dataset.schema.names}")
        if not replace and any(index.name == name for index in dataset.describe_indices()):
            raise AlreadyExists(f"index '{name}' already exists")
        version = dataset.version
        groups = split_fragments([(f.fragment_id, f.count_rows()) for f in dataset.get_fragments()],
                                 num_segments)
        if not groups:
            raise InvalidInput(f"cannot build a {kind} index on an empty table")
        options = ctx.resources.options()
        calls = [functools.partial(_build_segment.options(**options).remote, handle, version, column, kind,
                                   name, params, group) for group in groups]
        segments = gather(calls, "scalar_segment", ctx, step=f"building {len(calls)} segments",
                          limit=ctx.resources.parallelism)
        METRICS.inc("tasks_total", len(segments), kind="scalar_segment", device="cpu")
        new_version = run_one(lambda: _merge_and_commit.options(**options).remote(
            handle, version, column, name, segments), "scalar_merge", ctx, step="merging segments")
        METRICS.inc("segments_total", len(segments), kind=kind.lower())
        _LOG.info("%s: committed %s index '%s' from %d segments as version %d", handle.table, kind,
                  name, len(segments), new_version)
        return new_version


@watched
def _build_segment(handle: TableHandle, version: int, column: str, kind: str, name: str,
                   params: dict[str, Any], fragment_ids: list[int]) -> Any:
    return handle.open(version).create_index_uncommitted(
        column, kind, name=name, replace=True, fragment_ids=fragment_ids, **params)


@watched
def _merge_and_commit(handle: TableHandle, version: int, column: str, name: str,
                      segments: list[Any]) -> int:
    dataset = handle.open(version)
    merged = dataset.merge_existing_index_segments(segments) if len(segments) > 1 else segments[0]
    return dataset.commit_existing_index_segments(name, column, [merged]).version
