"""Helpers for the servers the tests start: free loopback ports, stopping processes."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_ingress_env(avoid: int | None = None) -> dict[str, str]:
    """Serve ingress ports of its own for one Ray cluster, as environment variables for it.

    Two clusters on one machine (a test session and a CLI or benchmark it starts) would
    otherwise share them. Serve's replicas listen on ports taken in order from a fixed range
    (30000 up) with SO_REUSEPORT, so the kernel would hand one cluster's requests to the
    other's replicas (a 401 or 404 from an application nobody asked); HAProxy's stats and
    metrics ports are fixed too (its files are per node already). ``avoid``: the first
    replica port of another cluster, kept clear of.
    """
    while True:
        http = random.randrange(10_000, 21_000 - _SERVE_PORTS)
        if avoid is None or abs(http - avoid) > 2 * _SERVE_PORTS:
            break
    grpc = http + 11_000  # both below Linux's ephemeral ports (32768 up)
    return {"RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + _SERVE_PORTS),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + _SERVE_PORTS),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}


def session_replica_port() -> int | None:
    """The first Serve replica port of this test session's cluster (see ``serve_ingress_env``)."""
    port = os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT")
    return int(port) if port else None


_SERVE_PORTS = 40  # replicas one test cluster runs at once, with room


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 10) -> None:
    """Terminate ``process``, killing it if it does not exit within ``timeout_s``."""
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_scenario(module: str, workdir: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``python -m module workdir`` (a Ray cluster of its own) and return the JSON it prints last."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           **serve_ingress_env(avoid=session_replica_port())}
    process = subprocess.run([sys.executable, "-m", module, str(workdir)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
    return json.loads(process.stdout.strip().splitlines()[-1])
