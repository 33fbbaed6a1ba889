"""The service on pure defaults on a 2-CPU Ray instance: appended rows get indexed.

The session's Ray instance has 8 logical CPUs, which hides a service whose
reservations leave its own indexer tasks no room; this module starts
``lancedb-ray serve`` as a user would, in a Ray instance of its own that has
exactly 2 CPUs, with nothing tuned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.index import IvfPq

from tests.support.processes import serve_ingress_env
from tests.support.service import INDEXED, free_port, wait_healthy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.ray
DEFAULT_KEY = "lancedb-ray-dev-key"  # the default API key: nothing is configured


def rows(count: int, start: int = 0, dim: int = 16) -> pa.Table:
    rng = np.random.default_rng(start)
    return pa.table({
        "id": np.arange(start, start + count),
        "vector": pa.array(rng.normal(size=(count, dim)).astype("float32").tolist(),
                           pa.list_(pa.float32(), dim)),
    })


@pytest.fixture(scope="module")
def two_cpu_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``lancedb-ray serve --storage DIR --port P`` on a Ray instance of 2 CPUs; its URL."""
    work = tmp_path_factory.mktemp("defaults")
    port = free_port()
    env = {**os.environ,
           "RAY_ADDRESS": "local",  # a Ray instance of its own ...
           "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": 2}),  # ... of exactly 2 CPUs, like this machine
           # Serve ingress ports apart from the test session's (Ray's defaults are fixed).
           **serve_ingress_env()}
    env = {k: v for k, v in env.items() if not k.startswith("LANCEDB_RAY_")}  # nothing tuned
    process = subprocess.Popen(
        # --port: a free one, beside other services on this machine; --storage: where a user puts data.
        [sys.executable, "-m", "lancedb_ray.cli", "serve", "--port", str(port),
         "--storage", str(work / "store")],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            if "Press Ctrl-C to stop." in line:
                break
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout_s=60)
        yield url
        # The service's own state followed --storage: nothing in the directory it started from.
        assert sorted(os.listdir(work)) == ["store"]
        assert {"events", "outbox", "jobs"} <= set(os.listdir(work / "store" / ".system"))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def admin_jobs(url: str, table: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(f"{url}/v1/admin/jobs?table={table}", headers={"x-api-key": DEFAULT_KEY})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["jobs"]


def test_appended_rows_are_indexed_on_pure_defaults_with_two_cpus(two_cpu_service: str) -> None:
    db = lancedb.connect("db://defaults", api_key=DEFAULT_KEY, host_override=two_cpu_service)
    table = db.create_table("items", rows(1000))
    table.create_index("vector", config=IvfPq(distance_type="l2", num_partitions=2, num_sub_vectors=4),
                       wait_timeout=INDEXED)
    assert table.index_stats("vector_idx").num_unindexed_rows == 0
    table.add(rows(200, 1000))
    assert table.index_stats("vector_idx").num_unindexed_rows == 200
    wait_for(lambda: table.index_stats("vector_idx").num_unindexed_rows == 0, 180,
             "the agent to index the appended rows on a 2-CPU cluster", interval_s=0.5)
    # The job's record is written just after the commit that the client already sees.
    jobs = wait_for(lambda: [job for job in admin_jobs(two_cpu_service, "items")
                             if job["kind"] == "optimize_indices" and job["state"] != "running"], 30,
                    "the job's final record", interval_s=0.5)
    assert [job["state"] for job in jobs] == ["succeeded"], jobs
    hits = table.search(rows(200, 1000)["vector"][50].as_py()).nprobes(2).refine_factor(20).limit(1)
    assert hits.to_arrow()["id"].to_pylist() == [1050]
