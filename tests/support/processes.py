"""Helpers for the servers the tests start: free loopback ports, stopping processes."""

from __future__ import annotations

import json
import os
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
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.run([sys.executable, "-m", module, str(workdir)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
    return json.loads(process.stdout.strip().splitlines()[-1])
