"""Checks run before Ray starts, so a setting that cannot work is reported at once, by name.

A Serve replica that fails on a bad setting reports it minutes later, buried in
Ray's logs; everything decidable from the settings alone (types, unknown keys,
the storage catalog, the event bus configuration, local directories) is decided
here instead, and reported as one line: the setting, then the problem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lancedb_ray import keys
from lancedb_ray.errors import LanceDBRayError
from lancedb_ray.settings import (
    EventBusBackend,
    EventBusSettings,
    Settings,
    StorageLocation,
    StorageSettings,
)
from lancedb_ray.storage.catalog import StorageCatalog
from lancedb_ray.storage.credentials import parse_connection_string, place_and_options
from lancedb_ray.storage.places import LocalPlace, StorageConfigError

_KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


class PreflightError(Exception):
    """One setting that cannot work; str() is the one line to show."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """``Settings.load`` with every failure turned into a PreflightError naming the setting."""
    shown = path or os.environ.get("LANCEDB_RAY_CONFIG")
    try:
        return Settings.load(path, **overrides)
    except ValidationError as exc:
        raise _from_validation(exc) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PreflightError(f"settings file {shown}", f"invalid YAML{where}") from None
    except OSError as exc:
        raise PreflightError(f"settings file {shown}", exc.strerror or str(exc)) from None
    except ValueError as exc:
        raise PreflightError(f"settings file {shown}", str(exc)) from None


def check(settings: Settings) -> None:
    """Raise PreflightError for the first setting that cannot work; touches no remote service."""
    _check_storage(settings.storage)
    _check_events(settings.events)
    directories = {
        "events.outbox_directory": settings.events.outbox_directory,
        "agent.jobs_directory": settings.agent.jobs_directory,
        "executors.spill_dir": settings.executors.spill_dir,
    }
    if settings.events.backend is EventBusBackend.EMBEDDED:
        directories["events.embedded.directory"] = settings.events.embedded.directory
    for setting, directory in directories.items():
        if directory:
            _writable_directory(setting, directory)
    try:
        keys.check_serving(settings)
    except ValueError as exc:
        raise PreflightError("server.api_keys", str(exc)) from None
    replicas = settings.server.num_replicas
    if replicas != "auto" and not (str(replicas).isdigit() and int(replicas) > 0):
        raise PreflightError("server.num_replicas", f"must be a positive number or 'auto', not {replicas!r}")


def _from_validation(exc: ValidationError) -> PreflightError:
    error = exc.errors()[0]
    setting = ".".join(str(part) for part in error["loc"]) or "settings"
    problem = "unknown setting" if error["type"] == "extra_forbidden" else error["msg"]
    others = exc.error_count() - 1
    if others:
        problem += f" (and {others} more problem{'s' if others > 1 else ''})"
    return PreflightError(setting, problem)


def _check_storage(storage: StorageSettings) -> None:
    locations = {"storage.root": storage.root}
    locations.update({f"storage.databases.{name}": loc for name, loc in storage.databases.items()})
    for setting, location in locations.items():
        _check_location(setting, location)
    try:
        StorageCatalog(storage)  # names, and locations that overlap
    except (StorageConfigError, LanceDBRayError) as exc:
        raise PreflightError("storage.databases", str(exc)) from None


def _check_location(setting: str, location: StorageLocation) -> None:
    try:
        place, _ = place_and_options(location)
    except (StorageConfigError, LanceDBRayError) as exc:
        raise PreflightError(setting, str(exc)) from None
    if isinstance(place, LocalPlace) and setting == "storage.root":
        _writable_directory(f"{setting}.uri", place.path)


def _writable_directory(setting: str, directory: str) -> None:
    """The directory exists (created here if missing) and this process may write in it."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PreflightError(setting, f"cannot create {directory}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PreflightError(setting, f"{directory} is not writable")


def _check_events(events: EventBusSettings) -> None:
    if events.backend is EventBusBackend.KAFKA:
        _check_kafka(events)
    elif events.backend is EventBusBackend.EVENTHUB:
        _check_eventhub(events)


def _check_kafka(events: EventBusSettings) -> None:
    kafka = events.kafka
    if not kafka.bootstrap_servers.strip():
        raise PreflightError("events.kafka.bootstrap_servers", "no broker given")
    for server in filter(None, (s.strip() for s in kafka.bootstrap_servers.split(","))):
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise PreflightError("events.kafka.bootstrap_servers", f"'{server}' is not host:port")
    if kafka.security_protocol not in _KAFKA_PROTOCOLS:
        allowed = ", ".join(_KAFKA_PROTOCOLS)
        raise PreflightError("events.kafka.security_protocol", f"must be one of {allowed}")
    if kafka.sasl_mechanism and (not kafka.sasl_username or kafka.sasl_password is None):
        missing = "sasl_username" if not kafka.sasl_username else "sasl_password"
        raise PreflightError(f"events.kafka.{missing}", f"needed with sasl_mechanism {kafka.sasl_mechanism}")


def _check_eventhub(events: EventBusSettings) -> None:
    hub = events.eventhub
    if hub.connection_string is None and not hub.fully_qualified_namespace:
        raise PreflightError("events.eventhub", "needs connection_string or fully_qualified_namespace")
    if hub.connection_string is not None:
        fields = _connection_fields("events.eventhub.connection_string", hub.connection_string)
        if not fields.get("Endpoint", "").startswith("sb://"):
            raise PreflightError("events.eventhub.connection_string", "has no Endpoint=sb://... field")
    if hub.checkpoint_connection_string is None and not hub.checkpoint_account_url:
        raise PreflightError(
            "events.eventhub", "needs checkpoint_connection_string or checkpoint_account_url"
        )
    if hub.checkpoint_connection_string is not None:
        _connection_fields("events.eventhub.checkpoint_connection_string", hub.checkpoint_connection_string)


def _connection_fields(setting: str, secret: Any) -> dict[str, str]:
    try:
        return parse_connection_string(secret.get_secret_value())
    except StorageConfigError as exc:
        raise PreflightError(setting, str(exc)) from None
