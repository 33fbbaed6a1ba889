"""The Event Hubs backend, tested at the boundaries that can run here.

There is no Event Hubs emulator without Docker, so no event crosses a real hub
in these tests (docs/events.md says so). What is real: the BlobCheckpointStore
against Azurite, the SDK clients built from settings, received ``EventData``
decoded from AMQP bytes, and ``PartitionContext.update_checkpoint`` writing to
Azurite. The adapter is driven through the callbacks ``receive_batch`` calls;
its own receiver meanwhile tries a closed loopback port and gets nowhere.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from azure.eventhub import EventData
from azure.eventhub._pyamqp._encode import encode_payload
from azure.eventhub._pyamqp.message import Message
from azure.eventhub.aio import PartitionContext
from azure.identity.aio import DefaultAzureCredential

from lancedb_ray.errors import InvalidInput
from lancedb_ray.events import ChangeEvent, Delivery
from lancedb_ray.events.eventhub import (
    EventHubConsumer,
    checkpoint_store,
    ensure_checkpoint_container,
    make_eventhub_consumer,
    make_eventhub_publisher,
)
from lancedb_ray.settings import EventHubBusSettings
from tests.support.azurite import Azurite

pytestmark = pytest.mark.azure

NAMESPACE = "127.0.0.1"  # nothing listens on its AMQP port, so the SDK's receiver never connects
HUB = "changes"
CONNECTION_STRING = f"Endpoint=sb://{NAMESPACE}/;SharedAccessKeyName=test;SharedAccessKey=c2VjcmV0"


@pytest.fixture
def settings(azurite: Azurite) -> EventHubBusSettings:
    return EventHubBusSettings(
        connection_string=CONNECTION_STRING,
        eventhub_name=HUB,
        checkpoint_connection_string=azurite.provider.connection_string(),
        checkpoint_container=f"checkpoints-{uuid.uuid4().hex[:10]}",
        max_buffered_events=4,
    )


def received(event: ChangeEvent | bytes, sequence_number: int, offset: int) -> EventData:
    """An EventData as the SDK hands it over: decoded from AMQP with the broker's annotations."""
    body = event if isinstance(event, bytes) else event.to_json()
    annotations = {
        b"x-opt-sequence-number": sequence_number,
        b"x-opt-offset": str(offset).encode(),
        b"x-opt-partition-key": b"db/orders",
    }
    message = Message(data=[body], message_annotations=annotations)
    return EventData.from_bytes(bytes(encode_payload(bytearray(), message)))


def change(version: int, table: str = "orders") -> ChangeEvent:
    return ChangeEvent("db", table, version, "insert", 1, time.time())


async def checkpoints(settings: EventHubBusSettings, group: str) -> dict[str, tuple[int, str]]:
    store = checkpoint_store(settings, None)
    async with store:
        listed = await store.list_checkpoints(NAMESPACE, HUB, group)
    return {c["partition_id"]: (c["sequence_number"], c["offset"]) for c in listed}


def test_checkpoint_store_ownership_and_checkpoint_round_trip(settings: EventHubBusSettings) -> None:
    async def scenario() -> None:
        await ensure_checkpoint_container(settings, None)
        await ensure_checkpoint_container(settings, None)  # already there: fine
        store = checkpoint_store(settings, None)
        async with store:
            claim = {
                "fully_qualified_namespace": NAMESPACE,
                "eventhub_name": HUB,
                "consumer_group": "agent",
                "partition_id": "0",
                "owner_id": "node-a",
            }
            [owned] = await store.claim_ownership([claim])
            assert owned["owner_id"] == "node-a" and owned["etag"]
            listed = await store.list_ownership(NAMESPACE, HUB, "agent")
            assert [(o["partition_id"], o["owner_id"]) for o in listed] == [("0", "node-a")]

            # node-b claims with node-a's etag after node-a renewed: the stale claim loses.
            [renewed] = await store.claim_ownership([dict(owned)])
            assert await store.claim_ownership([dict(owned, owner_id="node-b")]) == []
            listed = await store.list_ownership(NAMESPACE, HUB, "agent")
            assert [(o["owner_id"], o["etag"].strip('"')) for o in listed] == [
                ("node-a", renewed["etag"].strip('"'))
            ]

            checkpoint = dict(claim, sequence_number=41, offset="8192")
            del checkpoint["owner_id"]
            await store.update_checkpoint(checkpoint)
        assert await checkpoints(settings, "agent") == {"0": (41, "8192")}

    asyncio.run(scenario())


def test_clients_from_a_connection_string(settings: EventHubBusSettings) -> None:
    async def scenario() -> None:
        publisher = make_eventhub_publisher(settings)
        consumer = make_eventhub_consumer(settings, "agent")
        try:
            for client in (publisher._client, consumer._client):
                assert client.eventhub_name == HUB
                assert client._address.hostname == NAMESPACE
            assert consumer._client._consumer_group == "agent"
            store = consumer._client._checkpoint_store
            assert store._container_client.container_name == settings.checkpoint_container
            assert publisher._credential is None and consumer._credential is None
        finally:
            await publisher.close()
            await consumer.close()

    asyncio.run(scenario())


def test_clients_from_a_namespace_use_one_default_azure_credential() -> None:
    settings = EventHubBusSettings(
        fully_qualified_namespace="lancedb.servicebus.windows.net",
        eventhub_name=HUB,
        checkpoint_account_url="https://lancedbcheckpoints.blob.core.windows.net",
    )

    async def scenario() -> None:
        publisher = make_eventhub_publisher(settings)
        consumer = make_eventhub_consumer(settings, "$Default")
        try:
            assert isinstance(publisher._client._credential, DefaultAzureCredential)
            assert publisher._client._address.hostname == "lancedb.servicebus.windows.net"
            credential = consumer._credential
            assert isinstance(credential, DefaultAzureCredential)
            assert consumer._client._credential is credential
            container = consumer._client._checkpoint_store._container_client
            assert container.credential is credential
            assert container.url == "https://lancedbcheckpoints.blob.core.windows.net/lancedb-ray-checkpoints"
        finally:
            await publisher.close()
            await consumer.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"checkpoint_account_url": "https://a.blob.core.windows.net"}, "fully_qualified_namespace"),
        ({"connection_string": CONNECTION_STRING}, "checkpoint_connection_string"),
    ],
)
def test_incomplete_settings_are_refused_with_what_is_missing(fields: dict[str, Any], message: str) -> None:
    async def scenario() -> None:
        make_eventhub_consumer(EventHubBusSettings(**fields), "agent")

    with pytest.raises(InvalidInput, match=message):
        asyncio.run(scenario())


class Driven:
    """The adapter with real partition contexts bound to the checkpoint store in Azurite."""

    def __init__(self, settings: EventHubBusSettings, group: str = "agent") -> None:
        self.consumer: EventHubConsumer = make_eventhub_consumer(settings, group)
        self.store = checkpoint_store(settings, None)
        self.contexts = {p: PartitionContext(NAMESPACE, HUB, group, p, self.store) for p in "01"}

    async def claim(self, partition: str) -> None:
        await self.consumer._on_partition_initialize(self.contexts[partition])

    async def receive(self, partition: str, events: list[EventData]) -> None:
        await self.consumer._on_batch(self.contexts[partition], events)

    async def close(self) -> None:
        await self.consumer.close()
        await self.store.close()


def test_received_events_are_polled_and_committed_as_per_partition_checkpoints(
    settings: EventHubBusSettings,
) -> None:
    async def scenario() -> list[Delivery]:
        driven = Driven(settings)
        try:
            await driven.claim("0")
            await driven.claim("1")
            await driven.receive("0", [received(change(1), 10, 100), received(change(2), 11, 200)])
            await driven.receive("1", [received(change(1, "users"), 3, 30)])
            deliveries = await driven.consumer.poll(10, 2.0)
            await driven.consumer.commit(deliveries)
            return deliveries
        finally:
            await driven.close()

    deliveries = asyncio.run(scenario())
    assert [(d.event.table, d.event.version) for d in deliveries] == [
        ("orders", 1),
        ("orders", 2),
        ("users", 1),
    ]
    assert asyncio.run(checkpoints(settings, "agent")) == {"0": (11, "200"), "1": (3, "30")}


def test_a_partition_lost_before_commit_keeps_its_new_owners_checkpoint(
    settings: EventHubBusSettings,
) -> None:
    async def scenario() -> None:
        driven = Driven(settings)
        try:
            await driven.claim("0")
            await driven.claim("1")
            await driven.receive("0", [received(change(1), 5, 50)])
            await driven.receive("1", [received(change(1, "users"), 7, 70)])
            deliveries = await driven.consumer.poll(10, 2.0)
            await driven.consumer._on_partition_close(driven.contexts["1"], "OWNERSHIP_LOST")
            await driven.consumer.commit(deliveries)
        finally:
            await driven.close()

    asyncio.run(scenario())
    assert asyncio.run(checkpoints(settings, "agent")) == {"0": (5, "50")}


def test_a_corrupt_event_is_skipped_and_the_buffer_pushes_back(
    settings: EventHubBusSettings,
) -> None:
    async def scenario() -> None:
        driven = Driven(settings)
        try:
            await driven.claim("0")
            batch = [received(b"not json", 1, 10)] + [
                received(change(v), v + 1, 10 * (v + 1)) for v in range(1, 6)
            ]
            receiving = asyncio.create_task(driven.receive("0", batch))
            await asyncio.sleep(0.2)
            assert not receiving.done()  # 6 events, room for 4: the callback waits

            first = await driven.consumer.poll(10, 1.0)
            await asyncio.wait_for(receiving, 2.0)
            rest = await driven.consumer.poll(10, 1.0)
            assert [d.event.version for d in first + rest] == [1, 2, 3, 4, 5]

            started = time.monotonic()
            assert await driven.consumer.poll(10, 0.3) == []
            assert time.monotonic() - started < 1.3
        finally:
            await driven.close()

    asyncio.run(scenario())
