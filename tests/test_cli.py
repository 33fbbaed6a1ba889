"""`lancedb-ray serve`: one command starts the service, prints how to connect, and stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lancedb
import pyarrow as pa

from tests.support.service import free_port, wait_healthy


def test_serve_command_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    storage = tmp_path / "storage"
    env = {**os.environ, "RAY_ADDRESS": "local",  # a Ray instance of its own
           "LANCEDB_RAY_EVENTS__EMBEDDED__DIRECTORY": str(tmp_path / "events"),
           "LANCEDB_RAY_EVENTS__OUTBOX_DIRECTORY": str(tmp_path / "outbox"),
           "LANCEDB_RAY_AGENT__JOBS_DIRECTORY": str(tmp_path / "jobs"),
           "LANCEDB_RAY_EXECUTORS__NUM_EXECUTORS": "1",
           # HAProxy ports of its own, beside the test session's Serve instance
           "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
           "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}
    process = subprocess.Popen(
        [sys.executable, "-m", "lancedb_ray.cli", "serve", "--port", str(port),
         "--storage", str(storage), "--api-key", "cli-key"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        printed = []
        for line in process.stdout:  # as a person would: wait for the prompt
            printed.append(line)
            if "Press Ctrl-C to stop." in line:
                break
        wait_healthy(url, timeout_s=30)
        db = lancedb.connect("db://clidb", api_key="cli-key", host_override=url)
        db.create_table("t", pa.table({"id": [1, 2, 3]}))
        assert db.open_table("t").count_rows() == 3
        assert (storage / "clidb" / "t.lance").is_dir(), "the database lives under --storage"
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=180)
        output = "".join(printed) + rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, f"exit code {process.returncode}: {output[-3000:]}"
    assert f"lancedb-ray is serving at {url}" in output
    assert "api_key='cli-key'" in output
    assert "stopped" in output
