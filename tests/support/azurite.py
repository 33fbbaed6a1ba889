"""Pytest plugin: Azurite Blob emulators with two accounts, for storage tests.

``azurite`` is one in-memory emulator per session. ``restartable_azurite``
persists to a temporary directory so that ``stop()`` / ``start()`` simulate a
storage outage and its recovery on the same port, data intact.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lancedb_ray.settings import CredentialMode, StorageLocation
from lancedb_ray.storage.credentials import AZURITE_ACCOUNT, AZURITE_KEY
from tests.support.processes import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
AZURITE_VERSION = "3.37.0"
AZURITE_BIN = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
PROVIDER = AZURITE_ACCOUNT
CUSTOMER = "customer"
CUSTOMER_KEY = base64.b64encode(b"lancedb-ray customer test key!!!").decode()


@dataclass(frozen=True)
class AzuriteAccount:
    name: str
    key: str
    blob_endpoint: str

    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.name};"
            f"AccountKey={self.key};BlobEndpoint={self.blob_endpoint};"
        )


class Azurite:
    """One Azurite Blob process on a fixed loopback port."""

    def __init__(self, port: int, location: Path | None, log: Path) -> None:
        self.port = port
        self._location = location
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        keys = {PROVIDER: AZURITE_KEY, CUSTOMER: CUSTOMER_KEY}
        self.accounts = {
            name: AzuriteAccount(name, key, f"http://127.0.0.1:{port}/{name}") for name, key in keys.items()
        }

    @property
    def provider(self) -> AzuriteAccount:
        return self.accounts[PROVIDER]

    @property
    def customer(self) -> AzuriteAccount:
        return self.accounts[CUSTOMER]

    def start(self) -> None:
        args = [str(_azurite_binary()), "--blobHost", "127.0.0.1", "--blobPort", str(self.port)]
        args += ["--skipApiVersionCheck", "--loose", "--disableTelemetry"]
        if self._location is None:
            args.append("--inMemoryPersistence")
        else:
            args += ["--location", str(self._location)]
        env = dict(os.environ)
        env["AZURITE_ACCOUNTS"] = ";".join(f"{a.name}:{a.key}" for a in self.accounts.values())
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_listening()

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None

    def location(
        self,
        account: str,
        container: str,
        prefix: str = "",
        credential: CredentialMode = CredentialMode.ACCOUNT_KEY,
        **fields: object,
    ) -> StorageLocation:
        """A StorageLocation for ``account``/``container``/``prefix`` on this emulator."""
        acct = self.accounts[account]
        values: dict[str, object] = {
            "account": account,
            "container": container,
            "prefix": prefix,
            "credential": credential,
            "endpoint": acct.blob_endpoint,
        }
        if credential is CredentialMode.ACCOUNT_KEY or (credential is CredentialMode.AZURITE
                                                         and account != PROVIDER):
            values["account_key"] = acct.key  # the provider's published key goes without saying
        elif credential is CredentialMode.CONNECTION_STRING:
            values["connection_string"] = acct.connection_string()
            values.pop("endpoint")
        values.update(fields)
        return StorageLocation(**values)

    def _wait_until_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"azurite exited early; see {self._log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"azurite did not listen on port {self.port}; see {self._log}")


def _azurite_binary() -> Path:
    if not AZURITE_BIN.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("Azurite is not installed and npm is not available")
        subprocess.run(
            [npm, "install", "--prefix", str(REPO / ".tools"), f"azurite@{AZURITE_VERSION}"],
            check=True,
            capture_output=True,
        )
    return AZURITE_BIN


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A shared in-memory Azurite with the provider and customer accounts."""
    server = Azurite(free_port(), None, tmp_path_factory.mktemp("azurite") / "azurite.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def restartable_azurite(tmp_path: Path) -> Iterator[Azurite]:
    """A private Azurite persisted on disk, so that a test may stop and restart it."""
    (tmp_path / "azurite-data").mkdir()
    server = Azurite(free_port(), tmp_path / "azurite-data", tmp_path / "azurite.log")
    server.start()
    yield server
    server.stop()
