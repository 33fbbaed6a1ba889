"""Metrics: one naming rule for all of them, bounded labels, and the query node's request metrics.

The live test reads Ray's own Prometheus export of the node, as Prometheus would.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from lancedb_ray.execution.distributed import IN_PROCESS_MAX_ROWS
from lancedb_ray.metrics import ALL_SETS, MAX_SERIES, OTHER, Metric, MetricSet
from tests.support.metric_names import all_metrics
from tests.support.service import LiveService
from tests.support.waiting import wait_for


def test_every_counter_and_only_counters_end_in_total() -> None:
    metrics = all_metrics()
    assert len(metrics) >= 30
    for name, spec in metrics.items():
        assert (spec.kind == "Counter") == name.endswith("_total"), name
        assert name.startswith("lancedb_ray_") and spec.description


def test_a_counter_without_total_is_refused_at_definition() -> None:
    with pytest.raises(ValueError, match="_total"):
        MetricSet("bad", {"events_published": Metric("Counter", "x")})
    with pytest.raises(ValueError, match="_total"):
        MetricSet("bad", {"bytes_total": Metric("Gauge", "x")})


def test_per_table_labels_are_capped() -> None:
    metric_set = MetricSet("captest", {"rows": Metric("Gauge", "x", ("database", "table", "kind"),
                                                      unbounded=("database", "table"))})
    ALL_SETS.remove(metric_set)
    kept = [metric_set._capped("rows", {"database": "d", "table": f"t{i}", "kind": "k"})
            for i in range(MAX_SERIES + 5)]
    assert [tags["table"] for tags in kept[:MAX_SERIES]] == [f"t{i}" for i in range(MAX_SERIES)]
    assert all(tags == {"database": OTHER, "table": OTHER, "kind": "k"} for tags in kept[MAX_SERIES:])
    # A table seen before the cap keeps its own series.
    assert metric_set._capped("rows", {"database": "d", "table": "t3", "kind": "k"})["table"] == "t3"


def scrape() -> str:
    """Ray's Prometheus export of this node (what a Prometheus scrape job reads)."""
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def samples(text: str, name: str, **labels: str) -> list[float]:
    """Values of the samples of ``name`` whose labels include ``labels``."""
    found = []
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            found.append(float(line.rsplit(" ", 1)[1]))
    return found


def test_query_node_exports_request_metrics(live_service: LiveService, db: lancedb.DBConnection) -> None:
    count = IN_PROCESS_MAX_ROWS + 40  # past what a query node answers itself: the executors search
    vectors = np.repeat(np.arange(count, dtype=np.float32)[:, None], 4, axis=1).tolist()
    rows = pa.table({"id": list(range(count)), "vector": vectors})
    table = db.create_table("metered", rows)
    table.add(pa.table({"id": [count, count + 1], "vector": [[1.0] * 4, [2.0] * 4]}))
    assert len(table.search([1.0] * 4).limit(3).to_list()) == 3
    with pytest.raises(ValueError, match="was not found"):
        db.open_table("missing").count_rows()
    wanted = {
        "requests by route and status class": ("ray_lancedb_ray_api_requests_total", {
            "route": "/v1/table/{table_id}/query/", "status_class": "2xx"}),
        "a 4xx answer": ("ray_lancedb_ray_api_requests_total", {"status_class": "4xx"}),
        "latency per route": ("ray_lancedb_ray_api_request_seconds_bucket",
                              {"route": "/v1/table/{table_id}/insert/", "le": "+Inf"}),
        "sub-plans per query": ("ray_lancedb_ray_executors_subplans_per_query_bucket", {"le": "+Inf"}),
        "executor call latency": ("ray_lancedb_ray_executors_call_seconds_bucket", {"outcome": "ok"}),
        "version probes": ("ray_lancedb_ray_service_version_probes_total", {}),
        "writes": ("ray_lancedb_ray_service_writes_total", {"operation": "insert"}),
        "rows written": ("ray_lancedb_ray_service_rows_written_total", {"operation": "insert"}),
    }

    def exported() -> str | None:
        text = scrape()
        return text if all(samples(text, name, **labels) for name, labels in wanted.values()) else None

    text = wait_for(exported, 120, "the query node's metrics in Ray's export", interval_s=1)
    assert max(samples(text, "ray_lancedb_ray_service_rows_written_total", operation="insert")) >= 2
    routes = {line.split('route="', 1)[1].split('"', 1)[0] for line in text.splitlines()
              if line.startswith("ray_lancedb_ray_api_requests_total{")}
    assert all(route == "unmatched" or route.startswith("/") for route in routes)
    assert not any("metered" in route for route in routes), "raw paths would make labels unbounded"


def test_operations_guide_lists_every_metric() -> None:
    guide = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `ray_(lancedb_ray_\w+)` \| (\w+) \|", guide, re.M))
    assert documented == {(name, spec.kind.lower()) for name, spec in all_metrics().items()}
