"""Scalar and full-text indexes built from segments, by lance-ray.

``lance_ray.create_scalar_index`` cuts the table's fragments into
``num_segments`` groups, builds one segment per group on a pool of Ray actors
(``create_index_uncommitted(fragment_ids=...)``) and commits them together as
one index in one new version. A full-text index of several segments scores as
one built whole: lance searches its segments with the whole table's BM25
statistics.

LABEL_LIST stays one lance build on one Ray task of this module: lance-ray
refuses to distribute it.
"""

from __future__ import annotations

import logging

import lance_ray

from lancedb_ray.errors import AlreadyExists, InvalidInput
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

_LOG = logging.getLogger(__name__)

SCALAR_INDEX_TYPES = ("BTREE", "BITMAP", "LABEL_LIST", "INVERTED")
_ALIASES = {"FTS": "INVERTED"}
_NOT_DISTRIBUTED = frozenset({"LABEL_LIST"})  # lance-ray 0.5 builds these only in one piece
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
        if not dataset.get_fragments():
            raise InvalidInput(f"cannot build a {kind} index on an empty table")
        if kind in _NOT_DISTRIBUTED:
            version = run_one(lambda: _whole_build.options(**ctx.resources.options()).remote(
                handle, dataset.version, column, kind, name), "scalar_index", ctx,
                step="building the index")
            _LOG.info("%s: committed %s index '%s' as version %d", handle.table, kind, name, version)
            return version
        segments = min(max(1, num_segments), len(dataset.get_fragments()))
        try:
            built = hand_over(lambda: lance_ray.create_scalar_index(
                handle.uri, column=column, index_type=kind, name=name, replace=True,
                num_segments=segments, storage_options=handle.storage_options or None,
                **pool_arguments(ctx, segments), **params),
                "scalar_index", ctx, step=f"building {segments} segments")
        except (TypeError, ValueError) as exc:  # lance-ray's checks of the column and the request
            raise InvalidInput(f"cannot build a {kind} index on column '{column}': {exc}") from exc
        METRICS.inc("segments_total", segments, kind=kind.lower())
        _LOG.info("%s: committed %s index '%s' from %d segments as version %d", handle.table, kind,
                  name, segments, built.version)
        return built.version


@watched
def _whole_build(handle: TableHandle, version: int, column: str, kind: str, name: str) -> int:
    dataset = handle.open(version)
    dataset.create_scalar_index(column, kind, name=name, replace=True)
    return handle.open().version
