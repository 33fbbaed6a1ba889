"""The storage catalog without a storage service: name validation, placement,
policies, overlap detection, credential options, redaction and fault mapping."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import yaml
from azure.core.exceptions import (
    ClientAuthenticationError,
    ResourceNotFoundError,
    ServiceRequestError,
)

from lancedb_ray.errors import Forbidden, InvalidInput, NotFound, Unavailable
from lancedb_ray.settings import (
    CredentialMode,
    Settings,
    StorageLocation,
    StorageSettings,
    UnknownDatabasePolicy,
)
from lancedb_ray.storage import StorageCatalog, StorageConfigError, storage_error, validate_name
from lancedb_ray.storage.credentials import AZURITE_KEY

KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seQ=="
SAS = "sv=2024-11-04&ss=b&srt=sco&sp=rwdlac&se=2030-01-01T00%3A00%3A00Z&sig=c2lnbmF0dXJl"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "storage.md"


def az(container: str, prefix: str = "", account: str = "acct1", **fields: object):
    values: dict[str, object] = {"credential": CredentialMode.ACCOUNT_KEY, "account_key": KEY}
    values.update(fields)
    return StorageLocation(account=account, container=container, prefix=prefix, **values)


def catalog(root: StorageLocation | None = None, **databases: StorageLocation) -> StorageCatalog:
    settings = StorageSettings(databases=databases)
    if root is not None:
        settings.root = root
    return StorageCatalog(settings, env={})


# --- names --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "sales_2024", "my-db", "v1.2", "A" * 128, "_private"])
def test_valid_names_are_returned(name: str) -> None:
    for kind in ("database", "table", "namespace"):
        assert validate_name(kind, name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a/b",
        "../x",
        "a\\b",
        "a\x00b",
        "tab\tname",
        "line\n",
        ".hidden",
        "A" * 129,
        "white space",
        "naïve",
        "a:b",
        "x?y",
    ],
)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_name("table", name)
    assert info.value.message.startswith("invalid table name '")
    assert info.value.status_code == 400
    assert not re.search(r"[\x00-\x1f]", info.value.message)  # control characters escaped


def test_refusal_shows_a_long_name_cut_short() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_name("database", "x" * 10_000)
    assert len(info.value.message) < 200 and "at most 128 characters" in info.value.message


def test_refusal_names_the_kind() -> None:
    with pytest.raises(InvalidInput, match=r"^invalid database name '\.\.': "):
        validate_name("database", "..")
    with pytest.raises(InvalidInput, match=r"^invalid namespace name 'a/b': "):
        validate_name("namespace", "a/b")


# --- placement and policies ---------------------------------------------------------------


def test_default_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    location = StorageCatalog(StorageSettings(), env={}).resolve("mydb")
    assert location.uri == f"{tmp_path.resolve()}/data/mydb"
    assert location.table_uri("items") == f"{tmp_path.resolve()}/data/mydb/items.lance"
    assert location.storage_options == {}
    assert location.fs_path("_jobs", "a.json") == f"{location.uri}/_jobs/a.json"
    assert type(location.filesystem()).__name__ == "LocalFileSystem"


def test_table_uri_validates_the_table_name(tmp_path: Path) -> None:
    location = catalog(StorageLocation(uri=str(tmp_path))).resolve("db")
    with pytest.raises(InvalidInput, match="invalid table name '..'"):
        location.table_uri("..")


def test_resolve_validates_the_database_name(tmp_path: Path) -> None:
    for bad in ("..", "a/b", "", ".x"):
        with pytest.raises(InvalidInput, match="invalid database name"):
            catalog(StorageLocation(uri=str(tmp_path))).resolve(bad)


def test_configured_database_gets_its_own_location(tmp_path: Path) -> None:
    cat = catalog(
        StorageLocation(uri=str(tmp_path / "root")),
        special=StorageLocation(uri=f"file://{tmp_path}/elsewhere"),
        cloud=az("data", "tenants/cloud"),
    )
    assert cat.resolve("special").uri == f"{tmp_path}/elsewhere"
    assert cat.resolve("other").uri == f"{tmp_path}/root/other"
    cloud = cat.locate("cloud")
    assert cloud.uri == "az://data/tenants/cloud"
    assert cloud.table_uri("t") == "az://data/tenants/cloud/t.lance"
    assert cloud.fs_path("_jobs") == "data/tenants/cloud/_jobs"
    assert cloud.is_azure and not cat.resolve("other").is_azure


def test_unknown_database_under_an_azure_root() -> None:
    cat = catalog(az("data", "/tenants/"))
    assert cat.locate("acme").uri == "az://data/tenants/acme"
    assert catalog(az("data")).locate("acme").uri == "az://data/acme"


def test_refuse_policy_answers_not_found(tmp_path: Path) -> None:
    settings = StorageSettings(
        root=StorageLocation(uri=str(tmp_path)),
        databases={"known": StorageLocation(uri=str(tmp_path / "known"))},
        unknown_databases=UnknownDatabasePolicy.REFUSE,
    )
    cat = StorageCatalog(settings, env={})
    assert cat.resolve("known").uri == str(tmp_path / "known")
    with pytest.raises(NotFound, match="database 'stranger' not found"):
        cat.resolve("stranger")


def test_locations_pickle_for_ray_actors() -> None:
    location = catalog(az("data")).locate("x")
    assert pickle.loads(pickle.dumps(location)) == location
    assert {location: 1}[pickle.loads(pickle.dumps(location))] == 1


# --- isolation between databases ----------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (az("data", "a"), az("data", "a")),  # the same place
        (az("data", "a"), az("data", "a/b")),  # one inside the other
        (az("data"), az("data", "x")),  # a whole container contains any prefix
        (
            az("data", "a"),
            StorageLocation(
                uri="abfss://data@acct1.dfs.core.windows.net/a/",
                credential=CredentialMode.SAS_TOKEN,
                sas_token=SAS,
            ),
        ),  # two spellings, another credential: still the same place
        (
            StorageLocation(uri="az://data/a", account="acct1", credential="account_key", account_key=KEY),
            az("data", "a//b/"),
        ),
    ],
)
def test_overlapping_databases_are_a_settings_error(first: StorageLocation, second: StorageLocation) -> None:
    with pytest.raises(StorageConfigError, match="databases 'one' and 'two' overlap"):
        catalog(one=first, two=second)


def test_local_overlap_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(StorageConfigError, match="overlap"):
        catalog(
            one=StorageLocation(uri=str(tmp_path / "a")),
            two=StorageLocation(uri=f"{tmp_path}/a/../a/b"),
        )


def test_neighbours_do_not_overlap(tmp_path: Path) -> None:
    cat = catalog(
        az("data", "tenants"),
        one=az("data", "a"),
        two=az("data", "ab"),  # a string prefix, not a path prefix
        three=az("data", "a", account="acct2"),  # the same container name, another account
        four=az("other", "a"),
        five=StorageLocation(uri=str(tmp_path / "a")),
        six=StorageLocation(uri=str(tmp_path / "ab")),
    )
    assert cat.locate("three").storage_options["azure_storage_account_name"] == "acct2"


def test_a_database_containing_the_root_is_a_settings_error() -> None:
    with pytest.raises(StorageConfigError, match="database 'big' contains the root"):
        catalog(az("data", "tenants"), big=az("data"))
    with pytest.raises(StorageConfigError, match="contains the root"):
        catalog(az("data", "tenants"), same=az("data", "tenants"))


def test_created_database_may_not_take_a_configured_location() -> None:
    cat = catalog(az("data", "tenants"), sales=az("data", "tenants/reports"))
    with pytest.raises(Forbidden) as info:
        cat.locate("reports")
    assert "'reports'" in info.value.message and "sales" not in info.value.message
    cat = catalog(az("data", "tenants"), deep=az("data", "tenants/a/b"))
    with pytest.raises(Forbidden):
        cat.locate("a")
    assert cat.locate("ab").uri == "az://data/tenants/ab"


@pytest.mark.parametrize(
    "location",
    [
        StorageLocation(uri="az://Bad_Container/x", account="acct1"),
        StorageLocation(uri="az://data/x"),  # no account anywhere
        StorageLocation(uri="az://data/../x", account="acct1"),
        StorageLocation(uri="s3://bucket/x", account="acct1"),
        StorageLocation(uri="abfss://data@acct1.dfs.core.windows.net/x", account="acct2"),
        StorageLocation(account="acct1"),  # neither uri nor container
        StorageLocation(account="acct1", container="data", credential="account_key"),
        StorageLocation(account="acct1", container="data", credential="sas_token"),
        StorageLocation(account="other", container="data", credential="azurite"),
        StorageLocation(
            account="acct2",
            container="data",
            credential="connection_string",
            connection_string=f"AccountName=acct1;AccountKey={KEY}",
        ),
    ],
)
def test_inconsistent_locations_are_settings_errors(location: StorageLocation) -> None:
    with pytest.raises(StorageConfigError):
        catalog(db=location)


# --- credential modes ---------------------------------------------------------------------


def options_for(location: StorageLocation, env: dict[str, str] | None = None) -> dict[str, str]:
    cat = StorageCatalog(StorageSettings(databases={"db": location}), env=env or {})
    return cat.locate("db").storage_options


def test_account_key_options() -> None:
    assert options_for(az("data")) == {
        "azure_storage_account_name": "acct1",
        "azure_storage_account_key": KEY,
    }


def test_sas_token_options_drop_the_question_mark() -> None:
    location = StorageLocation(uri="az://data", account="acct1", credential="sas_token", sas_token="?" + SAS)
    assert options_for(location) == {
        "azure_storage_account_name": "acct1",
        "azure_storage_sas_token": SAS,
    }


def test_connection_string_with_key_and_endpoint() -> None:
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName=acct9;AccountKey={KEY};"
        "BlobEndpoint=http://127.0.0.1:10000/acct9/;"
    )
    location = StorageLocation(uri="az://data/p", credential="connection_string", connection_string=conn)
    assert options_for(location) == {
        "azure_storage_account_name": "acct9",
        "azure_storage_account_key": KEY,
        "azure_storage_endpoint": "http://127.0.0.1:10000/acct9",
        "allow_http": "true",
    }


def test_connection_string_with_sas_and_sovereign_suffix() -> None:
    conn = f"AccountName=acct9;SharedAccessSignature={SAS};EndpointSuffix=core.chinacloudapi.cn"
    location = StorageLocation(container="data", credential="connection_string", connection_string=conn)
    assert options_for(location) == {
        "azure_storage_account_name": "acct9",
        "azure_storage_sas_token": SAS,
        "azure_storage_endpoint": "https://acct9.blob.core.chinacloudapi.cn",
    }


def test_development_storage_connection_string() -> None:
    location = StorageLocation(
        container="data",
        credential="connection_string",
        connection_string="UseDevelopmentStorage=true",
    )
    options = options_for(location)
    assert options["azure_storage_account_name"] == "devstoreaccount1"
    assert options["azure_storage_account_key"] == AZURITE_KEY


def test_azurite_mode_defaults_to_the_development_account() -> None:
    assert options_for(StorageLocation(uri="az://data/x", credential="azurite")) == {
        "azure_storage_account_name": "devstoreaccount1",
        "azure_storage_account_key": AZURITE_KEY,
        "azure_storage_endpoint": "http://127.0.0.1:10000/devstoreaccount1",
        "allow_http": "true",
    }


def test_workload_identity_takes_the_aks_environment() -> None:
    env = {
        "AZURE_CLIENT_ID": "11111111-0000-0000-0000-000000000000",
        "AZURE_TENANT_ID": "22222222-0000-0000-0000-000000000000",
        "AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token",
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
        "AZURE_STORAGE_ACCOUNT_KEY": "never-copied",
    }
    location = StorageLocation(uri="az://data/x", account="acct1", credential="workload_identity")
    assert options_for(location, env) == {
        "azure_storage_account_name": "acct1",
        "azure_client_id": env["AZURE_CLIENT_ID"],
        "azure_tenant_id": env["AZURE_TENANT_ID"],
        "azure_federated_token_file": env["AZURE_FEDERATED_TOKEN_FILE"],
        "azure_authority_host": env["AZURE_AUTHORITY_HOST"],
    }
    pinned = location.model_copy(update={"client_id": "33333333-0000-0000-0000-000000000000"})
    assert options_for(pinned, env)["azure_client_id"] == pinned.client_id


def test_workload_identity_filesystem_is_built_without_a_secret() -> None:
    location = StorageLocation(uri="az://data/x", account="acct1", credential="workload_identity")
    cat = StorageCatalog(StorageSettings(databases={"db": location}), env={})
    fs = cat.locate("db").filesystem()
    assert type(fs).__name__ == "AzureBlobFileSystem"
    assert fs.account_name == "acct1" and fs.account_key is None and fs.credential is not None


def test_anonymous_mode_skips_signing() -> None:
    location = StorageLocation(uri="az://public/x", account="acct1")
    assert options_for(location) == {
        "azure_storage_account_name": "acct1",
        "azure_skip_signature": "true",
    }


def test_extra_options_and_endpoint_override() -> None:
    location = az(
        "data",
        endpoint="http://10.0.0.4:10000/acct1/",
        options={"client_max_retries": "1", "timeout": "30s"},
    )
    options = options_for(location)
    assert options["azure_storage_endpoint"] == "http://10.0.0.4:10000/acct1"
    assert options["allow_http"] == "true"
    assert options["client_max_retries"] == "1" and options["timeout"] == "30s"


# --- secrets never shown ------------------------------------------------------------------


def test_repr_and_str_of_locations_redact_every_secret() -> None:
    conn = f"AccountName=acct3;AccountKey={KEY}"
    cat = catalog(
        key=az("aaa"),
        sas=StorageLocation(container="bbb", account="acct1", credential="sas_token", sas_token=SAS),
        conn=StorageLocation(container="ccc", credential="connection_string", connection_string=conn),
    )
    for db in ("key", "sas", "conn"):
        location = cat.locate(db)
        shown = f"{location!r} {location} {[location]}"
        assert KEY not in shown and SAS not in shown and "sig=" not in shown
        assert "<redacted>" in shown and location.uri in shown


# --- fault classification -----------------------------------------------------------------

# Texts lance and lancedb raised against Azurite (see tests/test_storage_azurite.py).
REFUSED = (
    "LanceError(IO): Generic MicrosoftAzure error: Error performing list request: Error "
    "performing GET http://127.0.0.1:10598/devstoreaccount1/data?restype=container&comp=list"
    " in 102ms, after 1 retries, max_retries: 1, retry_timeout: 10s  - HTTP error: error "
    "sending request, /home/runner/work/lance/lance/rust/lance-io/src/object_store.rs:1576:42"
)
NAMESPACE_REFUSED = (
    'Invalid input, Failed to connect to namespace: IO { source: Generic { store: "Microsoft'
    'Azure", source: ListRequest { source: RetryError(RetryErrorImpl { method: GET, inner: '
    "Http(HttpError { kind: Connect, source: reqwest::Error { kind: Request, source: Connect"
    'Error("tcp connect error", Os { code: 111, kind: ConnectionRefused }) } }) }) } }'
)
DENIED = (
    "LanceError(IO): Generic MicrosoftAzure error: Error performing list request: "
    "Server returned non-2xx status code: 403 Forbidden: <Error><Code>AuthorizationFailure"
    f"</Code><Message>Server failed to authenticate the request. {KEY}</Message></Error>"
)
NO_CONTAINER = (
    "LanceError(IO): Generic MicrosoftAzure error: Server returned non-2xx status code: "
    "404 Not Found: <Error><Code>ContainerNotFound</Code><Message>The specified container "
    "does not exist.</Message></Error>"
)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ValueError(REFUSED), Unavailable),
        (OSError(REFUSED), Unavailable),
        (RuntimeError(f"lance error: {REFUSED}"), Unavailable),
        (ValueError(NAMESPACE_REFUSED), Unavailable),
        (OSError("LanceError(IO): dispatch failure"), Unavailable),
        (OSError("Server returned non-2xx status code: 503 Service Unavailable"), Unavailable),
        (OSError("Server returned non-2xx status code: 429 Too Many Requests"), Unavailable),
        (ConnectionResetError("connection reset by peer"), Unavailable),
        (TimeoutError(), Unavailable),
        (ServiceRequestError("Connection refused"), Unavailable),
        (OSError(DENIED), Forbidden),
        (ValueError(DENIED.replace("AuthorizationFailure", "AuthenticationFailed")), Forbidden),
        (OSError("The operation lacked the necessary privileges to complete for path x"), Forbidden),
        (ClientAuthenticationError("AuthenticationFailed"), Forbidden),
        (OSError(NO_CONTAINER), NotFound),
        (ResourceNotFoundError("ErrorCode:ContainerNotFound"), NotFound),
        (ResourceNotFoundError("ErrorCode:BlobNotFound"), None),
        (ValueError("Dataset at path x/nope.lance was not found"), None),
        (ValueError("invalid vector dimension"), None),
        (KeyError("x"), None),
        (NotFound("table 't' not found"), None),
    ],
)
def test_storage_errors_are_classified(exc: BaseException, expected: type | None) -> None:
    mapped = storage_error(exc, "sales")
    if expected is None:
        assert mapped is None
        return
    assert type(mapped) is expected
    assert "'sales'" in mapped.message
    assert KEY not in str(mapped) and "127.0.0.1" not in str(mapped)


def test_classification_follows_the_exception_chain() -> None:
    try:
        try:
            raise ConnectionRefusedError("refused")
        except ConnectionRefusedError as inner:
            raise RuntimeError("job record write failed") from inner
    except RuntimeError as outer:
        mapped = storage_error(outer, "sales")
    assert isinstance(mapped, Unavailable) and mapped.status_code == 503


# --- the documented settings --------------------------------------------------------------


def test_every_documented_example_builds_a_catalog(tmp_path: Path) -> None:
    examples = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(examples) >= 4
    env = {"AZURE_CLIENT_ID": "id", "AZURE_TENANT_ID": "t", "AZURE_FEDERATED_TOKEN_FILE": "/t"}
    for number, text in enumerate(examples):
        path = tmp_path / f"example{number}.yaml"
        path.write_text(text)
        settings = Settings.load(path)
        cat = StorageCatalog(settings.storage, env=env)
        for name in settings.storage.databases:
            assert cat.locate(name).database == name


def test_deployment_profiles_build_catalogs(monkeypatch: pytest.MonkeyPatch) -> None:
    profiles = sorted((DOCS.parents[1] / "deployments" / "profiles").glob("*.yaml"))
    assert profiles
    for profile in profiles:
        with monkeypatch.context() as env:
            for db, location in yaml.safe_load(profile.read_text())["storage"]["databases"].items():
                if location.get("credential") == "sas_token":  # its SAS comes from the environment
                    env.setenv(f"LANCEDB_RAY_STORAGE__DATABASES__{db.upper()}__SAS_TOKEN", SAS)
            settings = Settings.load(profile)
        cat = StorageCatalog(settings.storage, env={})
        for name in settings.storage.databases:
            assert cat.locate(name).is_azure
