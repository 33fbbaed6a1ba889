"""The Azure Event Hubs bus (azure-eventhub), with checkpoints in Blob Storage.

Publishing sends one batch per ``database/table`` partition key, so a
table's events land on one partition in order. Consuming adapts the SDK's
push API to poll/commit: ``receive_batch`` runs as a background task whose
callback waits to put events into a bounded queue (the back-pressure), and
``poll`` takes from that queue. ``commit`` checkpoints, per partition, the last
delivered event through its ``PartitionContext``, so the SDK's load balancer
and ``BlobCheckpointStore`` decide where a restarted consumer resumes.

Authentication: ``connection_string``, or ``fully_qualified_namespace`` with
``DefaultAzureCredential`` (workload identity on AKS); checkpoints likewise
through ``checkpoint_connection_string`` or ``checkpoint_account_url``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient, PartitionContext
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import ContainerClient

from lancedb_ray.errors import InvalidInput
from lancedb_ray.events.bus import Delivery
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.settings import EventHubBusSettings

_LOG = logging.getLogger(__name__)

EARLIEST = "-1"  # where a consumer group without a checkpoint starts: the oldest retained event


def make_eventhub_publisher(settings: EventHubBusSettings) -> EventHubPublisher:
    credential = _credential(settings)
    return EventHubPublisher(producer_client(settings, credential), credential)


def make_eventhub_consumer(settings: EventHubBusSettings, group: str) -> EventHubConsumer:
    credential = _credential(settings)
    client = consumer_client(settings, group, checkpoint_store(settings, credential), credential)
    return EventHubConsumer(client, settings, credential)


def _credential(settings: EventHubBusSettings) -> Any | None:
    """One DefaultAzureCredential, only when some part does not use a connection string."""
    needs_identity = settings.connection_string is None or (
        settings.checkpoint_connection_string is None and settings.checkpoint_account_url
    )
    if not needs_identity:
        return None
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()


def producer_client(settings: EventHubBusSettings, credential: Any | None) -> EventHubProducerClient:
    if settings.connection_string is not None:
        return EventHubProducerClient.from_connection_string(
            settings.connection_string.get_secret_value(), eventhub_name=settings.eventhub_name
        )
    return EventHubProducerClient(_namespace(settings), settings.eventhub_name, credential=credential)


def consumer_client(
    settings: EventHubBusSettings,
    group: str,
    store: BlobCheckpointStore,
    credential: Any | None,
) -> EventHubConsumerClient:
    if settings.connection_string is not None:
        return EventHubConsumerClient.from_connection_string(
            settings.connection_string.get_secret_value(),
            consumer_group=group,
            eventhub_name=settings.eventhub_name,
            checkpoint_store=store,
        )
    return EventHubConsumerClient(
        _namespace(settings), settings.eventhub_name, group, credential, checkpoint_store=store
    )


def checkpoint_store(settings: EventHubBusSettings, credential: Any | None) -> BlobCheckpointStore:
    """Checkpoints are what make a restarted consumer resume, so one is required."""
    if settings.checkpoint_connection_string is not None:
        return BlobCheckpointStore.from_connection_string(
            settings.checkpoint_connection_string.get_secret_value(), settings.checkpoint_container
        )
    if settings.checkpoint_account_url:
        return BlobCheckpointStore(
            settings.checkpoint_account_url, settings.checkpoint_container, credential=credential
        )
    raise InvalidInput("the eventhub bus needs checkpoint_connection_string or checkpoint_account_url")


async def ensure_checkpoint_container(settings: EventHubBusSettings, credential: Any | None) -> None:
    """Create the checkpoint container if missing: BlobCheckpointStore expects it to exist."""
    if settings.checkpoint_connection_string is not None:
        container = ContainerClient.from_connection_string(
            settings.checkpoint_connection_string.get_secret_value(), settings.checkpoint_container
        )
    else:
        container = ContainerClient(
            settings.checkpoint_account_url, settings.checkpoint_container, credential=credential
        )
    async with container:
        try:
            await container.create_container()
        except ResourceExistsError:
            pass


def _namespace(settings: EventHubBusSettings) -> str:
    if not settings.fully_qualified_namespace:
        raise InvalidInput("the eventhub bus needs connection_string or fully_qualified_namespace")
    return settings.fully_qualified_namespace


class EventHubPublisher:
    def __init__(self, client: EventHubProducerClient, credential: Any | None) -> None:
        self._client = client
        self._credential = credential

    async def publish(self, events: Sequence[ChangeEvent]) -> None:
        by_key: dict[str, list[ChangeEvent]] = {}
        for event in events:
            by_key.setdefault(event.key, []).append(event)
        for key, keyed in by_key.items():
            batch = await self._client.create_batch(partition_key=key)
            for event in keyed:
                data = EventData(event.to_json())
                data.content_type = "application/json"
                try:
                    batch.add(data)
                except ValueError:  # the batch is full: send it, start the next
                    await self._client.send_batch(batch)
                    batch = await self._client.create_batch(partition_key=key)
                    batch.add(data)
            await self._client.send_batch(batch)

    async def close(self) -> None:
        await self._client.close()
        if self._credential is not None:
            await self._credential.close()


@dataclass(frozen=True, eq=False)
class EventHubPosition:
    """Where a delivery came from; ``generation`` tells a stale partition claim from a live one."""

    partition_id: str
    generation: int
    context: PartitionContext
    event: EventData


class EventHubConsumer:
    def __init__(
        self, client: EventHubConsumerClient, settings: EventHubBusSettings, credential: Any | None
    ) -> None:
        self._client = client
        self._settings = settings
        self._credential = credential
        self._queue: asyncio.Queue[EventHubPosition] = asyncio.Queue(settings.max_buffered_events)
        self._generations: dict[str, int] = {}
        self._receiver: asyncio.Task[None] | None = None
        self._closing = False

    async def poll(self, max_events: int, timeout_s: float) -> list[Delivery]:
        await self._ensure_receiving()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        deliveries: list[Delivery] = []
        while len(deliveries) < max_events:
            try:
                position = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if deliveries or remaining <= 0:
                    break
                try:
                    position = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if self._is_current(position):
                event = _decode(position)
                if event is not None:
                    deliveries.append(Delivery(event, position))
        return deliveries

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        last: dict[str, EventHubPosition] = {}
        for delivery in deliveries:
            position: EventHubPosition = delivery.position
            if not self._is_current(position):
                continue  # the partition moved to another consumer, whose checkpoint wins
            seen = last.get(position.partition_id)
            if seen is None or position.event.sequence_number > seen.event.sequence_number:
                last[position.partition_id] = position
        for position in last.values():
            await position.context.update_checkpoint(position.event)

    async def close(self) -> None:
        self._closing = True
        while not self._queue.empty():  # unblock a callback waiting for room
            self._queue.get_nowait()
        await self._client.close()  # stops the partition receivers and the connection
        if self._receiver is not None:
            # receive_batch itself sleeps through a load-balancing interval before it notices.
            self._receiver.cancel()
            await asyncio.gather(self._receiver, return_exceptions=True)
        if self._credential is not None:
            await self._credential.close()

    async def _ensure_receiving(self) -> None:
        if self._receiver is None:
            await ensure_checkpoint_container(self._settings, self._credential)
            self._receiver = asyncio.create_task(
                self._client.receive_batch(
                    self._on_batch,
                    on_partition_initialize=self._on_partition_initialize,
                    on_partition_close=self._on_partition_close,
                    on_error=self._on_error,
                    starting_position=EARLIEST,
                ),
                name="eventhub-receiver",
            )
        elif self._receiver.done():
            self._receiver.result()  # raises what stopped it
            raise RuntimeError("the Event Hubs receiver stopped")

    async def _on_partition_initialize(self, context: PartitionContext) -> None:
        self._generations[context.partition_id] = self._generations.get(context.partition_id, 0) + 1

    async def _on_partition_close(self, context: PartitionContext, reason: Any) -> None:
        # Events of this claim still buffered or delivered are now stale: the next owner
        # resumes from the last checkpoint and delivers them again.
        self._generations[context.partition_id] = self._generations.get(context.partition_id, 0) + 1

    async def _on_batch(self, context: PartitionContext, events: list[EventData]) -> None:
        generation = self._generations.get(context.partition_id, 0)
        for event in events:
            if self._closing:
                return  # never delivered, so never committed: the next consumer gets them
            await self._queue.put(EventHubPosition(context.partition_id, generation, context, event))

    async def _on_error(self, context: PartitionContext | None, error: Exception) -> None:
        partition = context.partition_id if context is not None else "-"
        _LOG.warning("Event Hubs receive error on partition %s: %s", partition, error)

    def _is_current(self, position: EventHubPosition) -> bool:
        return self._generations.get(position.partition_id, 0) == position.generation


def _decode(position: EventHubPosition) -> ChangeEvent | None:
    try:
        return ChangeEvent.from_json(position.event.body_as_str().encode())
    except (TypeError, ValueError) as exc:
        _LOG.warning(
            "skipping a corrupt event on partition %s, sequence %s: %s",
            position.partition_id,
            position.event.sequence_number,
            exc,
        )
        return None
