"""The Kafka bus (aiokafka): self-hosted Kafka, or Azure Event Hubs' Kafka endpoint.

Events go to one topic keyed by ``database/table``, so one table's events
share a partition and stay in order. The producer waits for all in-sync
replicas (``acks=all``) and is idempotent where the broker supports it.
Consumers commit offsets manually, only for what the caller committed.

For Azure Event Hubs (Standard tier or above) use its Kafka endpoint::

    events:
      backend: kafka
      kafka:
        bootstrap_servers: <namespace>.servicebus.windows.net:9093
        topic: <event hub name>
        security_protocol: SASL_SSL
        sasl_mechanism: PLAIN
        sasl_username: $ConnectionString
        sasl_password: Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=...

The topic is created when missing if ``create_topic`` is set and the broker
allows it; on Event Hubs create the hub beforehand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from lancedb_ray.events.bus import Delivery
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.settings import KafkaBusSettings

_LOG = logging.getLogger(__name__)


def connection_options(settings: KafkaBusSettings) -> dict[str, Any]:
    """The client options shared by producer, consumer and admin client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
    }
    if "SSL" in settings.security_protocol:
        options["ssl_context"] = create_ssl_context()
    if settings.sasl_mechanism:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


async def ensure_topic(settings: KafkaBusSettings) -> None:
    """Create the topic if it is missing; a broker that refuses is only logged."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    try:
        await admin.start()
        if settings.topic in await admin.list_topics():
            return
        topic = NewTopic(settings.topic, settings.num_partitions, settings.replication_factor)
        response = await admin.create_topics([topic])
        for _name, code, *message in response.topic_errors:
            if code and code != TopicAlreadyExistsError.errno:
                _LOG.warning("could not create topic %r (error %s: %s)", settings.topic, code, message)
    finally:
        await admin.close()


class KafkaPublisher:
    def __init__(self, settings: KafkaBusSettings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._idempotent = settings.enable_idempotence
        self._starting = asyncio.Lock()

    async def publish(self, events: Sequence[ChangeEvent]) -> None:
        producer = await self._started()
        try:
            sent = [
                await producer.send(self._settings.topic, event.to_json(), key=event.key.encode())
                for event in events
            ]
            await asyncio.gather(*sent)
        except BaseException:
            await self.close()  # a fresh producer next time: no half-sent state carries over
            raise

    async def _started(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                if self._settings.create_topic:
                    await ensure_topic(self._settings)
                self._producer = await self._start_producer()
            return self._producer

    async def _start_producer(self) -> AIOKafkaProducer:
        if self._idempotent is not False:
            producer = self._new_producer(idempotent=True)
            try:
                await producer.start()
            except KafkaConnectionError:
                await producer.stop()
                raise
            except KafkaError as exc:
                await producer.stop()
                if self._idempotent:
                    raise
                _LOG.warning("broker refused an idempotent producer (%r); using a plain one", exc)
                self._idempotent = False
            else:
                self._idempotent = True
                return producer
        producer = self._new_producer(idempotent=False)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    def _new_producer(self, idempotent: bool) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            acks="all", enable_idempotence=idempotent, **connection_options(self._settings)
        )

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


class KafkaConsumer:
    """A group member; joining the group runs in the background so poll keeps its timeout."""

    def __init__(self, settings: KafkaBusSettings, group: str) -> None:
        self._settings = settings
        self._group = group
        self._consumer: AIOKafkaConsumer | None = None
        self._starting: asyncio.Task[AIOKafkaConsumer] | None = None

    async def poll(self, max_events: int, timeout_s: float) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        consumer = await self._started(timeout_s)
        if consumer is None:
            return []  # still joining the group
        remaining_ms = max(0, int((deadline - loop.time()) * 1000))
        batches = await consumer.getmany(timeout_ms=remaining_ms, max_records=max_events)
        deliveries = []
        for partition, records in batches.items():
            for record in records:
                try:
                    event = ChangeEvent.from_json(record.value)
                except ValueError as exc:
                    _LOG.warning(
                        "skipping a corrupt record at %s offset %d: %s",
                        partition,
                        record.offset,
                        exc,
                    )
                    continue
                deliveries.append(Delivery(event, (partition.partition, record.offset)))
        return deliveries

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        if self._consumer is None:
            raise RuntimeError("commit before poll: this consumer delivered nothing")
        next_offsets: dict[TopicPartition, int] = {}
        for delivery in deliveries:
            partition, offset = delivery.position
            key = TopicPartition(self._settings.topic, partition)
            next_offsets[key] = max(next_offsets.get(key, 0), offset + 1)
        await self._consumer.commit(next_offsets)

    async def _started(self, timeout_s: float) -> AIOKafkaConsumer | None:
        """The joined consumer, or None if joining takes longer than ``timeout_s``."""
        if self._consumer is None:
            if self._starting is None:
                self._starting = asyncio.create_task(self._start())
            done, _ = await asyncio.wait({self._starting}, timeout=timeout_s)
            if not done:
                return None
            starting, self._starting = self._starting, None
            self._consumer = starting.result()  # a failed start raises; the next poll retries
        return self._consumer

    async def _start(self) -> AIOKafkaConsumer:
        if self._settings.create_topic:
            await ensure_topic(self._settings)  # subscribing to a missing topic waits minutes
        consumer = AIOKafkaConsumer(
            self._settings.topic,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self._settings.session_timeout_ms,
            heartbeat_interval_ms=self._settings.heartbeat_interval_ms,
            **connection_options(self._settings),
        )
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    async def close(self) -> None:
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.cancel()
            results = await asyncio.gather(starting, return_exceptions=True)
            if isinstance(results[0], AIOKafkaConsumer):
                self._consumer = results[0]
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
