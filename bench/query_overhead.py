"""Where a query's fixed cost goes: the official client, the HTTP path, and the service's own work.

One command (``.venv/bin/python bench/query_overhead.py``). ``query_bench.py`` compares the
service with embedded lancedb on a real index; this one takes the search out, so what is
left is the cost every query pays whatever it searches. On a 100-row table (answered on the
query node) it times, one request at a time in one run:

- an *instant server*: a plain Python HTTP server on loopback that replays, byte for byte,
  the answers the service gave to the same requests: what the official Python client and a
  raw HTTP request (``http.client`` plus pyarrow decoding) cost with no server work at all;
- the *service*, through HAProxy and Serve as deployed, with the official client and raw HTTP;
- *embedded lancedb* on the very same table files.

Differences of medians give the parts: the client's own cost (client minus raw, instant
server), the request path through HAProxy, Serve and the app's middleware (raw ``count_rows``,
answered from the manifest, service minus instant), and the query node's work for a search
(raw search minus raw ``count_rows`` on the service). A markdown table and a PNG go under
``bench/results/``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from query_bench import (
    API_KEY,
    NAMESPACE,
    REPO,
    make_table,
    service_settings,
    set_own_instance_env,
    start_service,
)

ROWS, DIM = 100, 384
PREFIX = "/overhead"


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """p50 and p99 in ms of ``repeats`` calls, after a warm-up, and the CPU time the whole machine
    spent per call (client, proxy, Serve, query node, Ray's own processes: what bounds the QPS
    of a machine whose cores are all busy)."""
    for _ in range(30):
        fn()
    latencies = []
    busy = _busy_cpu_ms()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        latencies.append((time.perf_counter() - start) * 1000)
    cpu_ms = (_busy_cpu_ms() - busy) / repeats
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1], cpu_ms


def _busy_cpu_ms() -> float:
    """CPU time every core of this machine has spent busy (Linux's /proc/stat), in ms."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) * 1000 / os.sysconf("SC_CLK_TCK")


class RawClient:
    """One keep-alive connection, the request the official client sends, the answer decoded."""

    def __init__(self, port: int, prefix: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port)
        self.prefix = prefix
        self.headers = {"x-api-key": API_KEY, "x-lancedb-database": "bench",
                        "content-type": "application/json"}

    def post(self, path: str, body: bytes) -> bytes:
        self.connection.request("POST", self.prefix + path, body=body, headers=self.headers)
        response = self.connection.getresponse()
        data = response.read()
        assert response.status == 200, (response.status, data[:300])
        return data

    def search(self, body: bytes) -> pa.Table:
        return pa.ipc.open_file(pa.py_buffer(self.post("/v1/table/t/query/", body))).read_all()

    def count_rows(self) -> int:
        return json.loads(self.post("/v1/table/t/count_rows/", b"{}"))


def instant_server(answers: dict[str, tuple[str, bytes]]) -> ThreadingHTTPServer:
    """A loopback HTTP/1.1 server answering each path with a recorded (content type, body)."""

    class Replay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body leave at once, as from a real server

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("content-length", 0)))
            content_type, body = answers[self.path.split("?")[0]]
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="query-overhead-"))
    import ray
    from ray import serve

    from tests.support.processes import free_port
    from tests.support.secrets import secrets_file

    set_own_instance_env()
    rows: list[tuple[str, str, str, float, float, float]] = []
    with secrets_file(work / "secrets.yaml"):
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        start_service(service_settings({"root": {"uri": str(work / "data")}}, work / "state", NAMESPACE),
                      "overhead", f"http://127.0.0.1:{port}", PREFIX)
        vectors = np.random.default_rng(0).normal(size=(ROWS, DIM)).astype(np.float32)
        client_db = lancedb.connect("db://bench", api_key=API_KEY,
                                    host_override=f"http://127.0.0.1:{port}{PREFIX}")
        client_table = client_db.create_table("t", make_table(vectors))
        query = vectors[3]
        body = json.dumps({"vector": query.tolist(), "k": 10, "columns": ["id"],
                           "prefilter": True}).encode()
        raw = RawClient(port, PREFIX)
        expected = raw.search(body)["id"].to_pylist()
        answers = {PREFIX + "/v1/table/t/query/": ("application/vnd.apache.arrow.file",
                                                   raw.post("/v1/table/t/query/", body)),
                   PREFIX + "/v1/table/t/count_rows/": ("application/json",
                                                        raw.post("/v1/table/t/count_rows/", b"{}")),
                   PREFIX + "/v1/table/t/describe/": ("application/json",
                                                      raw.post("/v1/table/t/describe/", b"{}"))}
        replay = instant_server(answers)
        instant_table = lancedb.connect("db://bench", api_key=API_KEY, host_override=(
            f"http://127.0.0.1:{replay.server_port}{PREFIX}")).open_table("t")
        instant_raw = RawClient(replay.server_port, PREFIX)
        embedded_table = lancedb.connect(work / "data" / "bench").open_table("t")

        def client_search(table) -> Callable[[], object]:
            return lambda: table.search(query).limit(10).select(["id"]).to_arrow()

        systems = [
            ("instant server", "raw HTTP", instant_raw),
            ("instant server", "official client", instant_table),
            ("service", "raw HTTP", raw),
            ("service", "official client", client_table),
            ("embedded lancedb", "in process", embedded_table),
        ]
        for place, how, target in systems:
            search = (lambda t=target: t.search(body)) if isinstance(target, RawClient) \
                else client_search(target)
            found = search()
            assert found["id"].to_pylist() == expected, (place, how)  # every path, one answer
            rows.append((place, how, "search", *measure(search, args.repeats)))
            rows.append((place, how, "count_rows", *measure(target.count_rows, args.repeats)))
        replay.shutdown()
        serve.shutdown()
        ray.shutdown()
    print(write_report(rows, args, Path(args.out)))
    return 0


def write_report(rows: list[tuple[str, str, str, float, float, float]], args: argparse.Namespace,
                 out: Path) -> str:
    p50 = {(place, how, op): median for place, how, op, median, _, _ in rows}
    cpu = {(place, how, op): cpu_ms for place, how, op, _, _, cpu_ms in rows}
    client_search = ("service", "official client", "search")
    embedded_search = ("embedded lancedb", "in process", "search")

    def part(name: str, a: tuple[str, str, str], b: tuple[str, str, str]) -> str:
        return f"| {name} | {p50[a] - p50[b]:.2f} |"

    lines = [f"# Fixed cost per query: {ROWS} x {DIM} table, one request at a time, "
             f"{args.repeats} requests each", "",
             "| where | how | operation | p50 ms | p99 ms | machine CPU ms per request |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {place} | {how} | {op} | {median:.2f} | {p99:.2f} | {cpu_ms:.2f} |"
              for place, how, op, median, p99, cpu_ms in rows]
    lines += ["", "| part (difference of p50s) | ms |", "|---|---|",
              part("official client's own cost per search (client - raw, instant server)",
                   ("instant server", "official client", "search"), ("instant server", "raw HTTP", "search")),
              part("official client's own cost per count_rows (client - raw, instant server)",
                   ("instant server", "official client", "count_rows"),
                   ("instant server", "raw HTTP", "count_rows")),
              part("request path: HAProxy, Serve, middleware (raw count_rows, service - instant)",
                   ("service", "raw HTTP", "count_rows"), ("instant server", "raw HTTP", "count_rows")),
              part("query node's work for a search (raw search - raw count_rows, service)",
                   ("service", "raw HTTP", "search"), ("service", "raw HTTP", "count_rows")),
              part("service through the official client - embedded lancedb, search", client_search,
                   embedded_search),
              "",
              f"Machine CPU per search: {cpu[client_search]:.2f} ms through the service and the official "
              f"client, {cpu[embedded_search]:.2f} ms in embedded lancedb: on a machine whose cores are "
              f"all busy, the service's QPS is at most {cpu[embedded_search] / cpu[client_search]:.2f} "
              "of embedded's for this table."]
    report = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "query_overhead.md").write_text(report)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, cpu_axis) = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    labels = [f"{place}, {how}, {op}" for place, how, op, *_ in rows]
    medians = [median for *_, median, _, _ in rows]
    latency.barh(labels, medians, label="p50")
    latency.barh(labels, [p99 - median for *_, median, p99, _ in rows], left=medians, alpha=0.4, label="p99")
    latency.invert_yaxis()
    latency.set_xlabel("ms per request")
    latency.legend()
    cpu_axis.barh(labels, [cpu_ms for *_, cpu_ms in rows], color="tab:green")
    cpu_axis.set_xlabel("machine CPU ms per request")
    fig.suptitle(f"Fixed cost per query ({ROWS} x {DIM}, sequential)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "query_overhead.png", dpi=100)
    return report


if __name__ == "__main__":
    raise SystemExit(main())
