"""Helpers for the servers the tests start: free loopback ports, stopping processes."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from lancedb_ray import serve_ports

REPO = Path(__file__).resolve().parents[2]
free_port = serve_ports.free_port  # a port nothing listens on, for a server a test starts


def serve_ingress_env() -> dict[str, str]:
    """Serve's machine-wide ports for one Ray cluster of a test session, as environment variables.

    Two clusters on one machine (a test session and a CLI run or scenario it starts) would
    otherwise share them (``lancedb_ray.serve_ports`` says how: a 401 from the other cluster's
    application). Each call takes the next ingress block of this process's range, so the
    clusters of one test session never share a replica port (drawn blocks could, when two
    clusters start at once).
    """
    first = _FIRST_PORT + next(_BLOCKS) % _BLOCKS_PER_PROCESS * serve_ports.INGRESS_PORTS
    return serve_ports.ports_apart({}, first_ingress_port=first)


_BLOCKS_PER_PROCESS = 32  # clusters one test session starts, and more
# This process's range of blocks, below the product's (30000 up) and, with the gRPC offset, below
# Linux's ephemeral ports (another session on the machine most likely has another range).
_FIRST_PORT = random.randrange(10_000, 30_000 - serve_ports.GRPC_OFFSET
                               - _BLOCKS_PER_PROCESS * serve_ports.INGRESS_PORTS)
_BLOCKS = itertools.count()


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
