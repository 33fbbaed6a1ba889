"""The whole service on Azure Blob Storage (Azurite), through the official client.

A second Serve application, on its own route prefix, keeps its databases in
two Azurite accounts: the provider's (the root) and a customer's container
(hybrid, bring-your-own-container) reached with the customer's own key.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lancedb_ray.settings import Settings
from tests.support.azurite import CUSTOMER, PROVIDER, Azurite, free_port
from tests.support.secrets import shared
from tests.support.service import API_KEY, INDEXED, LiveService, wait_healthy

DIM = 8


@pytest.fixture(scope="module")
def azure_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite persisted on disk, so the outage test can stop and restart it."""
    root = tmp_path_factory.mktemp("azurite-service")
    (root / "data").mkdir()
    server = Azurite(free_port(), root / "data", root / "azurite.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def azure_service(
    live_service: LiveService, azure_storage: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    from ray import serve

    from lancedb_ray.api.app import build_app

    state = tmp_path_factory.mktemp("azure-state")
    settings = Settings(
        server={"api_keys": [API_KEY], "num_replicas": 1, "num_cpus": 0.25},
        storage={
            "root": azure_storage.location(PROVIDER, "lancedb", prefix="databases"),
            "databases": {"tenant-a": azure_storage.location(CUSTOMER, "byo", prefix="tenant-a")},
        },
        executors={"num_executors": 1, "num_cpus": 0.25},
        events={"embedded": {"directory": str(state / "events")},
                "outbox_directory": str(state / "outbox")},
        agent={"enabled": False, "jobs_directory": str(state / "jobs")},
        ray={"namespace": "lancedb-ray-azure"},
    )
    with shared(settings):  # the account keys reach the replicas as a deployment's would
        serve.run(build_app({"settings": settings.to_plain()}), name="azure", route_prefix="/azure")
        wait_healthy(f"{live_service.url}/azure")  # the ingress routes /azure only a little after
        yield LiveService(url=f"{live_service.url}/azure", api_key=API_KEY, root=Path("/nonexistent"),
                          settings=settings.to_plain())
        serve.delete("azure")


def _rows(start: int, count: int) -> pa.Table:
    rng = np.random.default_rng(start)
    return pa.table({
        "id": np.arange(start, start + count),
        "text": [f"document number {i}" for i in range(start, start + count)],
        "vector": pa.array(rng.normal(size=(count, DIM)).astype("float32").tolist(),
                           pa.list_(pa.float32(), DIM)),
    })


@pytest.mark.parametrize("database", ["provider-db", "tenant-a"])
def test_table_operations_on_blob_storage(azure_service: LiveService, database: str) -> None:
    db = azure_service.connect(database)
    table = db.create_table("docs", _rows(0, 300), mode="overwrite")
    table.add(_rows(300, 100))
    assert table.count_rows() == 400
    table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all() \
        .execute(_rows(390, 20))
    assert table.count_rows() == 410
    table.delete("id < 10")
    table.update(where="id = 20", values={"text": "changed"})
    table.create_index(metric="l2", vector_column_name="vector", num_partitions=2,
                       num_sub_vectors=2, wait_timeout=INDEXED)
    table.create_fts_index("text", wait_timeout=INDEXED)
    table.create_scalar_index("id", wait_timeout=INDEXED)
    assert {i.name for i in table.list_indices()} == {"vector_idx", "text_idx", "id_idx"}
    q = _rows(0, 1)["vector"][0].as_py()
    hits = table.search(q).limit(5).to_arrow()
    assert hits.num_rows == 5
    assert table.search("changed", query_type="fts").limit(3).to_arrow()["id"].to_pylist() == [20]
    assert table.search().where("id = 20").to_arrow()["text"].to_pylist() == ["changed"]
    versions = table.list_versions()
    table.checkout(versions[1]["version"])
    assert table.count_rows() == 400
    table.checkout_latest()
    table.add_columns({"double": "id * 2"})
    assert "double" in table.schema.names
    assert "docs" in db.table_names()
    db.drop_table("docs")
    assert "docs" not in db.table_names()


def test_rename_on_blob_storage_serves_every_row_under_the_new_name(azure_service: LiveService) -> None:
    """Through the executors (executors on): a renamed table answers under its new name with
    every row and the same nearest neighbours; the old name is free again (tests/test_rename_azure.py
    covers concurrent writers and crashes)."""
    db = azure_service.connect("provider-db")
    table = db.create_table("before", _rows(0, 60), mode="overwrite")
    table.add(_rows(60, 40))
    q = _rows(7, 1)["vector"][0].as_py()
    nearest = table.search(q).limit(5).to_arrow()  # the executors cache the old name's data
    db.rename_table("before", "after")
    renamed = db.open_table("after")
    assert renamed.count_rows() == 100
    ids = renamed.search().select(["id"]).limit(200).to_arrow()["id"].to_pylist()
    assert sorted(ids) == list(range(100))
    again = renamed.search(q).limit(5).to_arrow()
    assert again["id"].to_pylist() == nearest["id"].to_pylist()
    assert again["_distance"].to_pylist() == pytest.approx(nearest["_distance"].to_pylist())
    with pytest.raises(Exception, match="not found"):
        db.open_table("before").count_rows()
    assert db.create_table("before", _rows(0, 5)).count_rows() == 5  # the name can be reused
    db.drop_table("before")
    db.drop_table("after")


def test_hybrid_database_lives_in_the_customer_container(
    azure_service: LiveService, azure_storage: Azurite
) -> None:
    azure_service.connect("tenant-a").create_table("owned", _rows(0, 10), mode="overwrite")
    from azure.storage.blob import BlobServiceClient

    customer = BlobServiceClient.from_connection_string(azure_storage.customer.connection_string())
    names = [b.name for b in customer.get_container_client("byo").list_blobs()]
    assert any(n.startswith("tenant-a/owned.lance/") for n in names)
    provider = BlobServiceClient.from_connection_string(azure_storage.provider.connection_string())
    provider_names = [b.name for c in provider.list_containers()
                      for b in provider.get_container_client(c.name).list_blobs()]
    assert not any("owned.lance" in n for n in provider_names)


def test_outage_loses_no_acknowledged_write(
    azure_service: LiveService, azure_storage: Azurite
) -> None:
    """Writes during an Azurite outage fail with a retryable status; none acknowledged is lost."""
    table = azure_service.connect("outage").create_table("t", _rows(0, 1), mode="overwrite")
    acknowledged: list[int] = []
    failures: list[str] = []
    slowest = [0.0]
    stop = threading.Event()

    def writer() -> None:
        next_id = 1
        while not stop.is_set():
            started = time.monotonic()
            try:
                table.add(_rows(next_id, 1))
                acknowledged.append(next_id)
            except Exception as exc:  # noqa: BLE001 - the status is asserted below
                failures.append(str(exc))
            slowest[0] = max(slowest[0], time.monotonic() - started)
            next_id += 1

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(2)
    azure_storage.stop()
    time.sleep(4)
    azure_storage.start()
    time.sleep(3)
    stop.set()
    thread.join(timeout=120)
    assert acknowledged, "some writes succeed around the outage"
    # The outage reached the writes: they failed (retryably) or waited it out.
    assert failures or slowest[0] >= 3.0, slowest
    assert all("503" in f or "Retry" in f or "retry" in f for f in failures), failures[:3]
    # The service recovered without a restart, and every acknowledged row is there.
    deadline = time.monotonic() + 60
    while True:
        try:
            ids = set(table.search().select(["id"]).limit(None).to_arrow()["id"].to_pylist())
            break
        except Exception:  # noqa: BLE001 - storage may still be coming back
            assert time.monotonic() < deadline
            time.sleep(1)
    assert set(acknowledged) <= ids


def test_readiness_follows_a_storage_outage(azure_service: LiveService, azure_storage: Azurite) -> None:
    """/ready is 503 naming storage while Azurite is down, 200 again once it is back; /health stays 200."""

    def ready() -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"{azure_service.url}/ready", timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def until(wanted: int) -> dict:
        deadline = time.monotonic() + 60
        while (answer := ready())[0] != wanted:
            assert time.monotonic() < deadline, answer
            time.sleep(0.5)
        return answer[1]

    assert until(200) == {"status": "ready"}
    azure_storage.stop()
    try:
        body = until(503)
        assert set(body["problems"]) == {"storage"}, body
        assert "unreachable" in body["problems"]["storage"]
        with urllib.request.urlopen(f"{azure_service.url}/health", timeout=10) as response:
            assert response.status == 200  # liveness: the process is fine, no restart wanted
    finally:
        azure_storage.start()
    assert until(200) == {"status": "ready"}
