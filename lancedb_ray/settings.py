"""One typed settings object for every part of lancedb-ray.

Loaded from defaults, then an optional YAML file, then environment variables
prefixed ``LANCEDB_RAY_`` (nested fields joined with ``__``, e.g.
``LANCEDB_RAY_SERVER__PORT=9000``), then explicit overrides (command-line
flags): each source beats the ones before it. Every model refuses unknown
keys, so a typo fails loudly instead of being ignored. The same object is
passed, as a plain dict, to every Ray deployment and actor so that they all agree,
without its secrets: each process reads those itself (``Settings.to_plain``).
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

SYSTEM_DIR = ".system"  # the service's own files beside a local root's databases


class StrictModel(BaseModel):
    """A settings section: unknown keys (typos) are errors that name them."""

    model_config = ConfigDict(extra="forbid")


class CredentialMode(str, Enum):
    """How a storage location authenticates to Azure Blob Storage."""

    NONE = "none"  # local paths, or anonymous access
    WORKLOAD_IDENTITY = "workload_identity"  # DefaultAzureCredential (AKS workload identity)
    ACCOUNT_KEY = "account_key"
    SAS_TOKEN = "sas_token"
    CONNECTION_STRING = "connection_string"
    AZURITE = "azurite"  # the well-known development account of the emulator


def on_object_store(uri: str) -> bool:
    """Whether ``uri`` names object storage (a round trip per read), not a local directory."""
    return "://" in uri and not uri.startswith("file://")


class StorageLocation(StrictModel):
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

    @property
    def on_object_store(self) -> bool:
        """A URI of object storage, or an account's container."""
        return on_object_store(self.uri) if self.uri else bool(self.container)

    @field_validator("options")
    @classmethod
    def _no_credentials(cls, options: dict[str, str]) -> dict[str, str]:
        """Credentials have fields of their own, which never travel through Ray; options would."""
        for name in options:
            if _CREDENTIAL_OPTION.fullmatch(name.lower()):
                raise ValueError(f"options.{name} is a credential: give it as account_key, sas_token or "
                                 "connection_string, or use workload identity")
        return options


# object_store's Azure credential options and their aliases (options are for timeouts and retries).
_CREDENTIAL_OPTION = re.compile(
    r"(azure_storage_)?(account_key|access_key|master_key|sas_key|sas_token|client_secret|token)|"
    r"azure_client_secret|bearer_token|azure_storage_key"
)


class UnknownDatabasePolicy(str, Enum):
    CREATE = "create"  # place it under the default location
    REFUSE = "refuse"  # answer 404


class StorageSettings(StrictModel):
    """The storage catalog: database name -> location."""

    root: StorageLocation = Field(default_factory=lambda: StorageLocation(uri="./data"))
    databases: dict[str, StorageLocation] = Field(default_factory=dict)
    unknown_databases: UnknownDatabasePolicy = UnknownDatabasePolicy.CREATE


_DATABASE_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\*?|\*")
DEV_KEY = "lancedb-ray-dev-key"  # documented, so accepted only on loopback


def key_digest(key: str) -> str:
    """The SHA-256 hex digest settings hold in place of an API key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Role(str, Enum):
    """What a key may do, each role including the one before."""

    READ = "read"  # queries, describe, list, stats, versions, tags
    WRITE = "write"  # also every data, schema, index, table and namespace change
    ADMIN = "admin"  # also /v1/admin/*


class Quotas(StrictModel):
    """What one key may use, enforced by each query node replica on its own."""

    requests_per_second: float = Field(default=200.0, ge=0)  # token bucket refill; 0: no limit
    burst: int = Field(default=400, ge=1)  # requests admitted at once from a full bucket
    max_k: int = Field(default=100_000, ge=1)  # results per query vector ("no limit" exempt)
    max_query_vectors: int = Field(default=1_000, ge=1)  # query vectors in one request
    max_body_bytes: int = Field(default=512 * 1024 * 1024, ge=1)  # within server.max_body_bytes
    concurrent_writes_per_table: int = Field(default=16, ge=1)  # writes in flight on one table


class ApiKey(StrictModel):
    """One API key: a name for logs, the digest of the key itself, its databases and role.

    ``databases`` holds names or ``prefix*`` patterns (``*`` alone: every database).
    A bare string in its place is a key given in the clear (the ``--api-key`` option,
    a test): it becomes an admin key on every database, and only its digest is kept.
    """

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    databases: list[str] = Field(min_length=1)
    role: Role = Role.READ
    quotas: Quotas | None = None  # None: server.quotas

    @model_validator(mode="before")
    @classmethod
    def _from_clear_key(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return {"name": f"key-{key_digest(value)[:8]}", "sha256": key_digest(value),
                    "databases": ["*"], "role": Role.ADMIN}
        return value

    @field_validator("databases")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        return database_patterns(patterns)

    def allows(self, database: str) -> bool:
        return matches_database(self.databases, database)


def database_patterns(patterns: list[str]) -> list[str]:
    """``patterns`` if each is a database name, a ``prefix*`` pattern or ``*``."""
    for pattern in patterns:
        if not _DATABASE_PATTERN.fullmatch(pattern):
            raise ValueError(f"'{pattern}' is neither a database name nor a 'prefix*' pattern")
    return patterns


def matches_database(patterns: list[str], database: str) -> bool:
    return any(
        database.startswith(pattern[:-1]) if pattern.endswith("*") else database == pattern
        for pattern in patterns
    )


class ServerSettings(StrictModel):
    """The query node (Ray Serve) and its HTTP surface."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: list[ApiKey] = Field(default_factory=lambda: [ApiKey(
        name="dev", sha256=key_digest(DEV_KEY), databases=["*"], role=Role.ADMIN)])
    num_replicas: int | str = 1  # an int, or "auto" for Serve autoscaling
    max_replicas: int = 4
    max_ongoing_requests: int = 64
    max_queued_requests: int = 256  # beyond this the proxy answers 503, so the client retries
    num_cpus: float = 0.5  # CPUs reserved per replica; the work itself runs in lance's threads
    # "haproxy": Serve's HAProxy ingress (far less per-request overhead than the Python
    # proxy); "serve": the Python proxy. Read when this process starts Ray.
    proxy: Literal["haproxy", "serve"] = "haproxy"
    max_body_bytes: int = 512 * 1024 * 1024
    # Writes through the service are read by the next query on every replica (version
    # registry). This bounds writes made outside it (embedded lancedb on the same storage):
    # each table's latest version is re-read from storage once per this interval, shared by
    # every replica; 0 re-reads it on every request (a storage request per query).
    read_consistency_seconds: float = Field(1.0, ge=0)
    idempotency_window: int = 20  # recent versions searched for a retried write's request id
    # A multipart upload not completed within this is expired by the agent (its staged data
    # deleted). Below lance's 7 days, after which version cleanup deletes unreferenced data files.
    multipart_upload_ttl_seconds: float = Field(default=24 * 3600, gt=0, le=6 * 24 * 3600)
    # What one request may make a replica decode, checked before decoding (4xx beyond).
    max_body_rows: int = 10_000_000  # rows an Arrow body may declare
    max_decoded_bytes: int = 512 * 1024 * 1024  # bytes an Arrow body may decode to
    max_compression_ratio: float = 32.0  # how far compressed Arrow buffers may expand
    max_json_depth: int = 64  # nesting of a JSON body
    quotas: Quotas = Field(default_factory=Quotas)  # for keys without quotas of their own
    # create_index is a job of the agent, answered at once as LanceDB Cloud does (clients poll
    # with wait_timeout). >0: the request waits up to that long for the job, answering with its
    # error if it fails (for clients that expect the index when create_index returns).
    index_wait_seconds: float = 0.0


class ExecutorSettings(StrictModel):
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
    # An executor whose call is unanswered for half this long is pinged; if the ping is not
    # answered in the other half (its node lost, its process frozen), its sub-plans go to the
    # next executor: a lost executor slows a query by at most this much.
    failover_seconds: float = Field(3.0, gt=0)
    # Index searches of a table on a local disk run on the query node, as embedded lancedb runs
    # them: there the executors' caches add nothing to the OS page cache, and the hop to an
    # executor cost 1.2-4.0 ms of a query's p50 and 13-23% of QPS (bench/query_bench.py's
    # "service, executors search" row). True: the executors run them too.
    search_local_disk_indexes: bool = False


class EventBusBackend(str, Enum):
    EMBEDDED = "embedded"
    KAFKA = "kafka"
    EVENTHUB = "eventhub"


class EmbeddedBusSettings(StrictModel):
    directory: str | None = None  # a SQLite (WAL) log + group checkpoints; None: <state>/events
    group_id: str = "lancedb-ray-agent"
    # Events every consumer group has committed are deleted once older than this.
    retention_seconds: float = Field(default=86_400.0, ge=0)


class KafkaBusSettings(StrictModel):
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


class EventHubBusSettings(StrictModel):
    connection_string: SecretStr | None = None
    fully_qualified_namespace: str | None = None  # with workload identity instead of a string
    eventhub_name: str = "lancedb-ray-changes"
    consumer_group: str = "$Default"
    checkpoint_connection_string: SecretStr | None = None
    checkpoint_container: str = "lancedb-ray-checkpoints"
    checkpoint_account_url: str | None = None  # with workload identity instead of a string
    max_buffered_events: int = 1000  # received but not yet polled; the receiver waits beyond


class EventBusSettings(StrictModel):
    backend: EventBusBackend = EventBusBackend.EMBEDDED
    outbox_directory: str | None = None  # failed publishes, retried from here; None: <state>/outbox
    publish_timeout_seconds: float = 10.0  # one publish attempt, before it counts as failed
    retry_initial_seconds: float = 0.5  # outbox retry backoff, doubling up to the maximum
    retry_max_seconds: float = 30.0
    embedded: EmbeddedBusSettings = Field(default_factory=EmbeddedBusSettings)
    kafka: KafkaBusSettings = Field(default_factory=KafkaBusSettings)
    eventhub: EventHubBusSettings = Field(default_factory=EventHubBusSettings)


class AgentSettings(StrictModel):
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
    # Databases (names or ``prefix*``) the agent keeps no automatic watch over: no compaction,
    # optimisation, retraining or cleanup of their tables (index builds a client asks for still
    # run). For tables whose every version must come from their writers: comparisons, replays.
    unmaintained_databases: list[str] = Field(default_factory=list)

    @field_validator("unmaintained_databases")
    @classmethod
    def _unmaintained_patterns(cls, patterns: list[str]) -> list[str]:
        return database_patterns(patterns)

    def maintains(self, database: str) -> bool:
        return not matches_database(self.unmaintained_databases, database)


class LoggingSettings(StrictModel):
    """How every process of the service logs (lancedb_ray.logging_setup)."""

    format: Literal["text", "json"] = "text"  # json in production, for log pipelines
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class RaySettings(StrictModel):
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
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
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
        # First wins: explicit values (flags, or the plain dict a Ray actor gets), then the
        # environment, so operators can override a file, then the file load() read.
        return init_settings, env_settings, _FileSource(settings_cls)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
        """Defaults, the YAML file at ``path`` (or ``$LANCEDB_RAY_CONFIG``), env, then ``overrides``."""
        path = path or os.environ.get("LANCEDB_RAY_CONFIG")
        data: dict[str, Any] = {}
        if path:
            data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"settings file {path} must hold a mapping, not {type(data).__name__}")
        token = _FILE_DATA.set(data)
        try:
            settings = cls(**overrides).with_absolute_paths()
        finally:
            _FILE_DATA.reset(token)
        _fill_unset_secrets(settings, _secrets_file())
        return settings

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
        """A picklable dict for handing to Ray deployments and actors, without a secret.

        Whatever a Ray deployment or actor gets as an argument stays in Ray's control
        plane (the GCS, its checkpoints, Redis with GCS fault tolerance). So every secret
        is left out, and each process reads it itself (``from_plain``): from its
        environment (``LANCEDB_RAY_<PATH>``), the settings file of ``$LANCEDB_RAY_CONFIG``
        or the secrets file of ``$LANCEDB_RAY_SECRETS``, as Kubernetes gives every pod.
        A secret only this process knows (given in code) is refused: ``SecretNotShared``.
        """
        return _plain(self.model_dump(mode="python"), (), os.environ, _shared_secrets())

    @classmethod
    def from_plain(cls, data: dict[str, Any]) -> Settings:
        """Settings from ``to_plain``, with the secrets this process reads for itself."""
        data = copy.deepcopy(data)
        _fill_secrets(data, _shared_secrets())
        return cls(**data)


class SecretNotShared(ValueError):
    """A secret given to this process only, which Ray would have to carry to the others."""

    def __init__(self, path: tuple[str, ...]) -> None:
        super().__init__(
            f"the secret {'.'.join(path)} was given to this process only, and Ray would keep it in its "
            f"control plane (deployment and actor arguments). Give it to every Ray process instead, "
            f"before Ray starts: the environment variable {_env_name(path)} (in Kubernetes from a "
            "Secret), the settings file named by LANCEDB_RAY_CONFIG, or the secrets file named by "
            "LANCEDB_RAY_SECRETS"
        )


_FILE_DATA: ContextVar[dict[str, Any]] = ContextVar("lancedb_ray_settings_file")


class _FileSource(PydanticBaseSettingsSource):
    """The YAML file's values, the lowest-priority source (load() sets them)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        return _FILE_DATA.get({})


def state_root(root: StorageLocation) -> str:
    """Where a root's local state lives by default: beside a local root's data, else per root identity.

    ``.system`` can never be a database (names may not start with a dot).
    """
    if root.uri and not on_object_store(root.uri):
        return str(Path(root.uri.removeprefix("file://")) / SYSTEM_DIR)
    identity = "|".join((root.account or "", root.uri or "", root.container or "", root.prefix))
    readable = re.sub(r"[^A-Za-z0-9]+", "-", root.uri or f"{root.account}-{root.container}").strip("-")
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return str(base / "lancedb-ray" / f"{readable[:60]}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}")


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


_SECRET_FIELDS = frozenset(
    name
    for model in (StorageLocation, KafkaBusSettings, EventHubBusSettings)
    for name, field in model.model_fields.items()
    if "SecretStr" in str(field.annotation)
)
_SHARED = object()  # a secret left out of plain settings: each process reads it itself


def _env_name(path: tuple[str, ...]) -> str:
    return "LANCEDB_RAY_" + "__".join(path).upper()


def _shared_secrets() -> dict[str, Any]:
    """The secrets every process of the cluster reads from its own files, as a nested mapping.

    The settings file of ``$LANCEDB_RAY_CONFIG`` (secrets written in it) and the secrets
    file of ``$LANCEDB_RAY_SECRETS``, which holds only secrets (a Kubernetes Secret mounted
    as a file, beside the ConfigMap); the secrets file wins.
    """
    path = os.environ.get("LANCEDB_RAY_CONFIG")
    config = (yaml.safe_load(Path(path).read_text()) or {}) if path and Path(path).is_file() else {}
    return _merged(config, _secrets_file())


def _secrets_file() -> dict[str, Any]:
    """``$LANCEDB_RAY_SECRETS``: secrets only, shaped like the settings (a missing file is an error)."""
    path = os.environ.get("LANCEDB_RAY_SECRETS")
    if not path:
        return {}
    if not Path(path).is_file():
        raise ValueError(f"secrets file {path} (LANCEDB_RAY_SECRETS) does not exist")
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"secrets file {path} must hold a mapping, not {type(data).__name__}")
    _only_secrets(data, (), path)
    return data


def _only_secrets(data: dict[str, Any], path: tuple[str, ...], file: str) -> None:
    for key, value in data.items():
        where = (*path, str(key))
        if isinstance(value, dict):
            _only_secrets(value, where, file)
        elif key not in _SECRET_FIELDS or not isinstance(value, str):
            raise ValueError(f"secrets file {file}: {'.'.join(where)} is not a secret; "
                             "settings belong in the settings file")


def _merged(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in top.items()}}
    return top


def _at(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _plain(value: Any, path: tuple[str, ...], env: Mapping[str, str], shared: dict[str, Any]) -> Any:
    if isinstance(value, SecretStr):
        if value.get_secret_value() not in (env.get(_env_name(path)), _at(shared, path)):
            raise SecretNotShared(path)
        return _SHARED
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        plain = {k: _plain(v, (*path, str(k)), env, shared) for k, v in value.items()}
        return {k: v for k, v in plain.items() if v is not _SHARED}
    if isinstance(value, list):
        return [_plain(v, path, env, shared) for v in value]
    return value


def _fill_secrets(data: dict[str, Any], shared: dict[str, Any]) -> None:
    """Put back the secrets ``to_plain`` left out that the shared files hold (env wins anyway)."""
    for key, value in shared.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _fill_secrets(data[key], value)
        elif key not in data and key in _SECRET_FIELDS:
            data[key] = value


def _fill_unset_secrets(model: Any, secrets: dict[str, Any]) -> None:
    """Set the secrets of the secrets file on the sections ``model`` has that hold none yet.

    Only sections the settings already have: the file does not add a database.
    """
    for key, value in secrets.items():
        inner = model.get(key) if isinstance(model, dict) else getattr(model, key, None)
        if isinstance(value, dict):
            _fill_unset_secrets(inner, value)
        elif isinstance(model, BaseModel) and key in _SECRET_FIELDS and inner is None:
            setattr(model, key, SecretStr(value))
