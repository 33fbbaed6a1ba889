"""The storage catalog against Azurite: real lance and lancedb I/O on two accounts,
several containers and every key-based credential mode, isolation between
accounts, container creation, and storage faults (denied access, outage, recovery).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import lance
import lancedb
import numpy as np
import pyarrow as pa
import pytest
from azure.storage.blob import (
    AccountSasPermissions,
    BlobServiceClient,
    ContainerSasPermissions,
    ResourceTypes,
    generate_account_sas,
    generate_container_sas,
)

from lancedb_ray.errors import Forbidden, LanceDBRayError, NotFound, Unavailable
from lancedb_ray.settings import CredentialMode, StorageLocation, StorageSettings
from lancedb_ray.storage import DatabaseLocation, StorageCatalog, storage_error
from tests.support.azurite import CUSTOMER, PROVIDER, Azurite

pytestmark = pytest.mark.azure

ALL_RIGHTS = {"read": True, "write": True, "delete": True, "list": True, "add": True}
# One retry keeps outage tests fast and still rides over a stale pooled connection.
FAST_FAIL = {"client_max_retries": "1", "client_retry_timeout": "10"}


def _expiry() -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=1)


def _name(stem: str) -> str:
    """A container name unique to this run, since the session emulator is shared."""
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def _container_sas(az: Azurite, account: str, container: str) -> str:
    key = az.accounts[account].key
    perms = ContainerSasPermissions(**ALL_RIGHTS, create=True)
    return generate_container_sas(account, container, account_key=key, permission=perms, expiry=_expiry())


def _account_sas(az: Azurite, account: str) -> str:
    return generate_account_sas(
        account,
        az.accounts[account].key,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(**ALL_RIGHTS, create=True),
        expiry=_expiry(),
    )


def _service(az: Azurite, account: str) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(az.accounts[account].connection_string())


def _rows(n: int, start: int = 0, tag: str = "") -> pa.Table:
    rng = np.random.default_rng(start)
    vectors = rng.random((n, 8), dtype=np.float32)
    return pa.table(
        {
            "id": pa.array(range(start, start + n), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 8),
            "tag": pa.array([tag] * n),
        }
    )


def _secrets(az: Azurite) -> list[str]:
    return [a.key for a in az.accounts.values()]


def _classified(exc: BaseException, database: str) -> LanceDBRayError:
    mapped = storage_error(exc, database)
    assert mapped is not None, f"unclassified storage error: {type(exc).__name__}: {exc}"
    return mapped


@pytest.fixture(scope="module")
def places(azurite: Azurite) -> dict[str, str]:
    """Container names for this module's catalog, one set per test run."""
    return {
        "root": _name("root"),
        "ledger": _name("ledger"),
        "media": _name("media"),
        "reports": _name("reports"),
        "crm": _name("crm"),
        "dev": _name("dev"),
    }


@pytest.fixture(scope="module")
def catalog(azurite: Azurite, places: dict[str, str]) -> StorageCatalog:
    """Six databases on two accounts and six containers, each credential mode once."""
    _service(azurite, PROVIDER).create_container(places["reports"])  # container SAS cannot
    az = azurite
    settings = StorageSettings(
        root=az.location(PROVIDER, places["root"], "tenants"),
        databases={
            "ledger": az.location(PROVIDER, places["ledger"], "dbs/ledger"),
            "media": az.location(
                PROVIDER,
                places["media"],
                credential=CredentialMode.SAS_TOKEN,
                sas_token=_account_sas(az, PROVIDER),
            ),
            "reports": az.location(
                PROVIDER,
                places["reports"],
                "r",
                credential=CredentialMode.SAS_TOKEN,
                sas_token="?" + _container_sas(az, PROVIDER, places["reports"]),
            ),
            "crm": az.location(CUSTOMER, places["crm"], credential=CredentialMode.CONNECTION_STRING),
            # The same container name and prefix as "ledger", in the other account.
            "twin": az.location(CUSTOMER, places["ledger"], "dbs/ledger"),
            "dev": StorageLocation(
                uri=f"az://{places['dev']}/x",
                credential=CredentialMode.AZURITE,
                endpoint=az.provider.blob_endpoint,
            ),
        },
    )
    return StorageCatalog(settings)


def test_lance_lifecycle_through_the_catalog(catalog: StorageCatalog) -> None:
    location = catalog.resolve("ledger")
    uri, options = location.table_uri("items"), location.storage_options

    lance.write_dataset(_rows(300), uri, storage_options=options)
    lance.write_dataset(_rows(100, start=300), uri, mode="append", storage_options=options)
    dataset = lance.dataset(uri, storage_options=options)
    dataset.delete("id < 50")
    dataset.create_index("vector", "IVF_PQ", num_partitions=2, num_sub_vectors=2)

    reopened = lance.dataset(uri, storage_options=options)
    assert reopened.count_rows() == 350
    assert reopened.version == 4
    assert [index.name for index in reopened.describe_indices()] == ["vector_idx"]
    query = _rows(1, start=123)["vector"][0].as_py()
    hits = reopened.to_table(nearest={"column": "vector", "q": query, "k": 3, "nprobes": 2})
    assert hits.num_rows == 3
    assert reopened.to_table(filter="id < 50").num_rows == 0


def test_many_accounts_containers_and_credentials_at_once(
    catalog: StorageCatalog, azurite: Azurite, places: dict[str, str]
) -> None:
    databases = ["ledger", "media", "reports", "crm", "twin", "dev", "newcomer"]
    connections = {}
    for db in databases:
        location = catalog.resolve(db)
        conn = lancedb.connect(location.uri, storage_options=location.storage_options)
        conn.create_table("notes", _rows(10, tag=db), mode="overwrite")
        connections[db] = conn

    for db in databases:  # each database sees only its own rows, through a fresh connection
        location = catalog.resolve(db)
        conn = lancedb.connect(location.uri, storage_options=location.storage_options)
        tables = conn.list_tables().tables
        assert "notes" in tables
        assert "items" not in tables or db == "ledger"  # the lifecycle test's table
        tags = conn.open_table("notes").to_arrow()["tag"].unique().to_pylist()
        assert tags == [db]

    # The data landed in the account and container each database is configured for.
    def roots(account: str, container: str) -> set[str]:
        names = _service(azurite, account).get_container_client(container).list_blob_names()
        return {n.partition("notes.lance/")[0].rstrip("/") for n in names if "notes.lance/" in n}

    assert roots(PROVIDER, places["ledger"]) == {"dbs/ledger"}
    assert roots(CUSTOMER, places["ledger"]) == {"dbs/ledger"}
    assert roots(CUSTOMER, places["crm"]) == {""}
    assert roots(PROVIDER, places["media"]) == {""}
    assert roots(PROVIDER, places["reports"]) == {"r"}
    assert roots(PROVIDER, places["dev"]) == {"x"}
    assert roots(PROVIDER, places["root"]) == {"tenants/newcomer"}


def test_abfss_uri_names_the_same_place(azurite: Azurite, catalog: StorageCatalog) -> None:
    ledger = catalog.resolve("ledger")
    container = ledger.uri.removeprefix("az://").split("/")[0]
    alias = StorageLocation(
        uri=f"abfss://{container}@{PROVIDER}.dfs.core.windows.net/dbs/ledger",
        credential=CredentialMode.ACCOUNT_KEY,
        account_key=azurite.provider.key,
        endpoint=azurite.provider.blob_endpoint,
    )
    location = StorageCatalog(StorageSettings(databases={"ledger": alias})).resolve("ledger")
    assert location.uri == ledger.uri
    conn = lancedb.connect(location.uri, storage_options=location.storage_options)
    assert "notes" in conn.list_tables().tables


def test_filesystem_for_each_credential_mode(catalog: StorageCatalog) -> None:
    for db in ["ledger", "media", "reports", "crm", "dev"]:
        location = catalog.resolve(db)
        fs = location.filesystem()
        record = location.fs_path("_jobs", "job-1.json")
        fs.pipe(record, db.encode())
        assert fs.cat(record) == db.encode()
        assert fs.ls(location.fs_path("_jobs"), detail=False) == [record]
        fs.rm(record)


def test_missing_container_is_created_on_first_use(azurite: Azurite, places: dict[str, str]) -> None:
    container = _name("fresh")
    catalog = StorageCatalog(StorageSettings(databases={"fresh": azurite.location(CUSTOMER, container, "p")}))
    location = catalog.resolve("fresh")
    lancedb.connect(location.uri, storage_options=location.storage_options).create_table("t", _rows(5))
    assert _service(azurite, CUSTOMER).get_container_client(container).exists()


def test_missing_container_without_the_right_to_create_it(azurite: Azurite) -> None:
    container = _name("absent")
    sas = _container_sas(azurite, CUSTOMER, container)
    location = azurite.location(CUSTOMER, container, credential=CredentialMode.SAS_TOKEN, sas_token=sas)
    catalog = StorageCatalog(StorageSettings(databases={"absent": location}))
    with pytest.raises(NotFound) as info:
        catalog.resolve("absent")
    assert "'absent'" in info.value.message and "container" in info.value.message
    assert sas not in str(info.value)


def test_customer_database_is_unreachable_with_the_provider_credential(
    azurite: Azurite, catalog: StorageCatalog, places: dict[str, str]
) -> None:
    crm = catalog.resolve("crm")
    assert lancedb.connect(crm.uri, storage_options=crm.storage_options).list_tables().tables
    # The same place, but signed with the provider's key.
    intruder = azurite.location(CUSTOMER, places["crm"], account_key=azurite.provider.key)
    spoofed = StorageCatalog(StorageSettings(databases={"crm": intruder}))
    with pytest.raises(Forbidden) as info:
        spoofed.resolve("crm")
    assert "'crm'" in info.value.message

    location = spoofed.locate("crm")
    for attempt in (
        lambda: lance.dataset(location.table_uri("notes"), storage_options=location.storage_options),
        lambda: (
            lancedb.connect(location.uri, storage_options=location.storage_options)
            .open_table("notes")
            .count_rows()
        ),
    ):
        with pytest.raises(Exception) as raised:
            attempt()
        mapped = _classified(raised.value, "crm")
        assert isinstance(mapped, Forbidden) and mapped.status_code == 403
        assert "'crm'" in mapped.message
        assert not any(secret in str(mapped) for secret in _secrets(azurite))


def test_outage_is_unavailable_and_recovery_needs_no_new_catalog(
    restartable_azurite: Azurite,
) -> None:
    az = restartable_azurite
    settings = StorageSettings(
        databases={
            "orders": az.location(PROVIDER, "orders", "db", options=FAST_FAIL),
            "later": az.location(CUSTOMER, "later", options=FAST_FAIL),
        }
    )
    catalog = StorageCatalog(settings)
    orders = catalog.resolve("orders")
    conn = lancedb.connect(orders.uri, storage_options=orders.storage_options)
    table = conn.create_table("t", _rows(20))
    dataset = lance.dataset(orders.table_uri("t"), storage_options=orders.storage_options)

    az.stop()
    attempts = {
        "lance open": (
            "orders",
            lambda: lance.dataset(orders.table_uri("t"), storage_options=orders.storage_options),
        ),
        "lance append": (
            "orders",
            lambda: lance.write_dataset(
                _rows(1), orders.table_uri("t"), mode="append", storage_options=orders.storage_options
            ),
        ),
        "lance scan": ("orders", lambda: dataset.checkout_version(dataset.version).to_table()),
        "lancedb list": ("orders", lambda: conn.list_tables()),
        "lancedb add": ("orders", lambda: table.add(_rows(1, start=100))),
        "catalog first use": ("later", lambda: catalog.resolve("later")),
    }
    for what, (database, attempt) in attempts.items():
        with pytest.raises(Exception) as raised:
            attempt()
        error = raised.value
        mapped = error if isinstance(error, Unavailable) else _classified(error, database)
        assert isinstance(mapped, Unavailable), what
        assert mapped.status_code == 503
        assert f"'{database}'" in mapped.message
        assert not any(secret in str(mapped) for secret in _secrets(az))

    az.start()
    table.add(_rows(5, start=200))
    assert table.count_rows() == 25
    assert conn.list_tables().tables == ["t"]
    assert lance.dataset(orders.table_uri("t"), storage_options=orders.storage_options).count_rows() == 25
    later = catalog.resolve("later")
    lancedb.connect(later.uri, storage_options=later.storage_options).create_table("t", _rows(1))


def test_locations_never_show_credentials(catalog: StorageCatalog) -> None:
    for db in ["ledger", "media", "reports", "crm", "twin", "dev"]:
        location: DatabaseLocation = catalog.locate(db)
        options = location.storage_options
        secrets = [
            options[k] for k in ("azure_storage_account_key", "azure_storage_sas_token") if k in options
        ]
        assert secrets
        shown = repr(location) + str(location) + repr([location]) + f"{location}"
        assert not any(secret in shown for secret in secrets)
