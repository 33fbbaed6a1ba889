"""Helpers for the emulator and broker processes the tests start."""

from __future__ import annotations

import subprocess


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
