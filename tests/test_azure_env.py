"""An ``az://container/prefix`` root with lance's own Azure environment reaches what lancedb.connect reaches.

The oracle is ``lancedb.connect("az://container/prefix/<database>")`` run in a
process of its own with only that environment (lance caches object stores per
process): what it writes the service reads, and the other way round.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest

from lancedb_ray.settings import CredentialMode, StorageLocation, StorageSettings
from lancedb_ray.storage import credentials
from lancedb_ray.storage.catalog import StorageCatalog
from tests.support.azurite import CUSTOMER, Azurite
from tests.support.processes import free_port, serve_ingress_env

ORACLE = textwrap.dedent("""
    import sys, lancedb, pyarrow as pa
    db = lancedb.connect(sys.argv[1])
    if sys.argv[2] == "write":
        db.create_table("from_lancedb", pa.table({"id": [1, 2, 3]}))
    else:
        print(db.open_table("from_service").count_rows())
""")


def _sas(azurite: Azurite) -> str:
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    return generate_account_sas(
        CUSTOMER, azurite.accounts[CUSTOMER].key, ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True),
        datetime.now(timezone.utc) + timedelta(hours=1))


def _key(a: Azurite) -> dict[str, str]:
    return {"AZURE_STORAGE_ACCOUNT_NAME": CUSTOMER, "AZURE_STORAGE_ACCOUNT_KEY": a.accounts[CUSTOMER].key}


def _emulator(a: Azurite) -> dict[str, str]:
    return {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": f"http://127.0.0.1:{a.port}"}


ENVIRONMENTS: dict[str, Callable[[Azurite], dict[str, str]]] = {
    # As the lancedb docs tell users to set up Azurite.
    "emulator": lambda a: {**_key(a), **_emulator(a)},
    "endpoint": lambda a: {**_key(a), "AZURE_STORAGE_ENDPOINT": a.accounts[CUSTOMER].blob_endpoint,
                           "AZURE_STORAGE_ALLOW_HTTP": "true"},
    "sas": lambda a: {"AZURE_STORAGE_ACCOUNT_NAME": CUSTOMER, "AZURE_STORAGE_SAS_TOKEN": _sas(a),
                      **_emulator(a)},
}


def _oracle(env: dict[str, str], uri: str, action: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE", "LANCEDB_RAY_"))}
    result = subprocess.run([sys.executable, "-c", ORACLE, uri, action], env={**clean, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.mark.parametrize("convention", sorted(ENVIRONMENTS))
def test_service_and_lancedb_connect_share_data_under_lances_environment(
    azurite: Azurite, convention: str
) -> None:
    env = ENVIRONMENTS[convention](azurite)
    container = f"env-{convention}-{uuid.uuid4().hex[:6]}"  # a container, so an object store, per case
    catalog = StorageCatalog(StorageSettings(root=StorageLocation(uri=f"az://{container}/root")), env=env)
    location = catalog.resolve("shop")  # creates the container, as on first use
    assert location.uri == f"az://{container}/root/shop"
    _oracle(env, location.uri, "write")
    ours = lancedb.connect(location.uri, storage_options=location.storage_options)
    assert ours.open_table("from_lancedb").count_rows() == 3
    ours.create_table("from_service", pa.table({"id": [1, 2]}))
    assert _oracle(env, location.uri, "read") == "2"


def test_connection_string_and_workload_identity_from_the_environment(azurite: Azurite) -> None:
    root = StorageLocation(uri="az://lancedb/root")
    by_string = credentials.with_environment(
        root, {"AZURE_STORAGE_CONNECTION_STRING": azurite.accounts[CUSTOMER].connection_string()})
    assert by_string.credential is CredentialMode.CONNECTION_STRING
    place, options = credentials.place_and_options(by_string, {})
    assert place.account == CUSTOMER
    assert options[credentials.ENDPOINT] == azurite.accounts[CUSTOMER].blob_endpoint
    identity = {"AZURE_STORAGE_ACCOUNT_NAME": "prodacct", "AZURE_CLIENT_ID": "c", "AZURE_TENANT_ID": "t",
                "AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/token"}
    place, options = credentials.place_and_options(root, identity)
    assert place.account == "prodacct"
    assert {options[credentials.CLIENT_ID], options[credentials.TENANT_ID],
            options[credentials.FEDERATED_TOKEN_FILE]} == {"c", "t", "/var/run/secrets/token"}


def test_settings_win_over_the_environment() -> None:
    explicit = StorageLocation(uri="az://lancedb/root", account="fromsettings",
                               credential=CredentialMode.ACCOUNT_KEY, account_key="a2V5")
    env = {"AZURE_STORAGE_ACCOUNT_NAME": "fromenv", "AZURE_STORAGE_ACCOUNT_KEY": "b3RoZXI="}
    place, options = credentials.place_and_options(explicit, env)
    assert place.account == "fromsettings" and options[credentials.ACCOUNT_KEY] == "a2V5"
    local = StorageLocation(uri="/tmp/somewhere")
    assert credentials.with_environment(local, env) is local


def test_serve_with_an_az_root_and_lances_environment(azurite: Azurite, tmp_path: Path) -> None:
    """The issue's case: `lancedb-ray serve --storage az://...` with the environment the lancedb docs give."""
    env = ENVIRONMENTS["emulator"](azurite)
    container = f"cli-{uuid.uuid4().hex[:6]}"
    port = free_port()
    process_env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE", "LANCEDB_RAY_"))}
    process_env.update(env, RAY_ADDRESS="local",
                       LANCEDB_RAY_EVENTS__EMBEDDED__DIRECTORY=str(tmp_path / "events"),
                       LANCEDB_RAY_EVENTS__OUTBOX_DIRECTORY=str(tmp_path / "outbox"),
                       LANCEDB_RAY_EXECUTORS__NUM_EXECUTORS="1", LANCEDB_RAY_AGENT__ENABLED="false",
                       **serve_ingress_env())
    process = subprocess.Popen(
        [sys.executable, "-m", "lancedb_ray.cli", "serve", "--port", str(port),
         "--storage", f"az://{container}/root", "--api-key", "k"],
        env=process_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        printed = []
        for line in process.stdout:
            printed.append(line)
            if "Press Ctrl-C to stop." in line or process.poll() is not None:
                break
        assert "Press Ctrl-C to stop." in "".join(printed), "".join(printed)[-3000:]
        db = lancedb.connect("db://clidb", api_key="k", host_override=f"http://127.0.0.1:{port}")
        db.create_table("from_service", pa.table({"id": [1, 2]}))
        assert _oracle(env, f"az://{container}/root/clidb", "read") == "2"
        _oracle(env, f"az://{container}/root/clidb", "write")
        assert db.open_table("from_lancedb").count_rows() == 3
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=180)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
