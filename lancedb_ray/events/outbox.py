"""What a query node calls after each committed write: fire-and-forget, but never lost.

A write's answer must not wait for, or fail because of, the event bus. So
``emit`` only queues the event for a background thread with its own asyncio
loop. That thread publishes; when a publish fails the events go to the durable
outbox (:mod:`outbox_store`) and are retried with exponential backoff, also
by the next process to start on the same outbox directory. While anything
waits in the outbox, new events queue behind it there, so one table's events
are published in the order they were emitted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque

from lancedb_ray.events import metrics
from lancedb_ray.events.bus import EventPublisher, make_publisher
from lancedb_ray.events.model import ChangeEvent
from lancedb_ray.events.outbox_store import OutboxStore
from lancedb_ray.settings import EventBusSettings

_LOG = logging.getLogger(__name__)

_DRAIN_CHUNK = 500  # events per publish when draining the outbox
_ADOPT_INTERVAL_S = 60.0  # how often to look for outboxes left by dead processes


class ChangePublisher:
    def __init__(self, settings: EventBusSettings) -> None:
        self._settings = settings
        self._cond = threading.Condition()
        self._incoming: deque[ChangeEvent] = deque()
        self._in_flight = 0  # taken from incoming, neither published nor stored yet
        self._worker = _Worker(settings)
        self._worker.open()  # here, so what a previous run left counts as pending at once
        self._stored = len(self._worker.outbox)  # mirror of len(outbox), readable from any thread
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="change-publisher", daemon=True)
        self._thread.start()

    def emit(self, event: ChangeEvent) -> None:
        """Queue ``event`` for publishing; returns at once and never raises."""
        try:
            with self._cond:
                if self._closing:
                    _LOG.error("change event emitted after close, dropped: %s", event)
                    return
                self._incoming.append(event)
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:
                pass  # closed meanwhile: its final step, taken after ours, stored the event
        except Exception:
            _LOG.exception("could not queue change event %s", event)

    @property
    def alive(self) -> bool:
        """The publishing thread runs (or was closed on purpose): the replica's health check."""
        return self._closing or self._thread.is_alive()

    @property
    def pending(self) -> int:
        """Events not yet published: queued in memory, being sent, or in the outbox."""
        with self._cond:
            return self._pending()

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything emitted so far is published; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending() == 0, timeout_s)

    def close(self) -> None:
        """Stop the thread; what is still unpublished is left in the outbox for later."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            pass  # the loop already ended
        self._thread.join(self._settings.publish_timeout_seconds + 10)
        if self._thread.is_alive():
            _LOG.warning("change publisher thread did not stop in time")

    def _pending(self) -> int:
        return len(self._incoming) + self._in_flight + self._stored

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    async def _main(self) -> None:
        worker = self._worker
        try:
            while True:
                with self._cond:
                    closing = self._closing
                    batch = list(self._incoming)
                    self._incoming.clear()
                    self._in_flight = len(batch)
                self._wake.clear()
                try:
                    await worker.step(batch, drain=not closing)
                except Exception:
                    _LOG.exception("change publisher step failed; events stay queued")
                    worker.failed()
                    with self._cond:
                        self._incoming.extendleft(reversed(batch))
                self._settled(len(worker.outbox))
                if closing:
                    return
                with self._cond:
                    retry = bool(self._incoming)
                await worker.wait(self._wake, retry)
        finally:
            await worker.close()
            self._settled(len(worker.outbox))

    def _settled(self, stored: int) -> None:
        with self._cond:
            self._in_flight = 0
            self._stored = stored
            self._cond.notify_all()
            pending = self._pending()
        metrics.outbox_pending(pending)


class _Worker:
    """The loop thread's side: publish, store on failure, drain with backoff."""

    def __init__(self, settings: EventBusSettings) -> None:
        self._settings = settings
        self.outbox = OutboxStore(settings.outbox_directory)
        self._publisher: EventPublisher | None = None
        self._opened = False
        self._backoff = settings.retry_initial_seconds
        self._retry_at = 0.0  # monotonic time before which the bus is left alone
        self._adopt_at = 0.0

    def open(self) -> None:
        """Open the outbox, adopting what dead processes left; on failure, step retries."""
        try:
            self.outbox.open()
            self._opened = True
        except Exception:
            _LOG.exception("cannot open the outbox in %s", self._settings.outbox_directory)
        self._adopt_at = time.monotonic() + _ADOPT_INTERVAL_S

    async def step(self, batch: list[ChangeEvent], drain: bool) -> None:
        """Publish ``batch`` directly if nothing is waiting, else store it behind the rest."""
        now = time.monotonic()
        if now >= self._adopt_at:
            await asyncio.to_thread(self.outbox.adopt_orphans if self._opened else self.open)
            self._adopt_at = now + _ADOPT_INTERVAL_S
        if batch:
            if len(self.outbox) or now < self._retry_at or not await self._publish(batch):
                if not self._opened:
                    await asyncio.to_thread(self.open)  # needed now: retry it
                if not self._opened:
                    raise RuntimeError("the outbox is unavailable")
                await asyncio.to_thread(self.outbox.append, batch)
        while drain and len(self.outbox) and time.monotonic() >= self._retry_at:
            chunk = self.outbox.peek(_DRAIN_CHUNK)
            if not await self._publish(chunk):
                return
            await asyncio.to_thread(self.outbox.remove, len(chunk))

    async def wait(self, wake: asyncio.Event, retry: bool) -> None:
        """Sleep until new events arrive, the backoff ends (if ``retry`` or the
        outbox holds events), or it is time to adopt orphans."""
        deadline = self._adopt_at
        if retry or len(self.outbox):
            deadline = min(deadline, max(self._retry_at, time.monotonic()))
        try:
            await asyncio.wait_for(wake.wait(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            pass

    def failed(self) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._settings.retry_max_seconds)

    async def _publish(self, events: list[ChangeEvent]) -> bool:
        try:
            if self._publisher is None:
                self._publisher = make_publisher(self._settings)
            await asyncio.wait_for(self._publisher.publish(events), self._settings.publish_timeout_seconds)
        except Exception as exc:
            _LOG.warning(
                "publishing %d change events failed, retrying in %.1fs: %s",
                len(events),
                self._backoff,
                exc,
            )
            self.failed()
            await self._reset_publisher()
            return False
        self._backoff = self._settings.retry_initial_seconds
        self._retry_at = 0.0
        return True

    async def _reset_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            try:
                await publisher.close()
            except Exception:
                _LOG.debug("closing a failed publisher", exc_info=True)

    async def close(self) -> None:
        await self._reset_publisher()
        if self._opened:
            await asyncio.to_thread(self.outbox.close)
