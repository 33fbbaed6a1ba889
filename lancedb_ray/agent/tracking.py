"""Book-keeping between the event bus and the decisions: debouncing and checkpoints.

Events for one table are gathered until the table has been quiet for the
debounce interval (or the oldest has waited the maximum), then looked at once.
The bus checkpoint may only move past an event once the jobs it led to are
recorded; since a checkpoint is a position, it advances over the longest
prefix of deliveries, in arrival order, that are all handled.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Iterable
from dataclasses import dataclass, field

from lancedb_ray.events.bus import Delivery


@dataclass
class _Window:
    first: float
    last: float
    not_before: float = 0.0
    deliveries: list[Delivery] = field(default_factory=list)


class Debouncer:
    def __init__(self, quiet_s: float, max_wait_s: float) -> None:
        self._quiet = quiet_s
        self._max_wait = max(quiet_s, max_wait_s)
        self._windows: dict[str, _Window] = {}

    def touch(self, key: str, now: float, delivery: Delivery | None = None) -> None:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(first=now, last=now)
        window.last = now
        if delivery is not None:
            window.deliveries.append(delivery)

    def defer(self, key: str, deliveries: list[Delivery], now: float, delay_s: float) -> None:
        """Put a table back, to be looked at no sooner than ``delay_s`` from now."""
        self.touch(key, now)
        window = self._windows[key]
        window.deliveries[:0] = deliveries
        window.not_before = now + delay_s

    def due(self, now: float, busy: Container[str] = ()) -> list[tuple[str, list[Delivery]]]:
        """Tables whose window closed (and are not ``busy``), removed from the debouncer."""
        ready = [
            key
            for key, w in self._windows.items()
            if key not in busy
            and now >= w.not_before
            and (now - w.last >= self._quiet or now - w.first >= self._max_wait)
        ]
        return [(key, self._windows.pop(key).deliveries) for key in ready]

    def next_due(self) -> float | None:
        """The earliest time a window may close, for the scheduler's sleep."""
        times = [
            max(w.not_before, min(w.last + self._quiet, w.first + self._max_wait))
            for w in self._windows.values()
        ]
        return min(times, default=None)

    def __contains__(self, key: object) -> bool:
        return key in self._windows

    def __len__(self) -> int:
        return len(self._windows)


class CheckpointTracker:
    """Deliveries received and not yet checkpointed, in arrival order."""

    def __init__(self) -> None:
        self._entries: OrderedDict[int, tuple[Delivery, bool]] = OrderedDict()

    def add(self, delivery: Delivery) -> None:
        self._entries[id(delivery)] = (delivery, False)

    def handled(self, deliveries: Iterable[Delivery]) -> None:
        for delivery in deliveries:
            if id(delivery) in self._entries:
                self._entries[id(delivery)] = (delivery, True)

    def ready(self) -> list[Delivery]:
        """The handled prefix, removed: what may be checkpointed now."""
        prefix: list[Delivery] = []
        while self._entries:
            key, (delivery, done) = next(iter(self._entries.items()))
            if not done:
                break
            del self._entries[key]
            prefix.append(delivery)
        return prefix

    @property
    def outstanding(self) -> int:
        return len(self._entries)
