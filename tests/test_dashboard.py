"""The shipped Grafana dashboard is live: every panel's PromQL returns data from a real Prometheus.

The service runs a small workload (writes, queries, an index build the agent keeps
up to date) while Prometheus (the Debian package, installed by ``scripts/setup
--test``) scrapes Ray's metrics export of the node; then each panel's queries and
each template variable are evaluated through Prometheus' HTTP API, with the
dashboard's variables set as Grafana sets them for "All".

With ``LANCEDB_RAY_DASHBOARD_PNG=path`` the run also renders every panel from
Prometheus' data into that picture (docs/images/dashboard.png comes from it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tests.support.processes import free_port, stop_process
from tests.support.service import INDEXED, LiveService
from tests.support.waiting import wait_for

DASHBOARD = Path(__file__).resolve().parents[1] / "deployments" / "grafana-dashboard.json"
PROMETHEUS = shutil.which("prometheus")
VARIABLES = {"$cluster": ".*", "$route": ".*", "$__rate_interval": "30s"}  # Grafana's "All"

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (scripts/setup --test installs it)"
)


def _panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p.get("targets")]


def _promql(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


class Prometheus:
    """A Prometheus of this test's own, scraping Ray's metrics export of this node."""

    def __init__(self, directory: Path, target: str) -> None:
        self.port = free_port()
        config = directory / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "ray",
                # What the PodMonitor's relabelling adds on Kubernetes (k8s/base/podmonitor.yaml).
                "static_configs": [{"targets": [target], "labels": {"ray_io_cluster": "local"}}],
            }],
        }))
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={directory / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(directory / "prometheus.log", "w"),  # noqa: SIM115
        )

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("query", query=expr)["result"]

    def ready(self) -> bool | None:
        try:
            return True if self.query('up{job="ray"} == 1') else None
        except OSError:
            return None


def _workload(live_service: LiveService, seconds: float) -> None:
    """Writes, queries (cache misses, then hits), an error, and an index the agent keeps up."""
    db = live_service.connect()
    vectors = np.random.default_rng(0).normal(size=(300, 8)).astype("float32")
    table = db.create_table("dash", pa.table({
        "id": np.arange(300), "vector": pa.array(vectors.tolist(), pa.list_(pa.float32(), 8))}))
    table.create_scalar_index("id", wait_timeout=INDEXED)
    deadline = time.monotonic() + seconds
    next_id = 300
    while True:
        table.add([{"id": next_id, "vector": vectors[next_id % 300].tolist()}])
        table.merge_insert("id").when_matched_update_all().execute(
            [{"id": 1, "vector": vectors[2].tolist()}])
        table.search(vectors[next_id % 300]).limit(5).to_list()
        table.count_rows("id > 10")
        with pytest.raises(ValueError, match="was not found"):
            db.open_table("missing").count_rows()
        next_id += 1
        if time.monotonic() > deadline:
            break
    table.delete("id = 0")


def test_every_panel_returns_series(live_service: LiveService, tmp_path: Path) -> None:
    import ray

    prometheus = Prometheus(tmp_path, f"127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}")
    try:
        wait_for(prometheus.ready, 60, "Prometheus to scrape Ray's metrics export", interval_s=1)
        started = time.time()
        _workload(live_service, float(os.environ.get("LANCEDB_RAY_DASHBOARD_SECONDS", "15")))
        targets = [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]

        def empty() -> list[str]:
            return [f"{title}: {expr}" for title, expr in targets if not prometheus.query(_promql(expr))]

        # The agent's jobs and Ray's report interval take a while to reach the export.
        wait_for(lambda: not empty(), 180, "every panel to have data", interval_s=1)
        assert empty() == []
        for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
            if variable["type"] == "query":
                metric, label = variable["definition"].removeprefix("label_values(").rstrip(")").split(", ")
                values = {s["metric"].get(label) for s in prometheus.query(f"count by ({label}) ({metric})")}
                assert values - {None}, variable["name"]
        if picture := os.environ.get("LANCEDB_RAY_DASHBOARD_PNG"):
            _render(prometheus, started, time.time(), Path(picture))
    finally:
        stop_process(prometheus.process)


def _render(prometheus: Prometheus, start: float, end: float, path: Path) -> None:
    """Every panel as Grafana would draw it, from this run's Prometheus data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels()
    columns = 4
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for target in panel["targets"]:
            data = prometheus.get("query_range", query=_promql(target["expr"]), start=str(start),
                                  end=str(end), step="2")["result"]
            for series in data:
                times = [float(t) - start for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                legend = target.get("legendFormat", "")
                for key, value in series["metric"].items():
                    legend = legend.replace("{{" + key + "}}", value)
                ax.plot(times, values, label=legend[:40] or None)
        ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.suptitle("lancedb-ray dashboard (deployments/grafana-dashboard.json), seconds since start")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
