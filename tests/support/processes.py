"""Helpers for the servers the tests start: free loopback ports, stopping processes."""

from __future__ import annotations

import itertools
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


def serve_ingress_env() -> dict[str, str]:
    """Serve ingress ports of its own for one Ray cluster, as environment variables for it.

    Two clusters on one machine (a test session and a CLI or benchmark it starts) would
    otherwise share them. Serve's replicas listen on ports taken in order from a fixed range
    (30000 up) with SO_REUSEPORT, so the kernel would hand one cluster's requests to the
    other's replicas (a 401 or 404 from an application nobody asked); HAProxy's stats and
    metrics ports are fixed too (its files are per node already). Each call takes the next
    window of this process's block, so the clusters of one test session never share a port
    (random windows did, now and then: a 401 from another cluster in CI).
    """
    http = _FIRST_PORT + next(_WINDOWS) % _WINDOWS_PER_PROCESS * _WINDOW
    grpc = http + 11_000  # both below Linux's ephemeral ports (32768 up)
    return {"RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + _SERVE_PORTS),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + _SERVE_PORTS),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}


_SERVE_PORTS = 40  # replicas one test cluster runs at once, with room
_WINDOW = _SERVE_PORTS + 8
_WINDOWS_PER_PROCESS = 32  # clusters one test session starts, and more
# This process's block of windows (another session on the machine most likely has another).
_FIRST_PORT = random.randrange(10_000, 21_000 - _WINDOWS_PER_PROCESS * _WINDOW)
_WINDOWS = itertools.count()


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
           **serve_ingress_env()}
    process = subprocess.run([sys.executable, "-m", module, str(workdir)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
    return json.loads(process.stdout.strip().splitlines()[-1])
