"""Per-key quotas: a token bucket of requests, and a bound on concurrent writes per table.

Enforced by each query node replica on its own (no shared state on the request
path): with N replicas a key may reach N times its rate. Over a quota the answer
is 429 with ``Retry-After``, which the official client retries.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from lancedb_ray.errors import RateLimited
from lancedb_ray.settings import ApiKey, Quotas, Settings


def quotas_of(key: ApiKey, settings: Settings) -> Quotas:
    return key.quotas or settings.server.quotas


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)

    def take(self, rate: float, burst: int) -> float:
        """Take one token; 0 if admitted, else the seconds until one is there."""
        now = time.monotonic()
        self.tokens = min(burst, self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / rate


class QuotaGuard:
    """This replica's buckets (by key name) and in-flight writes (by key name and table)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._writes: dict[tuple[str, str, str], int] = {}

    def admit(self, key: ApiKey, quotas: Quotas) -> None:
        if not quotas.requests_per_second:
            return
        with self._lock:
            bucket = self._buckets.setdefault(key.name, _Bucket(tokens=quotas.burst))
            wait = bucket.take(quotas.requests_per_second, quotas.burst)
        if wait:
            raise RateLimited(
                f"API key '{key.name}' is over its {quotas.requests_per_second:g} requests per "
                f"second", retry_after=math.ceil(wait))

    @contextmanager
    def write_slot(self, key: ApiKey, quotas: Quotas, database: str, table: str) -> Iterator[None]:
        slot = (key.name, database, table)
        with self._lock:
            if self._writes.get(slot, 0) >= quotas.concurrent_writes_per_table:
                raise RateLimited(
                    f"API key '{key.name}' already has {quotas.concurrent_writes_per_table} writes "
                    f"in progress on table '{table}'", retry_after=1)
            self._writes[slot] = self._writes.get(slot, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._writes[slot] -= 1
                if not self._writes[slot]:
                    del self._writes[slot]


GUARD = QuotaGuard()  # one per replica process, like its services
