"""The agent on an Azure storage root (Azurite): job records as blobs, tables found by listing."""

from __future__ import annotations

import uuid

import lance
import lancedb
import pytest
from lancedb.index import BTree

from lancedb_ray.agent.core import LanceAgent
from lancedb_ray.agent.jobs import Job, JobKind, JobState
from lancedb_ray.agent.store import BlobJobStore, open_job_store, root_location
from lancedb_ray.agent.tables import list_databases
from lancedb_ray.settings import Settings
from lancedb_ray.storage.catalog import StorageCatalog
from tests.support.azurite import PROVIDER, Azurite
from tests.test_agent_core import StandInIndexers, rows, run_until

pytestmark = pytest.mark.azure


@pytest.fixture
def settings(azurite: Azurite, tmp_path) -> Settings:
    prefix = f"agent-{uuid.uuid4().hex[:8]}"
    return Settings(
        storage={"root": azurite.location(PROVIDER, "agent", prefix=prefix)},
        events={"embedded": {"directory": str(tmp_path / "events")},
                "outbox_directory": str(tmp_path / "outbox")},
        agent={"jobs_directory": str(tmp_path / "unused"), "reconcile_interval_seconds": 0.3,
               "debounce_seconds": 0.1, "min_rows_for_vector_index": 1_000_000},
    ).with_absolute_paths()


def _table(settings: Settings, database: str, name: str):
    location = StorageCatalog(settings.storage).resolve(database)  # creates the container
    db = lancedb.connect(location.uri, storage_options=location.storage_options)
    table = db.create_table(name, rows(200))
    table.create_index("id", config=BTree())
    return location, table


def test_job_records_are_blobs_under_the_root(settings: Settings) -> None:
    _table(settings, "first", "t")  # the root's container exists from here on
    store = open_job_store(settings)
    assert isinstance(store, BlobJobStore)
    assert store.where.endswith("/.system/jobs")
    assert store.list() == []
    job = Job.new("first", "t", JobKind.OPTIMIZE_INDICES, 3)
    store.put(job)
    running = job.started()
    store.put(running)
    assert store.list() == [running] and store.get(job.id) == running
    assert store.get("missing") is None
    store.delete([job.id])
    assert store.list() == []


def test_databases_are_listed_without_the_system_directory(settings: Settings) -> None:
    _table(settings, "alpha", "t")
    _table(settings, "beta", "t")
    open_job_store(settings).put(Job.new("alpha", "t", JobKind.COMPACT, 1))
    assert list_databases(settings.storage, root_location(settings.storage)) == ["alpha", "beta"]


def test_the_reconciler_indexes_an_azure_table_and_records_the_job_there(settings: Settings) -> None:
    location, table = _table(settings, "gamma", "quiet")
    table.add(rows(30, 200))
    store = open_job_store(settings)
    indexers = StandInIndexers()
    agent = LanceAgent(settings, indexers=indexers)
    run_until(agent, lambda: any(j.state is JobState.SUCCEEDED for j in store.list()), timeout_s=60)
    (job,) = store.list()
    assert (job.database, job.table, job.kind, job.trigger) == (
        "gamma", "quiet", JobKind.OPTIMIZE_INDICES, "reconcile")
    dataset = lance.dataset(location.table_uri("quiet"), storage_options=location.storage_options)
    assert dataset.stats.index_stats("id_idx")["num_unindexed_rows"] == 0
