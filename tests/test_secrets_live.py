"""Secrets stay out of Ray's control plane, checked on a running application.

An application on Azurite holds every kind of secret the settings know (an API key, an account
key, a SAS token, a connection string, the event buses' connection string and password). They
reach its processes as a deployment's do (the session's secrets file, read by every Ray process),
it serves tables through each credential, and then nothing Ray keeps holds any of them: not the
GCS key-value store (Serve's checkpoints: deployment configs and init args), not the creation
arguments of any named actor (Serve replicas, plan executors), not the state API's actor records
nor Serve's application details.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lancedb_ray.settings import CredentialMode, Settings, key_digest
from tests.support.azurite import CUSTOMER, Azurite
from tests.support.secrets import shared
from tests.support.service import LiveService, wait_routed

pytestmark = pytest.mark.azure

VAULT_KEY = f"vault-{uuid.uuid4().hex}"
NAMESPACE = "lancedb-ray-vault"
EVENTHUB = f"Endpoint=sb://vault.servicebus.windows.net/;SharedAccessKeyName=s;SharedAccessKey=hub{uuid.uuid4().hex}"
KAFKA_PASSWORD = f"kafka-{uuid.uuid4().hex}"


@dataclass
class Vault:
    service: LiveService
    secrets: dict[str, str]  # what must never show, by kind


def _containers(azurite: Azurite, *names: str) -> None:
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(azurite.customer.connection_string())
    for name in names:
        client.create_container(name)


def _container_sas(azurite: Azurite, container: str) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    rights = ContainerSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True)
    return generate_container_sas(CUSTOMER, container, account_key=azurite.customer.key, permission=rights,
                                  expiry=datetime.now(timezone.utc) + timedelta(hours=2))


@pytest.fixture(scope="module")
def vault(live_service: LiveService, azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Vault]:
    from ray import serve

    from lancedb_ray.api.app import build_app

    run = uuid.uuid4().hex[:8]
    root, sas, strings = (f"vault-{run}", f"vault-sas-{run}", f"vault-cs-{run}")
    _containers(azurite, root, sas, strings)
    sas_token = _container_sas(azurite, sas)
    state = tmp_path_factory.mktemp("vault-state")
    settings = Settings(
        server={"api_keys": [VAULT_KEY], "num_replicas": 1, "num_cpus": 0.25},
        storage={
            "root": azurite.location(CUSTOMER, root),
            "databases": {
                "by-sas": azurite.location(CUSTOMER, sas, credential=CredentialMode.SAS_TOKEN,
                                           sas_token=sas_token),
                "by-string": azurite.location(CUSTOMER, strings, credential=CredentialMode.CONNECTION_STRING),
            },
        },
        events={"eventhub": {"connection_string": EVENTHUB}, "kafka": {"sasl_password": KAFKA_PASSWORD},
                "embedded": {"directory": str(state / "events")}, "outbox_directory": str(state / "outbox")},
        executors={"num_executors": 1, "num_cpus": 0.25},
        agent={"enabled": False, "jobs_directory": str(state / "jobs")},
        ray={"namespace": NAMESPACE},
    )
    secrets = {"api key": VAULT_KEY, "account key": azurite.customer.key,
               "sas signature": sas_token.split("sig=")[1].split("&")[0],
               "connection string": azurite.customer.connection_string(),
               "event hub connection string": EVENTHUB.split("SharedAccessKey=")[1],
               "kafka password": KAFKA_PASSWORD}
    with shared(settings):
        serve.run(build_app({"settings": settings.to_plain()}), name="vault", route_prefix="/vault")
        url = f"{live_service.url}/vault"
        wait_routed(url, VAULT_KEY)
        yield Vault(LiveService(url=url, api_key=VAULT_KEY, root=Path("/nonexistent"), settings={}), secrets)
        serve.delete("vault")


def _rows(start: int, count: int) -> pa.Table:
    vectors = np.random.default_rng(start).normal(size=(count, 4)).astype("float32")
    return pa.table({"id": np.arange(start, start + count),
                     "vector": pa.array(vectors.tolist(), pa.list_(pa.float32(), 4))})


def _control_plane() -> dict[str, bytes]:
    """What Ray keeps about the cluster's applications and actors, by where it was found."""
    import grpc
    import ray
    from ray._private import ray_constants
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    from ray.experimental import internal_kv
    from ray.serve.context import _get_global_client

    found: dict[str, bytes] = {}
    namespaces = {getattr(ray_constants, n) for n in dir(ray_constants) if n.startswith("KV_NAMESPACE_")}
    for namespace in sorted(namespaces | {b"serve", None}, key=str):
        for key in internal_kv._internal_kv_list(b"", namespace=namespace):
            found[f"kv {namespace!r} {key!r}"] = internal_kv._internal_kv_get(key, namespace=namespace) or b""
    # Each named actor's creation task, as the GCS keeps it: its constructor arguments are in there.
    actors = gcs_service_pb2_grpc.ActorInfoGcsServiceStub(
        grpc.insecure_channel(ray.get_runtime_context().gcs_address))
    for named in ray.util.list_named_actors(all_namespaces=True):
        reply = actors.GetNamedActorInfo(gcs_service_pb2.GetNamedActorInfoRequest(
            name=named["name"], ray_namespace=named["namespace"]))
        found[f"actor {named['namespace']}/{named['name']}"] = reply.task_spec.SerializeToString()
    # The actor records the state API shows (it reads them from the GCS, as here).
    for actor in actors.GetAllActorInfo(gcs_service_pb2.GetAllActorInfoRequest()).actor_table_data:
        found[f"actor record {actor.actor_id.hex()}"] = actor.SerializeToString()
    found["serve details"] = json.dumps(_get_global_client().get_serve_details(), default=str).encode()
    return found


def test_no_secret_in_rays_control_plane(vault: Vault) -> None:
    # The processes read every credential themselves: a table through each of them.
    for database in ("vault-root-db", "by-sas", "by-string"):
        table = vault.service.connect(database).create_table("t", _rows(0, 40))
        table.add(_rows(40, 20))
        assert table.count_rows("id >= 10") == 50
        assert table.search([0.0] * 4).limit(3).to_arrow().num_rows == 3  # through the plan executors

    found = _control_plane()
    vault_actors = [where for where in found if where.startswith(f"actor {NAMESPACE}/")]
    assert vault_actors, "the vault's plan executors are named actors in its namespace"
    digest = key_digest(VAULT_KEY).encode()
    assert any(digest in stored for where, stored in found.items() if where.startswith("actor serve/")), \
        "the replicas' creation arguments (their settings) are in what was read"
    leaks = {(kind, where) for kind, secret in vault.secrets.items()
             for where, stored in found.items() if secret.encode() in stored}
    assert leaks == set()

