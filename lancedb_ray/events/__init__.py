"""Change events and the event bus that carries them from writers to the agent.

Writers call :class:`ChangePublisher` (``emit`` after each committed write);
consumers use :func:`make_consumer`. Backends: embedded, kafka, eventhub.
"""

from lancedb_ray.events.bus import (
    Delivery,
    EventBusError,
    EventConsumer,
    EventPublisher,
    default_group,
    make_consumer,
    make_publisher,
)
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.events.outbox import ChangePublisher

__all__ = [
    "ChangeEvent",
    "ChangePublisher",
    "Delivery",
    "EventBusError",
    "EventConsumer",
    "EventPublisher",
    "default_group",
    "make_consumer",
    "make_publisher",
]
