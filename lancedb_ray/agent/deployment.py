"""The agent as a Ray Serve deployment in the query node's application.

Why a Serve deployment rather than a detached actor:

* one builder starts everything: ``build_app`` binds ``LanceAgent`` into the
  query node, so ``lancedb-ray serve``, ``serve run deployments/local.yaml``
  and KubeRay's ``serveConfigV2`` all deploy it, with no second step, and
  ``serve shutdown`` (or deleting the application) removes it, leaving no
  orphan behind;
* restarts: the Serve controller keeps one replica running. A replica whose
  process dies (killed, OOM, node lost) is replaced, and ``check_health``
  fails the replica when the agent's loop has stopped, so it is replaced too;
* visibility: it shows on the Ray dashboard as the ``LanceAgent`` deployment
  of the ``lancedb`` application, next to the query nodes.

The agent needs no requests: its loop runs in a thread of the replica, with
its own event loop, from the constructor on. Its state is on storage (the
job store and the bus checkpoint), so a replacement replica resumes where the
dead one stopped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future
from typing import Any

from ray import serve

from lancedb_ray import logging_setup
from lancedb_ray.agent.core import LanceAgent as AgentLoop
from lancedb_ray.settings import Settings

_LOG = logging.getLogger(__name__)


class AgentThread:
    """Runs one :class:`AgentLoop` on its own thread and event loop."""

    def __init__(self, agent: AgentLoop) -> None:
        self.agent = agent
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="lance-agent", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, work: Any) -> Future[Any]:
        """Run coroutine ``work`` on the agent's loop."""
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # the loop has just closed
        self._thread.join(timeout_s)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
        except BaseException as exc:  # noqa: BLE001 - kept for check_health to report
            self.error = exc
            _LOG.exception("the lance agent stopped")
        finally:
            self._loop.close()

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        self._ready.set()
        await self.agent.run(self._stop)


@serve.deployment(name="LanceAgent")
class LanceAgent:
    """Keeps every table indexed, compact and trimmed; one replica per application."""

    def __init__(self, settings: dict[str, Any]) -> None:
        config = Settings.from_plain(settings)
        logging_setup.configure(config.logging)  # the agent's progress at INFO in the replica's log
        self._thread = AgentThread(AgentLoop(config))
        self._thread.start()

    def check_health(self) -> None:
        """Serve calls this periodically; raising makes it replace the replica."""
        if not self._thread.alive:
            raise RuntimeError(f"the lance agent loop stopped: {self._thread.error!r}")

    async def status(self) -> dict[str, Any]:
        agent = self._thread.agent

        async def snapshot() -> dict[str, Any]:
            return agent.status()

        return await asyncio.wrap_future(self._thread.submit(snapshot()))

    async def create_index(self, database: str, table: str, request: dict[str, Any]) -> str:
        """A client's create_index as a job (see ``AgentLoop.submit_index``); the job's id."""
        work = self._thread.agent.submit_index(database, table, request)
        return await asyncio.wrap_future(self._thread.submit(work))

    async def job(self, job_id: str) -> dict[str, Any] | None:
        """One job's record as the admin endpoint shows it; None if there is none."""
        agent = self._thread.agent

        async def read() -> dict[str, Any] | None:
            job = agent.job_record(job_id)
            return None if job is None else job.to_dict()

        return await asyncio.wrap_future(self._thread.submit(read()))

    async def pending_indexes(self, database: str, table: str) -> list[str]:
        """Names of the indexes active create_index jobs on the table build."""
        agent = self._thread.agent

        async def read() -> list[str]:
            return agent.pending_indexes(database, table)

        return await asyncio.wrap_future(self._thread.submit(read()))

    def replica_actor_name(self) -> str:
        """The Ray actor of this replica (namespace ``serve``), for operators and tests."""
        import ray

        return ray.get_runtime_context().get_actor_name() or ""

    def __del__(self) -> None:
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.stop()


def agent_options(settings: Settings) -> dict[str, Any]:
    """Serve options of the agent deployment, in one place."""
    return {
        "num_replicas": 1,  # one consumer of the agent's group, one owner of the job store
        "max_ongoing_requests": 8,
        "health_check_period_s": 5,
        "health_check_timeout_s": 30,
        "ray_actor_options": {"num_cpus": settings.agent.num_cpus},
    }

