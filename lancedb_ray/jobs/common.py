"""What both bulk jobs share: settings, the Ray connection, the target table, the change event."""

from __future__ import annotations

import argparse
import logging
import sys
import time

import ray

from lancedb_ray.settings import Settings
from lancedb_ray.storage.catalog import DatabaseLocation, StorageCatalog
from lancedb_ray.types import ProgressReport

_LOG = logging.getLogger(__name__)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", required=True, help="database name, as in db://<database>")
    parser.add_argument("--table", required=True,
                        help="table name; a namespaced table is ns1$ns2$name")
    parser.add_argument("--config", default=None,
                        help="settings YAML (default: $LANCEDB_RAY_CONFIG, then built-in defaults)")
    parser.add_argument("--no-event", dest="event", action="store_false",
                        help="do not publish a change event for the commit")


def setup_logging() -> None:
    """Progress to stdout, where ``ray job logs`` shows it."""
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def connect_ray(settings: Settings) -> None:
    """Join the cluster: the one this process is already in, ``ray.address``, or ``RAY_ADDRESS``.

    Under ``ray job submit`` the entrypoint runs on the cluster with
    ``RAY_ADDRESS`` set, so ``ray.init()`` joins it; run by hand with neither,
    it starts a local instance.
    """
    if not ray.is_initialized():
        ray.init(address=settings.ray.address, namespace=settings.ray.namespace,
                 log_to_driver=True)


def locate(settings: Settings, database: str) -> DatabaseLocation:
    return StorageCatalog(settings.storage).resolve(database)


def publish_change(settings: Settings, database: str, table: str, version: int, operation: str,
                   rows: int) -> None:
    """Tell the agent (and the query nodes) about the commit; a failure here never fails the job."""
    from lancedb_ray.events.model import ChangeEvent
    from lancedb_ray.events.outbox import ChangePublisher
    from lancedb_ray.storage.connections import registry_key
    from lancedb_ray.storage.versions import announce
    from lancedb_ray.types import TableRef

    try:
        key = registry_key(StorageCatalog(settings.storage), TableRef.parse(database, table))
        announce(settings.ray.namespace, key, version)  # the query nodes read it at once
    except Exception:
        _LOG.warning("could not announce version %d to the query nodes", version, exc_info=True)

    try:
        publisher = ChangePublisher(settings.events)
    except Exception:
        _LOG.warning("could not open the event bus: no change event for version %d", version,
                     exc_info=True)
        return
    try:
        publisher.emit(ChangeEvent(database=database, table=table, version=version,
                                   operation=operation, rows=rows, time=time.time()))
        if not publisher.flush(settings.events.publish_timeout_seconds):
            _LOG.warning("change event for version %d left in the outbox for a later retry", version)
    finally:
        publisher.close()


def progress_printer(prefix: str) -> ProgressReport:
    """Print each new step, each further tenth of it done and each waiting reason (``ray job logs``)."""
    last: list[tuple[str, int, str | None]] = []

    def report(step: str, fraction: float | None, waiting: str | None) -> None:
        tenth = int((fraction or 0) * 10)
        if last and last[-1] == (step, tenth, waiting):
            return
        last.append((step, tenth, waiting))
        done = "" if fraction is None else f" ({fraction:.0%} done)"
        print(f"{prefix}: {step}{done}" + (f"; {waiting}" if waiting else ""), flush=True)

    return report
