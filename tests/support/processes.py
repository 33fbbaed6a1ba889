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


def serve_ingress_ports() -> dict[str, str]:
    """Ports of its own for one Ray cluster's Serve replicas, as environment variables for it.

    Serve's replicas listen on ports taken in order from a fixed range (30000 up) with
    SO_REUSEPORT: two clusters on one machine (a test session and a CLI it starts, or two
    sessions) would share them, and the kernel would hand one cluster's requests to the
    other's replicas (a 401 or 404 from an application nobody asked).
    """
    http = random.randrange(10_000, 21_000 - _SERVE_PORTS)
    grpc = http + 11_000  # both below Linux's ephemeral ports (32768 up)
    return {"RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + _SERVE_PORTS),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + _SERVE_PORTS)}


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
           **serve_ingress_ports()}
    process = subprocess.run([sys.executable, "-m", module, str(workdir)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
    return json.loads(process.stdout.strip().splitlines()[-1])
