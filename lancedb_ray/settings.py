"""One typed settings object for every part of lancedb-ray.

Loaded from defaults, then an optional YAML file, then environment variables
prefixed ``LANCEDB_RAY_`` (nested fields joined with ``__``, e.g.
``LANCEDB_RAY_SERVER__PORT=9000``). The same object is passed, as a plain
dict, to every Ray deployment and actor so that they all agree.
"""

from __future__ import annotations

import hashlib
import os
import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

SYSTEM_DIR = ".system"  # the service's own files beside a local root's databases


class CredentialMode(str, Enum):
    """How a storage location authenticates to Azure Blob Storage."""

    NONE = "none"  # local paths, or anonymous access
    WORKLOAD_IDENTITY = "workload_identity"  # DefaultAzureCredential (AKS workload identity)
    ACCOUNT_KEY = "account_key"
    SAS_TOKEN = "sas_token"
    CONNECTION_STRING = "connection_string"
    AZURITE = "azurite"  # the well-known development account of the emulator


class StorageLocation(BaseModel):
    """Where one database (or the default root) lives, and how to reach it.

    For local storage give ``uri`` only (a directory). For Azure give either a
    full ``uri`` (``az://container/prefix``) or ``account`` + ``container`` +
    ``prefix``, and a credential mode.
    """

    uri: str | None = None
    account: str | None = None
    container: str | None = None
    prefix: str = ""
    credential: CredentialMode = CredentialMode.NONE
    account_key: SecretStr | None = None
    sas_token: SecretStr | None = None
    connection_string: SecretStr | None = None
    endpoint: str | None = None  # blob endpoint override (Azurite, sovereign clouds)
    client_id: str | None = None  # user-assigned managed identity for workload identity
    options: dict[str, str] = Field(default_factory=dict)  # extra lance options (timeouts, retries)


class UnknownDatabasePolicy(str, Enum):
    CREATE = "create"  # place it under the default location
    REFUSE = "refuse"  # answer 404


class StorageSettings(BaseModel):
    """The storage catalog: database name -> location."""

    root: StorageLocation = Field(default_factory=lambda: StorageLocation(uri="./data"))
    databases: dict[str, StorageLocation] = Field(default_factory=dict)
    unknown_databases: UnknownDatabasePolicy = UnknownDatabasePolicy.CREATE


class ServerSettings(BaseModel):
    """The query node (Ray Serve) and its HTTP surface."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: list[SecretStr] = Field(default_factory=lambda: [SecretStr("lancedb-ray-dev-key")])
    num_replicas: int | str = 1  # an int, or "auto" for Serve autoscaling
    max_replicas: int = 4
    max_ongoing_requests: int = 64
    max_queued_requests: int = 256  # beyond this the proxy answers 503, so the client retries
    num_cpus: float = 0.5  # CPUs reserved per replica; the work itself runs in lance's threads
    # "haproxy": Serve's HAProxy ingress (far less per-request overhead than the Python
    # proxy); "serve": the Python proxy. Read when this process starts Ray.
    proxy: Literal["haproxy", "serve"] = "haproxy"
    max_body_bytes: int = 512 * 1024 * 1024
    # 0: every request reads the latest version. >0: a replica may reuse an opened table
    # this long, so writes made elsewhere (other replicas, outside writers) show within it.
    read_consistency_seconds: float = 0.0
    idempotency_window: int = 20  # recent versions searched for a retried write's request id
    # create_index is a job of the agent: the request answers once it is done, or after this many
    # seconds while it goes on (0: at once, as LanceDB Cloud does; clients poll with wait_timeout).
    index_wait_seconds: float = 60.0


class ExecutorSettings(BaseModel):
    """Plan executors: the sharded cache of the read path."""

    enabled: bool = True
    num_executors: int | None = None  # None: one per two CPUs of the cluster, 1 to 8
    replicas: int = 1  # R executors own each cache partition
    fragments_per_group: int = 8  # fragments per flat-search cache partition
    cache_bytes: int = 2 * 1024**3
    spill_dir: str | None = None  # local NVMe directory for the spill tier
    spill_bytes: int = 8 * 1024**3
    prewarm: list[str] = Field(default_factory=list)  # "database/table" names
    num_cpus: float = 0.5


class EventBusBackend(str, Enum):
    EMBEDDED = "embedded"
    KAFKA = "kafka"
    EVENTHUB = "eventhub"


class EmbeddedBusSettings(BaseModel):
    directory: str | None = None  # one fsync'd log + per-group checkpoints; None: <state>/events
    group_id: str = "lancedb-ray-agent"


class KafkaBusSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "lancedb-ray-changes"
    group_id: str = "lancedb-ray-agent"
    security_protocol: str = "PLAINTEXT"  # SASL_SSL for Azure Event Hubs
    sasl_mechanism: str | None = None  # PLAIN for Azure Event Hubs
    sasl_username: str | None = None  # "$ConnectionString" for Azure Event Hubs
    sasl_password: SecretStr | None = None  # the Event Hubs connection string
    client_id: str = "lancedb-ray"
    create_topic: bool = True  # create the topic if missing, where the broker allows it
    num_partitions: int = 4  # for a topic created here
    replication_factor: int = 1  # for a topic created here
    enable_idempotence: bool | None = None  # None: when the broker supports it
    session_timeout_ms: int = 10_000  # a dead consumer's partitions move on after this
    heartbeat_interval_ms: int = 3_000


class EventHubBusSettings(BaseModel):
    connection_string: SecretStr | None = None
    fully_qualified_namespace: str | None = None  # with workload identity instead of a string
    eventhub_name: str = "lancedb-ray-changes"
    consumer_group: str = "$Default"
    checkpoint_connection_string: SecretStr | None = None
    checkpoint_container: str = "lancedb-ray-checkpoints"
    checkpoint_account_url: str | None = None  # with workload identity instead of a string
    max_buffered_events: int = 1000  # received but not yet polled; the receiver waits beyond


class EventBusSettings(BaseModel):
    backend: EventBusBackend = EventBusBackend.EMBEDDED
    outbox_directory: str | None = None  # failed publishes, retried from here; None: <state>/outbox
    publish_timeout_seconds: float = 10.0  # one publish attempt, before it counts as failed
    retry_initial_seconds: float = 0.5  # outbox retry backoff, doubling up to the maximum
    retry_max_seconds: float = 30.0
    embedded: EmbeddedBusSettings = Field(default_factory=EmbeddedBusSettings)
    kafka: KafkaBusSettings = Field(default_factory=KafkaBusSettings)
    eventhub: EventHubBusSettings = Field(default_factory=EventHubBusSettings)


class AgentSettings(BaseModel):
    """The Lance agent: keeps every table indexed and compact."""

    enabled: bool = True
    debounce_seconds: float = 2.0  # a table is looked at once it was quiet this long
    debounce_max_seconds: float = 30.0  # ... or its oldest unhandled event waited this long
    reconcile_interval_seconds: float = 30.0
    retrain_unindexed_fraction: float = 0.5  # retrain a vector index past this delta share
    min_rows_for_vector_index: int = 256
    compact_min_fragments: int = 8  # compact once this many small fragments pile up
    small_fragment_rows: int = 64 * 1024
    version_retention_seconds: float = 7 * 24 * 3600
    jobs_directory: str | None = None  # local root only (None: <state>/jobs); Azure: <root>/.system/jobs
    use_gpu: bool | None = None  # None: when the cluster has GPUs, or gpu_group says it can have one
    # The cluster has an autoscaled GPU worker group, even one scaled to zero: a large vector build
    # asks the autoscaler for a GPU worker and waits up to gpu_wait_seconds before training on a CPU.
    gpu_group: bool = False
    gpu_wait_seconds: float = 300.0
    index_segments: int = 2  # parallel index segments for a large build
    segment_min_rows: int = 100_000
    target_rows_per_fragment: int = 1024 * 1024  # compaction's output fragment size
    compact_parallelism: int = 2
    max_concurrent_jobs: int = 2  # tables worked on at once (one job at a time per table)
    max_attempts: int = 3  # a job that failed (or was interrupted) this often is failed
    retry_seconds: float = 5.0  # first retry delay of a failed job, doubling per attempt
    job_retention_seconds: float = 7 * 24 * 3600  # finished job records kept this long
    num_cpus: float = 0.25  # reserved by the agent replica; indexers reserve their own
    # CPUs each indexer task asks for. None: derived from the cluster (lancedb_ray.resources),
    # one CPU where the largest node has room, a share of what is left beside the service where not.
    task_num_cpus: float | None = None
    task_resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources, e.g. a node group
    # A job whose tasks could not start for this long (no resources, none coming) is failed
    # with the reason, then retried: long enough for an autoscaler to bring a node.
    stall_seconds: float = 600.0


class RaySettings(BaseModel):
    address: str | None = None  # None: start a local instance, or join RAY_ADDRESS
    namespace: str = "lancedb-ray"


class Settings(BaseSettings):
    """Everything configurable, in one object."""

    model_config = SettingsConfigDict(
        env_prefix="LANCEDB_RAY_", env_nested_delimiter="__", extra="forbid"
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    executors: ExecutorSettings = Field(default_factory=ExecutorSettings)
    events: EventBusSettings = Field(default_factory=EventBusSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    # The service's own local state (event log, outbox, job records of a local root). None: follows
    # the storage: <root>/.system for a local root; for an Azure root a directory named after the
    # root's identity under $XDG_STATE_HOME (~/.local/state)/lancedb-ray, so two roots never share.
    state_directory: str | None = None

    @model_validator(mode="after")
    def _state_follows_the_storage(self) -> Settings:
        """Every state path left unset goes under ``state_directory`` (see ``state_root``)."""
        state = Path(self.state_directory or state_root(self.storage.root))
        if self.events.embedded.directory is None:
            self.events.embedded.directory = str(state / "events")
        if self.events.outbox_directory is None:
            self.events.outbox_directory = str(state / "outbox")
        if self.agent.jobs_directory is None:
            self.agent.jobs_directory = str(state / "jobs")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over explicit (YAML) values, so operators can override a file.
        return env_settings, init_settings

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then the YAML file at ``path`` (or ``$LANCEDB_RAY_CONFIG``), then env."""
        path = path or os.environ.get("LANCEDB_RAY_CONFIG")
        data: dict[str, Any] = {}
        if path:
            data = yaml.safe_load(Path(path).read_text()) or {}
        _deep_merge(data, overrides)
        return cls(**data).with_absolute_paths()

    def with_absolute_paths(self) -> Settings:
        """Local paths made absolute now, so Ray workers (other working dirs) agree on them."""
        root = self.storage.root
        if root.uri and "://" not in root.uri:
            root.uri = _absolute(root.uri)
        for location in self.storage.databases.values():
            if location.uri and "://" not in location.uri:
                location.uri = _absolute(location.uri)
        self.events.embedded.directory = _absolute(str(self.events.embedded.directory))
        self.events.outbox_directory = _absolute(str(self.events.outbox_directory))
        self.agent.jobs_directory = _absolute(str(self.agent.jobs_directory))
        if self.executors.spill_dir:
            self.executors.spill_dir = _absolute(self.executors.spill_dir)
        return self

    def to_plain(self) -> dict[str, Any]:
        """A picklable dict with secrets revealed, for handing to Ray actors."""
        return _reveal(self.model_dump(mode="python"))

    @classmethod
    def from_plain(cls, data: dict[str, Any]) -> Settings:
        return cls.model_validate(data)


def state_root(root: StorageLocation) -> str:
    """Where a root's local state lives by default: beside a local root's data, else per root identity.

    ``.system`` can never be a database (names may not start with a dot).
    """
    if root.uri and ("://" not in root.uri or root.uri.startswith("file://")):
        return str(Path(root.uri.removeprefix("file://")) / SYSTEM_DIR)
    identity = "|".join((root.account or "", root.uri or "", root.container or "", root.prefix))
    readable = re.sub(r"[^A-Za-z0-9]+", "-", root.uri or f"{root.account}-{root.container}").strip("-")
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return str(base / "lancedb-ray" / f"{readable[:60]}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}")


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value
