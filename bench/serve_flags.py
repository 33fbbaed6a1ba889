"""Serve settings side by side: the same small query load against services started with other flags.

Two steps, so that any process timer can pair the loads (A, B, A, B, ...):

    # one service per flag set, each with a Ray instance of its own (Ctrl-C stops it)
    .venv/bin/python bench/serve_flags.py serve --port 8101 --root /tmp/a
    .venv/bin/python bench/serve_flags.py serve --port 8102 --root /tmp/b \
        --env RAY_SERVE_THROUGHPUT_OPTIMIZED=1
    # the load: builds the table on first use, then queries it; prints p50 and QPS
    .venv/bin/python bench/serve_flags.py load --url http://127.0.0.1:8101 --threads 8

Flags are environment variables read by Ray Serve when its processes start (``--env``),
or the service's ``--proxy`` (HAProxy or Serve's Python proxy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS, DIM = 100, 32


def serve(args: argparse.Namespace) -> int:
    root = Path(args.root)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    # Two services on one host: HAProxy's files apart (the CLI moves Serve's ports apart itself).
    env.update(RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=str(root / "haproxy" / "haproxy.cfg"),
               RAY_SERVE_HAPROXY_SOCKET_PATH=str(root / "haproxy" / "admin.sock"),
               RAY_SERVE_HAPROXY_SERVER_STATE_BASE=str(root / "haproxy"),
               RAY_SERVE_HAPROXY_SERVER_STATE_FILE=str(root / "haproxy" / "server-state"))
    env.update(item.split("=", 1) for item in args.env)
    config = root / "settings.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"server:\n  proxy: {args.proxy}\n"
                      f"state_directory: {root / 'state'}\n")
    command = [sys.executable, "-m", "lancedb_ray.cli", "serve", "--address", "local", "--port",
               str(args.port), "--storage", str(root / "data"), "--config", str(config)]
    return subprocess.call(command, env=env, cwd=REPO)


def load(args: argparse.Namespace) -> int:
    import lancedb
    import numpy as np
    import pyarrow as pa

    db = lancedb.connect("db://bench", api_key="lancedb-ray-dev-key", host_override=args.url)
    vectors = np.random.default_rng(0).normal(size=(ROWS, DIM)).astype("float32")
    table = db.create_table("t", pa.table({"id": np.arange(ROWS), "vector": pa.FixedSizeListArray
                                           .from_arrays(pa.array(vectors.ravel()), DIM)}), exist_ok=True)
    queries = np.random.default_rng(1).normal(size=(args.queries, DIM)).astype("float32")
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(part: np.ndarray) -> None:
        for q in part:
            started = time.perf_counter()
            table.search(q).limit(10).to_arrow()
            with lock:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(part,))
               for part in np.array_split(queries, args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    print(f"threads {args.threads}: p50 {statistics.median(latencies) * 1000:.2f} ms, "
          f"QPS {len(latencies) / elapsed:.1f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve")
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--root", required=True)
    serve_parser.add_argument("--proxy", choices=["haproxy", "serve"], default="haproxy")
    serve_parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for Ray Serve")
    load_parser = commands.add_parser("load")
    load_parser.add_argument("--url", required=True)
    load_parser.add_argument("--queries", type=int, default=400)
    load_parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    return serve(args) if args.command == "serve" else load(args)


if __name__ == "__main__":
    sys.exit(main())
