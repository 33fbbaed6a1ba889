"""The one event-bus interface every backend implements, and the factories.

Callers depend only on :class:`EventPublisher` and :class:`EventConsumer`; the
backend is picked by ``EventBusSettings.backend`` and imported lazily, so a
process on the embedded bus never loads the Kafka or Event Hubs clients.
Every backend is wrapped once here, so metrics and error types are uniform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lancedb_ray.errors import Unavailable
from lancedb_ray.events import metrics
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.settings import EventBusBackend, EventBusSettings


class EventBusError(Unavailable):
    """The bus could not be reached or refused the operation; retrying may succeed."""

    name = "EventBusError"


@dataclass(frozen=True)
class Delivery:
    """An event handed to a consumer, with where it sits in the bus.

    ``position`` is backend-specific and opaque: pass deliveries back to the
    consumer's ``commit`` and nothing else.
    """

    event: ChangeEvent
    position: Any


class EventPublisher(Protocol):
    async def publish(self, events: Sequence[ChangeEvent]) -> None:
        """Durably hand over ``events`` (one key's events stay in order); raise on failure."""

    async def close(self) -> None: ...


class EventConsumer(Protocol):
    async def poll(self, max_events: int, timeout_s: float) -> list[Delivery]:
        """Up to ``max_events`` new events; ``[]`` if none arrived within ``timeout_s``."""

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        """Checkpoint: a later consumer of this group resumes after these deliveries.

        Events delivered but never committed are delivered again after a
        restart, so consumption is at-least-once.
        """

    async def close(self) -> None: ...


def make_publisher(settings: EventBusSettings) -> EventPublisher:
    backend = EventBusBackend(settings.backend)
    if backend is EventBusBackend.EMBEDDED:
        from lancedb_ray.events.embedded import EmbeddedPublisher

        inner: EventPublisher = EmbeddedPublisher(settings.embedded)
    elif backend is EventBusBackend.KAFKA:
        from lancedb_ray.events.kafka import KafkaPublisher

        inner = KafkaPublisher(settings.kafka)
    else:
        from lancedb_ray.events.eventhub import make_eventhub_publisher

        inner = make_eventhub_publisher(settings.eventhub)
    return _MeteredPublisher(inner, backend.value)


def make_consumer(settings: EventBusSettings, group: str) -> EventConsumer:
    """A consumer in ``group``; each group sees every event once it is committed.

    On Event Hubs ``group`` is the hub's consumer group, which must exist
    (``$Default`` always does).
    """
    backend = EventBusBackend(settings.backend)
    if backend is EventBusBackend.EMBEDDED:
        from lancedb_ray.events.embedded import EmbeddedConsumer

        inner: EventConsumer = EmbeddedConsumer(settings.embedded, group)
    elif backend is EventBusBackend.KAFKA:
        from lancedb_ray.events.kafka import KafkaConsumer

        inner = KafkaConsumer(settings.kafka, group)
    else:
        from lancedb_ray.events.eventhub import make_eventhub_consumer

        inner = make_eventhub_consumer(settings.eventhub, group)
    return _MeteredConsumer(inner, backend.value, group)


def default_group(settings: EventBusSettings) -> str:
    """The consumer group configured for the chosen backend (the agent's group)."""
    backend = EventBusBackend(settings.backend)
    if backend is EventBusBackend.EMBEDDED:
        return settings.embedded.group_id
    if backend is EventBusBackend.KAFKA:
        return settings.kafka.group_id
    return settings.eventhub.consumer_group


class _MeteredPublisher:
    def __init__(self, inner: EventPublisher, backend: str) -> None:
        self._inner = inner
        self._backend = backend

    async def publish(self, events: Sequence[ChangeEvent]) -> None:
        if not events:
            return
        try:
            await self._inner.publish(events)
        except Exception as exc:
            metrics.publish_failed(self._backend)
            raise EventBusError(
                f"publishing {len(events)} change events to the {self._backend} bus failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        metrics.published(self._backend, len(events))

    async def close(self) -> None:
        await self._inner.close()


class _MeteredConsumer:
    def __init__(self, inner: EventConsumer, backend: str, group: str) -> None:
        self._inner = inner
        self._backend = backend
        self._group = group

    async def poll(self, max_events: int, timeout_s: float) -> list[Delivery]:
        try:
            deliveries = await self._inner.poll(max_events, timeout_s)
        except Exception as exc:
            raise EventBusError(
                f"polling the {self._backend} bus for group {self._group!r} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        metrics.consumed(self._backend, self._group, len(deliveries))
        return deliveries

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        try:
            await self._inner.commit(deliveries)
        except Exception as exc:
            raise EventBusError(
                f"committing {len(deliveries)} deliveries on the {self._backend} bus for group "
                f"{self._group!r} failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def close(self) -> None:
        await self._inner.close()
