"""Liveness stays cheap; readiness says whether the node can answer queries right now.

Storage outages are covered on Azurite in test_azure_service.py.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import ray

from tests.support.service import LiveService

NAMESPACE = "lancedb-ray"  # the executors' namespace: settings.ray.namespace's default


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _until(url: str, status: int, timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while (answer := _get(url))[0] != status:
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)
    return answer[1]


def test_health_and_ready_need_no_key(live_service: LiveService) -> None:
    assert _get(f"{live_service.url}/health") == (200, {"status": "ok"})
    assert _get(f"{live_service.url}/ready") == (200, {"status": "ready"})


def test_not_ready_while_an_executor_cannot_answer(live_service: LiveService) -> None:
    _until(f"{live_service.url}/ready", 200)
    # Killed for good: only a new executor (the next probe asks for one) can answer again.
    ray.kill(ray.get_actor("plan-executor-1", namespace=NAMESPACE), no_restart=True)
    body = _until(f"{live_service.url}/ready", 503)
    assert body["status"] == "not ready"
    assert body["problems"] == {"executors": "not answering: plan-executor-1"}
    assert _get(f"{live_service.url}/health")[0] == 200  # liveness does not follow
    assert _until(f"{live_service.url}/ready", 200) == {"status": "ready"}
