"""The event-bus contract, run against every backend that can run here.

Each backend subclasses :class:`BusContract` and supplies ``settings``; the
behaviours are what the agent relies on: per-table order, resume after
commit, redelivery of what was not committed, independent groups.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pytest

from lancedb_ray.events import ChangeEvent, Delivery, EventConsumer, make_consumer, make_publisher
from lancedb_ray.settings import EventBusSettings


def make_events(tables: int, versions: int, database: str = "db") -> list[ChangeEvent]:
    """Events of several tables, interleaved the way concurrent writes arrive."""
    return [
        ChangeEvent(database, f"t{t}", v, "insert", 10 * v, time.time(), uuid.uuid4().hex)
        for v in range(1, versions + 1)
        for t in range(tables)
    ]


def by_key(events: Sequence[ChangeEvent]) -> dict[str, list[ChangeEvent]]:
    grouped: dict[str, list[ChangeEvent]] = defaultdict(list)
    for event in events:
        grouped[event.key].append(event)
    return dict(grouped)


async def collect(consumer: EventConsumer, count: int, timeout_s: float = 20.0) -> list[Delivery]:
    """Poll until ``count`` deliveries arrived, then make sure no more follow."""
    deadline = time.monotonic() + timeout_s
    got: list[Delivery] = []
    while len(got) < count and time.monotonic() < deadline:
        got += await consumer.poll(count - len(got), 0.5)
    assert len(got) == count, f"got {len(got)} of {count} events in {timeout_s}s"
    assert await consumer.poll(100, 0.3) == [], "more events than were published"
    return got


def events_of(deliveries: Sequence[Delivery]) -> list[ChangeEvent]:
    return [delivery.event for delivery in deliveries]


class BusContract:
    @pytest.fixture
    def settings(self) -> EventBusSettings:
        raise NotImplementedError

    def test_publish_then_poll_returns_each_keys_events_in_order(self, settings: EventBusSettings) -> None:
        sent = make_events(tables=3, versions=4)

        async def scenario() -> list[Delivery]:
            publisher = make_publisher(settings)
            await publisher.publish(sent[:5])
            await publisher.publish(sent[5:])
            await publisher.close()
            consumer = make_consumer(settings, "order")
            try:
                return await collect(consumer, len(sent))
            finally:
                await consumer.close()

        got = events_of(asyncio.run(scenario()))
        assert by_key(got) == by_key(sent)

    def test_new_consumer_of_the_group_resumes_after_the_commit(self, settings: EventBusSettings) -> None:
        sent = make_events(tables=2, versions=4)

        async def scenario() -> list[Delivery]:
            publisher = make_publisher(settings)
            await publisher.publish(sent[:6])
            first = make_consumer(settings, "resume")
            await first.commit(await collect(first, 6))
            await first.close()
            await publisher.publish(sent[6:])
            await publisher.close()
            second = make_consumer(settings, "resume")
            try:
                return await collect(second, 2)
            finally:
                await second.close()

        assert by_key(events_of(asyncio.run(scenario()))) == by_key(sent[6:])

    def test_uncommitted_events_are_redelivered_to_the_next_consumer(
        self, settings: EventBusSettings
    ) -> None:
        sent = make_events(tables=1, versions=5)  # one key: one ordered stream on any backend

        marker = ChangeEvent("db", "t0", 99, "compaction", 0, time.time())

        async def scenario() -> tuple[list[Delivery], list[Delivery], list[Delivery]]:
            publisher = make_publisher(settings)
            await publisher.publish(sent)
            first = make_consumer(settings, "redeliver")
            delivered = await collect(first, 5)
            await first.commit(delivered[:2])  # stops before committing the rest
            await first.close()
            second = make_consumer(settings, "redeliver")
            redelivered = await collect(second, 3)
            await second.commit(redelivered)
            await second.close()
            await publisher.publish([marker])  # whatever the next consumer sees comes before it
            await publisher.close()
            third = make_consumer(settings, "redeliver")
            try:
                return delivered, redelivered, await collect(third, 1)
            finally:
                await third.close()

        delivered, redelivered, after_full_commit = asyncio.run(scenario())
        assert events_of(delivered) == sent
        assert events_of(redelivered) == sent[2:]
        assert events_of(after_full_commit) == [marker]

    def test_two_groups_each_see_every_event(self, settings: EventBusSettings) -> None:
        sent = make_events(tables=2, versions=3)

        async def read_all(group: str) -> list[ChangeEvent]:
            consumer = make_consumer(settings, group)
            try:
                return events_of(await collect(consumer, len(sent)))
            finally:
                await consumer.close()

        async def scenario() -> list[list[ChangeEvent]]:
            publisher = make_publisher(settings)
            await publisher.publish(sent)
            await publisher.close()
            return await asyncio.gather(read_all("indexer"), read_all("auditor"))

        for seen in asyncio.run(scenario()):
            assert by_key(seen) == by_key(sent)

    def test_poll_with_nothing_to_read_returns_empty_within_the_timeout(
        self, settings: EventBusSettings
    ) -> None:
        async def scenario() -> list[tuple[list[Delivery], float]]:
            consumer = make_consumer(settings, "idle")
            results = []
            try:
                for _ in range(2):
                    started = time.monotonic()
                    results.append((await consumer.poll(10, 0.4), time.monotonic() - started))
            finally:
                await consumer.close()
            return results

        for deliveries, elapsed in asyncio.run(scenario()):
            assert deliveries == []
            assert elapsed < 0.4 + 1.0

    def test_events_survive_closing_and_reopening_the_publisher(self, settings: EventBusSettings) -> None:
        sent = make_events(tables=1, versions=6)

        async def scenario() -> list[Delivery]:
            for part in (sent[:3], sent[3:]):
                publisher = make_publisher(settings)
                await publisher.publish(part)
                await publisher.close()
            consumer = make_consumer(settings, "reopen")
            try:
                return await collect(consumer, len(sent))
            finally:
                await consumer.close()

        assert events_of(asyncio.run(scenario())) == sent


class TestEmbeddedBus(BusContract):
    @pytest.fixture
    def settings(self, tmp_path: Path) -> EventBusSettings:
        return EventBusSettings(
            backend="embedded",
            embedded={"directory": str(tmp_path / "events")},
            outbox_directory=str(tmp_path / "outbox"),
        )


def kafka_settings(bootstrap: str, tmp_path: Path) -> EventBusSettings:
    """A private topic per test; short sessions so a new group member joins in about 1 s."""
    return EventBusSettings(
        backend="kafka",
        kafka={
            "bootstrap_servers": bootstrap,
            "topic": f"changes-{uuid.uuid4().hex[:12]}",
            "session_timeout_ms": 1000,
            "heartbeat_interval_ms": 300,
        },
        outbox_directory=str(tmp_path / "outbox"),
    )


@pytest.mark.kafka
class TestKafkaBus(BusContract):
    @pytest.fixture
    def settings(self, kafka_broker: str, tmp_path: Path) -> EventBusSettings:
        return kafka_settings(kafka_broker, tmp_path)
