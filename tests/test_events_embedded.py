"""What only the embedded bus promises: its log outlives processes, takes many writers, and is
trimmed of what every group consumed, never of what one has not."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lancedb_ray.events import ChangeEvent, make_consumer, make_publisher
from lancedb_ray.events.embedded import DATABASE_FILE, EmbeddedConsumer, read_all
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
    assert len(read_all(Path(settings.embedded.directory))) == 600


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
    assert sorted(path.name for path in groups.iterdir()) == ["agent.lock"]


def test_a_claim_that_finishes_after_close_leaves_the_group_free(settings: EventBusSettings) -> None:
    """The agent cancels a poll and closes its consumer while the poll's claim of the group still
    runs in a worker thread: that claim must not take the group after the close (it would hold the
    group's lock and connection for ever, and no standby could take over)."""

    async def scenario() -> None:
        publisher = make_publisher(settings)
        await publisher.publish(make_events(tables=1, versions=1))
        await publisher.close()
        closing = EmbeddedConsumer(settings.embedded, "agent")
        standby = make_consumer(settings, "agent")
        await closing.close()
        assert closing._claim_group() is False  # the late claim, as it lands after close()
        assert len(await collect(standby, 1)) == 1  # the group is free
        await standby.close()

    asyncio.run(scenario())


# -- trimming ----------------------------------------------------------------------------------


def log_bytes(settings: EventBusSettings) -> int:
    """The log's size on disk: the database and its write-ahead log."""
    directory = Path(settings.embedded.directory)
    return sum(path.stat().st_size for path in directory.glob(f"{DATABASE_FILE}*"))


def trimming(settings: EventBusSettings, retention_s: float) -> EventBusSettings:
    return settings.model_copy(update={"embedded": settings.embedded.model_copy(
        update={"retention_seconds": retention_s})})


def test_consumed_events_are_trimmed_and_the_log_shrinks(settings: EventBusSettings) -> None:
    settings = trimming(settings, 0.0)
    bulky = [ChangeEvent("db", f"table-{'x' * 200}-{i}", v, "insert", 1, time.time())
             for i in range(20) for v in range(1, 51)]

    async def scenario() -> tuple[int, int]:
        publisher = make_publisher(settings)
        await publisher.publish(bulky)
        await publisher.close()
        full = log_bytes(settings)
        consumer = make_consumer(settings, "agent")
        await consumer.commit(await collect(consumer, len(bulky)))  # every event consumed: trimmed
        await consumer.close()
        return full, log_bytes(settings)

    full, trimmed = asyncio.run(scenario())
    assert read_all(Path(settings.embedded.directory)) == []
    assert trimmed < full / 4, (full, trimmed)


def test_events_a_group_has_not_committed_are_kept(settings: EventBusSettings) -> None:
    settings = trimming(settings, 0.0)
    sent = make_events(tables=2, versions=5)

    async def scenario() -> list[ChangeEvent]:
        publisher = make_publisher(settings)
        await publisher.publish(sent)
        fast, slow = make_consumer(settings, "fast"), make_consumer(settings, "slow")
        fast_got, slow_got = await collect(fast, len(sent)), await collect(slow, len(sent))
        await slow.commit(slow_got[:3])  # "slow" has consumed only three
        await slow.close()
        await fast.commit(fast_got)  # "fast" all of them: what both consumed goes
        await fast.close()
        kept = read_all(Path(settings.embedded.directory))
        assert kept == sent[3:]
        await publisher.publish(sent[:2])  # more, after the trim
        await publisher.close()
        slow = make_consumer(settings, "slow")  # restarts from its checkpoint
        try:
            return events_of(await collect(slow, len(sent) - 3 + 2))
        finally:
            await slow.close()

    assert asyncio.run(scenario()) == sent[3:] + sent[:2]  # no gap, nothing twice


def test_consumed_events_are_kept_for_the_retention_period(settings: EventBusSettings) -> None:
    settings = trimming(settings, 3600.0)
    sent = make_events(tables=1, versions=4)

    async def scenario() -> None:
        publisher = make_publisher(settings)
        await publisher.publish(sent)
        await publisher.close()
        consumer = make_consumer(settings, "agent")
        await consumer.commit(await collect(consumer, len(sent)))
        await consumer.close()

    asyncio.run(scenario())
    assert read_all(Path(settings.embedded.directory)) == sent  # consumed, but younger than an hour
