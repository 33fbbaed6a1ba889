"""A query node in the test process, executors off, with a change sink the test controls.

The deployment mode without plan executors (queries run in the query node, as
``executors.enabled: false`` deploys it), and the place to inject faults into
what runs after a commit. Served by uvicorn on a thread, so the official client
talks to it over HTTP exactly as to the Serve deployment.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn

from lancedb_ray.api.http import create_app
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.execution.local import LocalExecutor
from lancedb_ray.service.container import Services
from lancedb_ray.settings import Settings
from tests.support.processes import free_port
from tests.support.service import API_KEY, LiveService, service_settings, wait_healthy


@dataclass
class ChangeSink:
    """Records change events, or fails on each while ``fail`` is set."""

    fail: bool = False
    events: list[ChangeEvent] = field(default_factory=list)
    failures: int = 0

    def __call__(self, event: ChangeEvent) -> None:
        if self.fail:
            self.failures += 1
            raise RuntimeError("injected: the change publisher is down")
        self.events.append(event)


@dataclass
class LocalNode:
    service: LiveService
    sink: ChangeSink


def _serve(root: Path) -> tuple[LocalNode, uvicorn.Server, threading.Thread]:
    overrides = service_settings(root)
    overrides["executors"] = {"enabled": False}
    sink = ChangeSink()
    app = create_app(Services.build(Settings.load(None, **overrides), sink, LocalExecutor))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="local-query-node", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout_s=60)
    return LocalNode(LiveService(url, API_KEY, root / "data", overrides), sink), server, thread


@pytest.fixture(scope="session")
def local_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    node, server, thread = _serve(tmp_path_factory.mktemp("local-node"))
    yield node
    server.should_exit = True
    thread.join(timeout=30)
