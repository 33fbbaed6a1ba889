"""The live service under test: one local Ray cluster and one Serve application per session.

Each test gets its own database (a fresh ``x-lancedb-database``), so tests
share the deployment but never each other's tables.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb
import pytest

from tests.support.processes import free_port
from tests.support.secrets import secrets_file
from tests.support.tenants import TENANT_KEYS

# create_index answers once the build is recorded as a job of the agent, as LanceDB Cloud does; a
# test that uses the index next waits for it as a client does: ``wait_timeout=INDEXED`` polls the
# index stats until the job has committed the index (harmless on an embedded table).
INDEXED = timedelta(seconds=120)

API_KEY = "test-key"
STATEFUL_DATABASES = "stateful*"  # the state machine's databases (see service_settings)
FIXED_LAYOUT_DATABASES = "fixed-layout*"  # tests on which executor owns which bucket (see service_settings)


def wait_healthy(url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"service at {url} never became healthy")


def wait_routed(url: str, api_key: str, timeout_s: float = 180, in_a_row: int = 10) -> None:
    """Wait until an application added under ``url``'s prefix answers, and keeps answering.

    Serve's ingress takes a new route a little after ``serve.run`` returns, and for a moment
    may still send some requests under it to the application at ``/`` (a 404 there).
    """
    deadline = time.monotonic() + timeout_s
    answered = 0
    request = urllib.request.Request(f"{url}/v1/table/", headers={"x-api-key": api_key,
                                                                 "x-lancedb-database": "routed"})
    while answered < in_a_row:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the application at {url} never answered {in_a_row} times in a row")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                answered = answered + 1 if response.status == 200 else 0
        except OSError:
            answered = 0
            time.sleep(0.2)


def wait_for_index_builds(service: LiveService, database: str, table: str,
                          timeout_s: float = INDEXED.total_seconds()) -> None:
    """Until no create_index job of the agent is active on ``table`` (at once where there is no agent).

    For the cases the client's ``wait_timeout`` cannot see the end of: an IVF_PQ index on too
    few rows to train, which lance (embedded too) counts as covering no row.
    """
    url = f"{service.url}/v1/admin/jobs?database={database}&table={table}&limit=1000"
    deadline = time.monotonic() + timeout_s
    while True:
        request = urllib.request.Request(url, headers={"x-api-key": service.api_key})
        with urllib.request.urlopen(request, timeout=30) as response:
            jobs = json.loads(response.read())["jobs"]
        if not any(job["kind"] == "create_index" and job["state"] in ("pending", "running") for job in jobs):
            return
        assert time.monotonic() < deadline, f"create_index jobs on {database}/{table} still active: {jobs}"
        time.sleep(0.2)


@dataclass
class LiveService:
    url: str
    api_key: str
    root: Path
    settings: dict[str, Any]

    def connect(self, database: str | None = None, **kwargs: Any) -> lancedb.DBConnection:
        database = database or f"db{uuid.uuid4().hex[:10]}"
        return lancedb.connect(
            f"db://{database}", api_key=self.api_key, host_override=self.url, **kwargs
        )


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray instance for the whole session (logical CPUs above the 2 real ones).

    Its processes read secrets from the session's secrets file (``tests.support.secrets``),
    as a deployment's do: Ray never carries them.
    """
    import ray

    with secrets_file(tmp_path_factory.mktemp("secrets") / "secrets.yaml"):
        # address="local": always a cluster of our own, even if another is running here.
        ray.init(address="local", num_cpus=8, include_dashboard=False,
                 namespace="lancedb-ray-tests", log_to_driver=False)
        yield
        ray.shutdown()


def service_settings(root: Path) -> dict[str, Any]:
    return {
        # read_consistency_seconds 0: tests write with embedded lancedb straight on the service's
        # storage (an outside writer) and read the result through the service at once.
        "server": {"api_keys": [API_KEY, *TENANT_KEYS], "num_replicas": 2, "num_cpus": 0.25,
                   "read_consistency_seconds": 0.0},
        "storage": {"root": {"uri": str(root / "data")}},
        "events": {
            "embedded": {"directory": str(root / "events")},
            "outbox_directory": str(root / "outbox"),
        },
        # The agent keeps no automatic watch over two kinds of test databases: the differential
        # state machine compares version numbers with embedded lancedb, which never commits on its
        # own; and the executor tests rely on how a table's fragments fall into buckets, which the
        # agent's compaction rewrites (into one fragment a query node answers itself).
        "agent": {"jobs_directory": str(root / "jobs"),
                  "unmaintained_databases": [STATEFUL_DATABASES, FIXED_LAYOUT_DATABASES]},
        # Small buckets, so that test tables of a few fragments spread over both executors. The
        # suite's tables lie on a local disk, where index searches run on the query node by
        # default: here the executors run them too, as they do for tables on object storage, so
        # that the suite's executor tests (caches, fail-over, prewarm) reach them.
        "executors": {"num_executors": 2, "fragments_per_group": 2, "num_cpus": 0.25,
                      "spill_dir": str(root / "spill"), "search_local_disk_indexes": True},
    }


@pytest.fixture(scope="session")
def live_service(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    from ray import serve

    from lancedb_ray.api.app import build_app

    root = tmp_path_factory.mktemp("service")
    port = free_port()
    settings = service_settings(root)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"settings": settings}), name="lancedb", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    yield LiveService(url=url, api_key=API_KEY, root=root / "data", settings=settings)
    serve.shutdown()


@pytest.fixture
def db(live_service: LiveService) -> lancedb.DBConnection:
    """A remote connection to a database of this test's own."""
    return live_service.connect()


@pytest.fixture
def embedded(tmp_path: Path) -> lancedb.DBConnection:
    """Embedded lancedb on a local directory: the reference the service must match."""
    return lancedb.connect(tmp_path / "embedded")

