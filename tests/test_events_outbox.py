"""ChangePublisher: a write never waits for the bus, and no event is lost when the bus is down.

The faults are real: a Kafka broker that is not running yet, and an embedded
bus whose directory cannot be created because a file sits where it should be.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lancedb_ray.events import ChangeEvent, ChangePublisher, make_consumer
from lancedb_ray.settings import EventBusSettings
from tests.support.kafka import TansuBroker, free_port
from tests.support.waiting import wait_for
from tests.test_events_contract import by_key, collect, events_of, kafka_settings, make_events


def outbox_lines(settings: EventBusSettings) -> int:
    return sum(
        len(path.read_bytes().splitlines()) for path in Path(settings.outbox_directory).glob("*.jsonl")
    )


def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    wait_for(condition, timeout_s, "the outbox to reach the expected state", interval_s=0.02)


def read_all(settings: EventBusSettings, count: int) -> list[ChangeEvent]:
    async def read() -> list[ChangeEvent]:
        consumer = make_consumer(settings, "agent")
        try:
            return events_of(await collect(consumer, count))
        finally:
            await consumer.close()

    return asyncio.run(read())


def emit_all(publisher: ChangePublisher, events: list[ChangeEvent]) -> float:
    """Emit every event; returns the slowest single emit in seconds."""
    slowest = 0.0
    for event in events:
        started = time.perf_counter()
        publisher.emit(event)
        slowest = max(slowest, time.perf_counter() - started)
    return slowest


def fast_retries(settings: EventBusSettings) -> EventBusSettings:
    return settings.model_copy(
        update={"retry_initial_seconds": 0.05, "retry_max_seconds": 0.3, "publish_timeout_seconds": 5}
    )


@pytest.fixture
def blocked_embedded(tmp_path: Path) -> EventBusSettings:
    """An embedded bus that fails every publish until the file in its way is removed."""
    (tmp_path / "blocked").write_text("a file where the bus directory's parent should be")
    return fast_retries(
        EventBusSettings(
            backend="embedded",
            embedded={"directory": str(tmp_path / "blocked" / "events")},
            outbox_directory=str(tmp_path / "outbox"),
        )
    )


def unblock(settings: EventBusSettings) -> None:
    Path(settings.embedded.directory).parent.unlink()


def test_healthy_bus_gets_every_event_in_order(tmp_path: Path) -> None:
    settings = EventBusSettings(
        embedded={"directory": str(tmp_path / "events")}, outbox_directory=str(tmp_path / "outbox")
    )
    sent = make_events(tables=3, versions=20)
    publisher = ChangePublisher(settings)
    try:
        emit_all(publisher, sent)
        assert publisher.flush(10)
        assert publisher.pending == 0
    finally:
        publisher.close()
    assert by_key(read_all(settings, len(sent))) == by_key(sent)
    assert outbox_lines(settings) == 0


@pytest.mark.kafka
def test_kafka_down_events_wait_in_the_outbox_and_arrive_once_it_is_up(tmp_path: Path) -> None:
    broker = TansuBroker(free_port(), tmp_path / "tansu.log")  # not started: the port is closed
    settings = fast_retries(kafka_settings(broker.bootstrap, tmp_path))
    sent = make_events(tables=2, versions=10)
    publisher = ChangePublisher(settings)
    try:
        assert emit_all(publisher, sent) < 0.05
        until(lambda: outbox_lines(settings) == len(sent))
        assert publisher.pending == len(sent)
        assert not publisher.flush(0.5)
        broker.start()
        assert publisher.flush(30)
        assert publisher.pending == 0
        assert outbox_lines(settings) == 0
        got = read_all(settings, len(sent))
    finally:
        publisher.close()
        broker.stop()
    assert by_key(got) == by_key(sent)


def test_outbox_survives_a_publisher_restart_and_keeps_order(
    blocked_embedded: EventBusSettings,
) -> None:
    settings = blocked_embedded
    sent = make_events(tables=2, versions=8)
    first = ChangePublisher(settings)
    emit_all(first, sent[:10])
    until(lambda: first.pending == 10 and outbox_lines(settings) == 10)
    first.close()
    assert outbox_lines(settings) == 10

    second = ChangePublisher(settings)  # the bus is still down
    try:
        until(lambda: second.pending == 10)
        emit_all(second, sent[10:])
        until(lambda: outbox_lines(settings) == len(sent))
        unblock(settings)
        assert second.flush(30)
    finally:
        second.close()
    assert by_key(read_all(settings, len(sent))) == by_key(sent)
    assert outbox_lines(settings) == 0


CRASHING_PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from lancedb_ray.events import ChangeEvent, ChangePublisher
    from lancedb_ray.settings import EventBusSettings

    publisher = ChangePublisher(EventBusSettings.model_validate_json(sys.argv[1]))
    for version in range(1, 13):
        publisher.emit(ChangeEvent("db", "orders", version, "insert", 1, time.time()))
    time.sleep(600)  # killed by the test, never closed
    """
)


def test_events_of_a_killed_process_are_published_by_the_next_one(
    blocked_embedded: EventBusSettings,
) -> None:
    settings = blocked_embedded
    process = subprocess.Popen([sys.executable, "-c", CRASHING_PUBLISHER, settings.model_dump_json()])
    try:
        until(lambda: outbox_lines(settings) == 12, timeout_s=30)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    unblock(settings)

    successor = ChangePublisher(settings)
    try:
        assert successor.flush(30)
    finally:
        successor.close()
    got = read_all(settings, 12)
    assert [(event.table, event.version) for event in got] == [("orders", v) for v in range(1, 13)]
    assert list(Path(settings.outbox_directory).iterdir()) == []


def test_an_unusable_outbox_does_not_stop_direct_publishing(tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")
    settings = EventBusSettings(
        embedded={"directory": str(tmp_path / "events")},
        outbox_directory=str(tmp_path / "not-a-directory" / "outbox"),
    )
    sent = make_events(tables=1, versions=5)
    publisher = ChangePublisher(settings)
    try:
        emit_all(publisher, sent)
        assert publisher.flush(10)
    finally:
        publisher.close()
    publisher.emit(sent[0])  # after close: logged and dropped, never raised
    assert read_all(settings, len(sent)) == sent


def test_with_bus_and_outbox_both_down_events_wait_in_memory(
    blocked_embedded: EventBusSettings, tmp_path: Path
) -> None:
    (tmp_path / "no-outbox").write_text("")
    settings = blocked_embedded.model_copy(
        update={"outbox_directory": str(tmp_path / "no-outbox" / "outbox")}
    )
    sent = make_events(tables=2, versions=3)
    publisher = ChangePublisher(settings)
    try:
        emit_all(publisher, sent)
        assert not publisher.flush(0.5)
        assert publisher.pending == len(sent)
        unblock(settings)
        assert publisher.flush(10)
    finally:
        publisher.close()
    assert by_key(read_all(settings, len(sent))) == by_key(sent)
