"""What only the embedded bus promises: its log outlives processes and takes many writers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lancedb_ray.events import ChangeEvent, make_consumer, make_publisher
from lancedb_ray.events.embedded import LOG_FILE
from lancedb_ray.settings import EventBusSettings
from tests.test_events_contract import by_key, collect, events_of, make_events

PUBLISH_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, random, sys, time
    from pathlib import Path
    from lancedb_ray.events import ChangeEvent, make_publisher
    from lancedb_ray.settings import EventBusSettings

    settings = EventBusSettings.model_validate_json(sys.argv[1])
    table, count, start_file = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])

    async def main():
        publisher = make_publisher(settings)
        events = [ChangeEvent("db", table, v, "insert", 1, time.time()) for v in range(1, count + 1)]
        while events:
            size = random.randint(1, 4)
            await publisher.publish(events[:size])
            events = events[size:]
        await publisher.close()

    start_file.with_name(f"ready-{table}").touch()
    while not start_file.exists():  # start both writers together
        time.sleep(0.01)
    asyncio.run(main())
    """
)


@pytest.fixture
def settings(tmp_path: Path) -> EventBusSettings:
    return EventBusSettings(backend="embedded", embedded={"directory": str(tmp_path / "events")})


def publish_in_process(
    settings: EventBusSettings, table: str, count: int, start_file: Path
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-c", PUBLISH_SCRIPT, settings.model_dump_json(), table, str(count)]
    return subprocess.Popen(args + [str(start_file)])


def test_events_published_by_a_process_that_exited_are_read_by_a_new_one(
    settings: EventBusSettings, tmp_path: Path
) -> None:
    start = tmp_path / "start"
    start.touch()
    writer = publish_in_process(settings, "orders", 25, start)
    assert writer.wait(timeout=60) == 0

    async def read() -> list[ChangeEvent]:
        consumer = make_consumer(settings, "agent")
        try:
            return events_of(await collect(consumer, 25))
        finally:
            await consumer.close()

    got = asyncio.run(read())
    assert [event.version for event in got] == list(range(1, 26))
    assert {event.table for event in got} == {"orders"}


def test_two_publisher_processes_at_once_lose_nothing(settings: EventBusSettings, tmp_path: Path) -> None:
    start = tmp_path / "start"
    writers = [publish_in_process(settings, f"table{i}", 300, start) for i in range(2)]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-table{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline, "the writer processes did not start"
        time.sleep(0.01)
    start.touch()
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]

    async def read() -> list[ChangeEvent]:
        consumer = make_consumer(settings, "agent")
        try:
            return events_of(await collect(consumer, 600))
        finally:
            await consumer.close()

    got = by_key(asyncio.run(read()))
    for i in range(2):
        assert [event.version for event in got[f"db/table{i}"]] == list(range(1, 301))
    lines = (Path(settings.embedded.directory) / LOG_FILE).read_bytes().splitlines()
    assert len(lines) == 600 and all(json.loads(line) for line in lines)


def test_a_line_torn_by_a_crashed_writer_is_skipped_and_nothing_else_is_lost(
    settings: EventBusSettings,
) -> None:
    before, after = make_events(tables=1, versions=3), make_events(tables=2, versions=2)

    async def scenario() -> list[ChangeEvent]:
        publisher = make_publisher(settings)
        await publisher.publish(before)
        await publisher.close()
        with (Path(settings.embedded.directory) / LOG_FILE).open("ab") as log:
            log.write(b'{"database":"db","table":"t0","vers')  # a writer died here
        publisher = make_publisher(settings)
        await publisher.publish(after)
        await publisher.close()
        consumer = make_consumer(settings, "agent")
        try:
            return events_of(await collect(consumer, 7))
        finally:
            await consumer.close()

    assert asyncio.run(scenario()) == before + after


def test_a_second_consumer_of_a_group_stands_by_until_the_first_closes(
    settings: EventBusSettings,
) -> None:
    sent = make_events(tables=1, versions=4)

    async def scenario() -> None:
        publisher = make_publisher(settings)
        await publisher.publish(sent)
        await publisher.close()
        active, standby = make_consumer(settings, "agent"), make_consumer(settings, "agent")
        delivered = await collect(active, 4)
        await active.commit(delivered[:1])
        assert await standby.poll(10, 0.3) == []  # the group is taken
        await active.close()
        assert events_of(await collect(standby, 3)) == sent[1:]
        await standby.close()

    asyncio.run(scenario())
    groups = Path(settings.embedded.directory) / "groups"
    assert sorted(path.name for path in groups.iterdir()) == ["agent.json", "agent.lock"]
