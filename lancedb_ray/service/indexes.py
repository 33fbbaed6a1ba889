"""Index creation, listing, statistics and removal."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, Protocol

import lancedb
import numpy as np
import pyarrow as pa

from lancedb_ray.errors import AlreadyExists, InvalidInput, LanceDBRayError, NotFound, Unavailable
from lancedb_ray.execution.base import QueryExecutor, QueryTarget
from lancedb_ray.protocol import CreateIndexRequest
from lancedb_ray.service.tables import TableService
from lancedb_ray.storage.connections import Connections
from lancedb_ray.storage.lance_errors import lance_errors
from lancedb_ray.storage.names import validate_name
from lancedb_ray.types import TableRef

VECTOR_INDEX_TYPES = {
    "IVF_FLAT", "IVF_SQ", "IVF_PQ", "IVF_RQ", "IVF_HNSW_SQ", "IVF_HNSW_PQ", "IVF_HNSW_FLAT"
}
SCALAR_INDEX_TYPES = {"BTREE", "BITMAP", "LABEL_LIST"}
FTS_INDEX_TYPES = {"FTS", "INVERTED"}
_POLL_SECONDS = 0.2
_REHEARSAL_ROWS = 300  # enough for lance to train PQ codebooks, so it checks their parameters
_LOG = logging.getLogger(__name__)
_VECTOR_OPTIONS = (
    "num_partitions", "num_sub_vectors", "num_bits", "sample_rate", "max_iterations",
    "m", "ef_construction", "target_partition_size",
)


class IndexJobs(Protocol):
    """Where index builds run off the request path: the Lance agent (``agent.deployment``)."""

    def create_index(self, database: str, table: str, request: dict[str, Any]) -> str:
        """Record a build job (or find the same one already active); its id."""

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job's record as ``Job.to_dict`` gives it; None once it is gone."""

    def pending(self, database: str, table: str) -> list[str]:
        """Names of the indexes that active create_index jobs on ``table`` are building."""


class IndexService:
    def __init__(self, connections: Connections, tables: TableService, jobs: IndexJobs | None = None,
                 wait_seconds: float = 0.0) -> None:
        self._connections = connections
        self._tables = tables
        self._jobs = jobs
        self._wait_seconds = wait_seconds

    def create(self, ref: TableRef, body: CreateIndexRequest, request_id: str | None) -> None:
        """Validate, then build: as a job of the agent when there is one (answering at once, as
        LanceDB Cloud does, or once it is done within ``wait_seconds``), else in this request.

        The client's ``wait_timeout`` polls ``index/list`` and ``stats`` (``stats`` counts the rows
        of a name being rebuilt as unindexed until the job commits).
        """
        if body.name is not None:
            validate_name("index", body.name)
        self._tables.before_write(ref)  # an index build the rename would not copy: refused
        table = self._connections.table(ref)
        index_type = check_create_index(table.schema, body)
        if self._jobs is None:
            with lance_errors(f"create_index on '{ref.qualified_name}'", ref.database):
                apply_create_index(table, index_type, body)
            self._tables.notify(ref, table.version, "create_index", request_id)
            return
        rehearse_create_index(table.schema.field(body.column), index_type, body, ref)
        name = body.name or f"{body.column}_idx"
        if not body.replace and name in {index.name for index in table.list_indices()}:
            raise AlreadyExists(f"index '{name}' already exists on table '{ref.qualified_name}'")
        job_id = self._jobs.create_index(ref.database, ref.qualified_name, body.model_dump())
        deadline = time.monotonic() + self._wait_seconds
        while time.monotonic() < deadline:
            job = self._jobs.job(job_id)
            if job is None:
                return
            if job["state"] == "succeeded":
                self._tables.notify(ref, job["result_version"], "create_index", request_id)
                return
            if job["state"] == "failed":
                raise job_error(job["error"] or "the index build failed")
            time.sleep(_POLL_SECONDS)

    def list(self, ref: TableRef, version: int | None) -> dict[str, Any]:
        table = self._connections.table(ref, version)
        with lance_errors(f"indices of '{ref.qualified_name}'", ref.database):
            indexes = table.list_indices()
        return {"indexes": [_described(i) for i in indexes]}

    def stats(self, ref: TableRef, name: str) -> dict[str, Any]:
        validate_name("index", name)
        table = self._connections.table(ref)
        with lance_errors(f"index '{name}' of '{ref.qualified_name}'", ref.database):
            stats = table.index_stats(name)
        if stats is None:
            raise NotFound(f"index '{name}' was not found on table '{ref.qualified_name}'")
        indexed, unindexed = stats.num_indexed_rows, stats.num_unindexed_rows
        if name in self._pending(ref):  # being rebuilt: the index that name will be covers no row yet
            indexed, unindexed = 0, indexed + unindexed
        return {
            "num_indexed_rows": indexed,
            "num_unindexed_rows": unindexed,
            "index_type": stats.index_type,
            "distance_type": stats.distance_type,
            "num_indices": stats.num_indices,
        }

    def _pending(self, ref: TableRef) -> list[str]:
        """Index names active create_index jobs build; none when the agent does not answer (the
        stats of the index there is are then the best answer)."""
        if self._jobs is None:
            return []
        try:
            return self._jobs.pending(ref.database, ref.qualified_name)
        except LanceDBRayError as exc:
            _LOG.warning("index stats of '%s' without pending builds: %s", ref.qualified_name, exc)
            return []

    def prewarm(self, ref: TableRef, name: str, executor: QueryExecutor) -> None:
        """Load the index at the table's current version where ``executor`` answers queries
        (the plan executors' lance caches when they run), as embedded ``prewarm_index`` does."""
        table = self._connections.table(ref)
        if name not in {i.name for i in table.list_indices()}:
            raise NotFound(f"index '{name}' was not found on table '{ref.qualified_name}'")
        executor.prewarm_index(QueryTarget(ref, None), name)

    def drop(self, ref: TableRef, name: str, request_id: str | None) -> None:
        validate_name("index", name)
        table = self._connections.table(ref)
        if name not in {i.name for i in table.list_indices()}:
            raise NotFound(f"index '{name}' was not found on table '{ref.qualified_name}'")
        self._tables.before_write(ref)
        with lance_errors(f"drop_index '{name}' on '{ref.qualified_name}'", ref.database):
            table.drop_index(name)
        self._tables.after_write(ref, table.version)
        self._tables.notify(ref, lambda: table.version, "drop_index", request_id)


def _described(index: Any) -> dict[str, Any]:
    """One entry of ``index/list``: ``index_details`` is a JSON string, as the client parses it
    (its FTS tokenizer settings are what ``tokenize()`` rebuilds the tokenizer from)."""
    described = {"index_name": index.name, "columns": list(index.columns),
                 "index_type": index.index_type, "index_uuid": index.index_uuid}
    if index.index_details is not None:
        described["index_details"] = json.dumps(index.index_details)
    return described


def check_create_index(schema: Any, body: CreateIndexRequest) -> str:
    """The index type ``body`` asks for, once the column and the type are known to be valid."""
    index_type = (body.index_type or ("IVF_PQ" if body.metric_type else "")).upper()
    if body.column not in schema.names:
        raise InvalidInput(f"cannot index column '{body.column}': the table's columns are {schema.names}")
    if index_type not in VECTOR_INDEX_TYPES | SCALAR_INDEX_TYPES | FTS_INDEX_TYPES:
        known = sorted(VECTOR_INDEX_TYPES | SCALAR_INDEX_TYPES | FTS_INDEX_TYPES)
        raise InvalidInput(f"unknown index type '{body.index_type}': use one of {known}")
    return index_type


def rehearse_create_index(field: pa.Field, index_type: str, body: CreateIndexRequest, ref: TableRef) -> None:
    """Refuse (4xx) what lance would refuse, before a job is recorded: the same build on a small
    in-memory table of ``field`` alone (random vectors, so lance checks its training parameters too).

    The build job would fail later with the same error, but the client, answered at once,
    would only see its ``wait_timeout`` run out. Anything but bad input is left to the job.
    """
    rows = _REHEARSAL_ROWS if index_type in VECTOR_INDEX_TYPES else 0
    sample = pa.table({field.name: _sample(field.type, rows)}, schema=pa.schema([field]))
    rehearsal = lancedb.connect("memory://").create_table(f"rehearsal_{uuid.uuid4().hex}", sample)
    try:
        with lance_errors(f"create_index on '{ref.qualified_name}'", ref.database):
            apply_create_index(rehearsal, index_type, body)
    except LanceDBRayError as exc:
        if exc.status_code < 500:
            raise
        _LOG.info("rehearsal of create_index on '%s' inconclusive: %s", ref.qualified_name, exc)


def _sample(data_type: pa.DataType, rows: int) -> pa.Array:
    """``rows`` random values of a vector type (or of a list of vectors); other types: no rows."""
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        inner = _sample(data_type.value_type, rows)
        if len(inner) == 0:
            return pa.array([], data_type)
        return pa.ListArray.from_arrays(pa.array(range(rows + 1), pa.int32()), inner).cast(data_type)
    numeric = pa.types.is_fixed_size_list(data_type) and (
        pa.types.is_integer(data_type.value_type) or pa.types.is_floating(data_type.value_type))
    if not numeric or rows == 0:
        return pa.array([], data_type)
    values = np.random.default_rng(0).random(rows * data_type.list_size)
    if pa.types.is_integer(data_type.value_type):
        values = values * 100
    flat = pa.array(values).cast(data_type.value_type, safe=False)
    return pa.FixedSizeListArray.from_arrays(flat, data_type.list_size).cast(data_type)


def apply_create_index(table: Any, index_type: str, body: CreateIndexRequest) -> None:
    """lancedb's own build of the index ``body`` asks for on ``table`` (a lancedb table)."""
    if index_type in VECTOR_INDEX_TYPES:
        options = {k: getattr(body, k) for k in _VECTOR_OPTIONS if getattr(body, k) is not None}
        table.create_index(
            metric=body.metric_type or "l2",
            vector_column_name=body.column,
            index_type=index_type,
            replace=body.replace,
            name=body.name,
            **options,
        )
    elif index_type in SCALAR_INDEX_TYPES:
        table.create_scalar_index(body.column, index_type=index_type, replace=body.replace, name=body.name)
    else:
        table.create_fts_index(
            body.column,
            replace=body.replace,
            with_position=body.with_position,
            base_tokenizer=body.base_tokenizer,
            language=body.language,
            max_token_length=body.max_token_length,
            lower_case=body.lower_case,
            stem=body.stem,
            remove_stop_words=body.remove_stop_words,
            custom_stop_words=body.custom_stop_words,
            ascii_folding=body.ascii_folding,
            ngram_min_length=body.min_ngram_length,
            ngram_max_length=body.max_ngram_length,
            prefix_only=body.prefix_only,
            block_size=body.block_size,
            name=body.name,
        )


def job_error(error: str) -> LanceDBRayError:
    """The error a failed build job recorded (``"<Name>: message"``), as the error class of that name."""
    name, _, message = error.partition(": ")
    for cls in (InvalidInput, AlreadyExists, NotFound):
        if cls.name == name:
            return cls(message)
    return Unavailable(f"the index build failed: {error}")

