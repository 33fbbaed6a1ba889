"""create_index off the request path: the query node records a job with the agent and answers.

The agent is stood in for (``IndexJobs``); the live path, with the agent's
Ray task building the index, is in ``test_agent_live.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
import pytest

from lancedb_ray.errors import AlreadyExists, InvalidInput, Unavailable
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.protocol import CreateIndexRequest
from lancedb_ray.service.indexes import IndexService
from lancedb_ray.service.tables import TableService
from lancedb_ray.settings import Settings, StorageSettings
from lancedb_ray.storage.catalog import StorageCatalog
from lancedb_ray.storage.connections import Connections
from lancedb_ray.types import TableRef


class Jobs:
    """The agent's side: records what was asked; each job's record moves through ``states``."""

    def __init__(self, *states: dict[str, Any]) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.states = list(states)
        self.building: list[str] = []

    def create_index(self, database: str, table: str, request: dict[str, Any]) -> str:
        self.requests.append((database, table, request))
        return "job-1"

    def job(self, job_id: str) -> dict[str, Any] | None:
        assert job_id == "job-1"
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def pending(self, database: str, table: str) -> list[str]:
        return self.building


BTREE = CreateIndexRequest(column="id", index_type="BTREE")
RUNNING = {"state": "running", "result_version": None, "error": None}


@pytest.fixture
def service_parts(tmp_path: Path) -> tuple[Connections, TableService, list[ChangeEvent]]:
    vectors = pa.FixedSizeListArray.from_arrays(pa.array([0.5] * 24, pa.float32()), 8)
    lancedb.connect(tmp_path / "db").create_table(
        "t", pa.table({"id": [1, 2, 3], "text": ["a b", "b c", "c d"], "vector": vectors}))
    connections = Connections(StorageCatalog(StorageSettings(root={"uri": str(tmp_path)})), 0.0)
    events: list[ChangeEvent] = []
    return connections, TableService(connections, events.append, 20), events


def indexes(parts: tuple[Connections, TableService, list[ChangeEvent]], jobs: Jobs,
            wait_s: float) -> IndexService:
    return IndexService(parts[0], parts[1], jobs, wait_s)


def test_by_default_the_request_answers_once_the_job_is_recorded(service_parts: Any) -> None:
    jobs = Jobs(RUNNING)
    IndexService(service_parts[0], service_parts[1], jobs).create(TableRef.parse("db", "t"), BTREE, None)
    assert len(jobs.requests) == 1 and Settings().server.index_wait_seconds == 0
    assert service_parts[2] == []


def test_a_build_still_running_is_left_to_the_agent(service_parts: Any) -> None:
    jobs = Jobs(RUNNING)
    indexes(service_parts, jobs, 0.3).create(TableRef.parse("db", "t"), BTREE, None)
    ((database, table, request),) = jobs.requests
    assert (database, table, request["column"], request["replace"]) == ("db", "t", "id", True)
    assert lancedb.connect(service_parts[0].location("db").uri).open_table("t").list_indices() == []
    assert service_parts[2] == []  # no change to announce yet


def test_a_finished_build_is_announced(service_parts: Any) -> None:
    jobs = Jobs(RUNNING, {"state": "succeeded", "result_version": 2, "error": None})
    indexes(service_parts, jobs, 30).create(TableRef.parse("db", "t"), BTREE, "r1")
    (event,) = service_parts[2]
    assert (event.table, event.version, event.operation) == ("t", 2, "create_index")


def test_a_failed_build_answers_with_its_error(service_parts: Any) -> None:
    bad = Jobs({"state": "failed", "result_version": None, "error": "InvalidInput: too few rows"})
    with pytest.raises(InvalidInput, match="too few rows"):
        indexes(service_parts, bad, 30).create(TableRef.parse("db", "t"), BTREE, None)
    broken = Jobs({"state": "failed", "result_version": None, "error": "OSError: disk gone"})
    with pytest.raises(Unavailable, match="OSError: disk gone"):
        indexes(service_parts, broken, 30).create(TableRef.parse("db", "t"), BTREE, None)


def test_bad_requests_are_refused_before_any_job(service_parts: Any) -> None:
    jobs = Jobs(RUNNING)
    service = indexes(service_parts, jobs, 0)
    with pytest.raises(InvalidInput, match="cannot index column 'nope'"):
        service.create(TableRef.parse("db", "t"), CreateIndexRequest(column="nope", index_type="BTREE"), None)
    with pytest.raises(InvalidInput, match="unknown index type 'SPARKLY'"):
        service.create(TableRef.parse("db", "t"), CreateIndexRequest(column="id", index_type="SPARKLY"), None)
    refused = [
        ({"column": "vector", "index_type": "IVF_PQ", "num_bits": 3}, "num_bits 3 not supported"),
        ({"column": "vector", "index_type": "IVF_PQ", "num_sub_vectors": 3}, "must divide"),
        ({"column": "text", "index_type": "IVF_PQ"}, "cannot be created on the field `text`"),
        ({"column": "id", "index_type": "FTS"}, "cannot be created on the field `id`"),
        ({"column": "text", "index_type": "FTS", "base_tokenizer": "nope"}, "unknown base tokenizer"),
        ({"column": "text", "index_type": "FTS", "language": "Klingon"}, "Klingon"),
        ({"column": "vector", "index_type": "BTREE"}, "BTree index cannot be created"),
        ({"column": "id", "index_type": "LABEL_LIST"}, "LabelList index cannot be created"),
    ]
    for body, problem in refused:  # what lance itself refuses, found before the job is recorded
        with pytest.raises(InvalidInput, match=problem):
            service.create(TableRef.parse("db", "t"), CreateIndexRequest.model_validate(body), None)
    assert jobs.requests == []
    for body in ({"column": "vector", "index_type": "IVF_PQ", "num_sub_vectors": 4, "num_bits": 4},
                 {"column": "vector", "index_type": "IVF_HNSW_SQ"}, {"column": "text", "index_type": "FTS"}):
        service.create(TableRef.parse("db", "t"), CreateIndexRequest.model_validate(body), None)
    assert len(jobs.requests) == 3


def test_an_existing_index_without_replace_is_refused_at_once(service_parts: Any) -> None:
    connections, tables, _ = service_parts
    lancedb.connect(connections.location("db").uri).open_table("t").create_scalar_index("id")
    jobs = Jobs(RUNNING)
    service = IndexService(connections, tables, jobs)
    again = CreateIndexRequest(column="id", index_type="BTREE", replace=False)
    with pytest.raises(AlreadyExists, match="'id_idx' already exists"):
        service.create(TableRef.parse("db", "t"), again, None)
    service.create(TableRef.parse("db", "t"), again.model_copy(update={"replace": True}), None)
    assert len(jobs.requests) == 1


def test_stats_count_every_row_unindexed_while_the_name_is_rebuilt(service_parts: Any) -> None:
    connections, tables, _ = service_parts
    ref = TableRef.parse("db", "t")
    lancedb.connect(connections.location("db").uri).open_table("t").create_scalar_index("id")
    jobs = Jobs(RUNNING)
    service = IndexService(connections, tables, jobs)
    assert service.stats(ref, "id_idx")["num_unindexed_rows"] == 0
    jobs.building = ["id_idx"]  # a replacement of id_idx is being built: the client keeps polling
    stats = service.stats(ref, "id_idx")
    assert (stats["num_indexed_rows"], stats["num_unindexed_rows"]) == (0, 3)
