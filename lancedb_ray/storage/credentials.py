"""Turn a location's credential mode into lance/object_store storage options.

The option names are those object_store's Azure builder accepts (verified
against Azurite with pylance and lancedb); every other client here (adlfs,
azure-storage-blob) is derived from the same options, so there is exactly one
place where a credential is interpreted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from lancedb_ray.settings import CredentialMode, StorageLocation
from lancedb_ray.storage.places import AzurePlace, Place, StorageConfigError, place_of

AZURITE_ACCOUNT = "devstoreaccount1"
# The emulator's published development key: not a secret.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_ENDPOINT = "http://127.0.0.1:10000"

# lance/object_store option names.
ACCOUNT_NAME = "azure_storage_account_name"
ACCOUNT_KEY = "azure_storage_account_key"
SAS_TOKEN = "azure_storage_sas_token"
ENDPOINT = "azure_storage_endpoint"
ALLOW_HTTP = "allow_http"
SKIP_SIGNATURE = "azure_skip_signature"
CLIENT_ID = "azure_client_id"
TENANT_ID = "azure_tenant_id"
FEDERATED_TOKEN_FILE = "azure_federated_token_file"
AUTHORITY_HOST = "azure_authority_host"
_SECRET_OPTION = re.compile(r"key|sas|token|secret|password|signature|credential|connection")

# The environment AKS workload identity injects into a pod, and the option each feeds.
_WORKLOAD_IDENTITY_ENV = {
    "AZURE_CLIENT_ID": CLIENT_ID,
    "AZURE_TENANT_ID": TENANT_ID,
    "AZURE_FEDERATED_TOKEN_FILE": FEDERATED_TOKEN_FILE,
    "AZURE_AUTHORITY_HOST": AUTHORITY_HOST,
}


def place_and_options(
    location: StorageLocation, env: Mapping[str, str] | None = None
) -> tuple[Place, dict[str, str]]:
    """Where ``location`` points and the storage options that reach it: the one place deciding it."""
    env = os.environ if env is None else env
    location = with_environment(location, env)
    place = place_of(location, implied_account(location))
    if isinstance(place, AzurePlace):
        return place, azure_storage_options(location, place.account, env)
    return place, dict(location.options)


def with_environment(location: StorageLocation, env: Mapping[str, str]) -> StorageLocation:
    """An Azure location that names no account nor credential, completed as lance would do it.

    ``lancedb.connect("az://container/prefix")`` takes the account and credential
    from the environment (object_store's ``AZURE_*`` variables); so does the
    service, for such a location, so that the same environment reaches the same
    data. ``AZURE_STORAGE_CONNECTION_STRING`` is accepted too (lance itself does
    not read it). Credential precedence: connection string, key, SAS, the
    emulator's development key, workload identity.
    """
    if not location.on_object_store or location.account or location.credential is not CredentialMode.NONE:
        return location
    fields: dict[str, object] = {}
    account = env.get("AZURE_STORAGE_ACCOUNT_NAME")
    sas = env.get("AZURE_STORAGE_SAS_TOKEN") or env.get("AZURE_STORAGE_SAS_KEY")
    endpoint = env.get("AZURE_STORAGE_ENDPOINT")
    emulator = env.get("AZURE_STORAGE_USE_EMULATOR", "").lower() in ("true", "1")
    if emulator:
        account = account or AZURITE_ACCOUNT
        endpoint = f"{env.get('AZURITE_BLOB_STORAGE_URL', AZURITE_ENDPOINT).rstrip('/')}/{account}"
    if env.get("AZURE_STORAGE_CONNECTION_STRING"):
        fields = {"credential": CredentialMode.CONNECTION_STRING,
                  "connection_string": env["AZURE_STORAGE_CONNECTION_STRING"]}
        account = endpoint = None  # the connection string names both
    elif env.get("AZURE_STORAGE_ACCOUNT_KEY"):
        fields = {"credential": CredentialMode.ACCOUNT_KEY, "account_key": env["AZURE_STORAGE_ACCOUNT_KEY"]}
    elif sas:
        fields = {"credential": CredentialMode.SAS_TOKEN, "sas_token": sas}
    elif emulator:
        fields = {"credential": CredentialMode.AZURITE}  # the emulator's published development key
    elif env.get("AZURE_FEDERATED_TOKEN_FILE") or env.get("AZURE_CLIENT_ID"):
        fields = {"credential": CredentialMode.WORKLOAD_IDENTITY}
    if not account and not fields:
        return location
    if endpoint:
        fields["endpoint"] = endpoint
    return StorageLocation.model_validate({**location.model_dump(), "account": account, **fields})


def parse_connection_string(text: str) -> dict[str, str]:
    """``Key=Value;...`` into a dict; values may themselves contain '=' (keys, SAS)."""
    fields: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.strip().partition("=")
        if key and sep:
            fields[key.strip()] = value.strip()
    if not fields:
        raise StorageConfigError("storage connection string has no Key=Value fields")
    return fields


def implied_account(location: StorageLocation) -> str | None:
    """The account a credential itself names (connection string, emulator), if any."""
    implied = None
    if location.credential is CredentialMode.AZURITE:
        implied = location.account or AZURITE_ACCOUNT
    elif location.credential is CredentialMode.CONNECTION_STRING:
        fields = _connection_fields(location)
        if fields.get("UseDevelopmentStorage", "").lower() == "true":
            implied = AZURITE_ACCOUNT
        else:
            implied = fields.get("AccountName")
    if implied and location.account and implied != location.account:
        raise StorageConfigError(
            f"the credential is for account '{implied}' but the location says '{location.account}'"
        )
    return implied


def azure_storage_options(
    location: StorageLocation, account: str, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The storage options that reach ``account`` with ``location``'s credential."""
    env = os.environ if env is None else env
    mode = location.credential
    options = {ACCOUNT_NAME: account}
    if mode is CredentialMode.NONE:
        options[SKIP_SIGNATURE] = "true"
    elif mode is CredentialMode.WORKLOAD_IDENTITY:
        options.update({o: env[var] for var, o in _WORKLOAD_IDENTITY_ENV.items() if env.get(var)})
        if location.client_id:
            options[CLIENT_ID] = location.client_id
    elif mode is CredentialMode.ACCOUNT_KEY:
        options[ACCOUNT_KEY] = _required(location.account_key, "account_key", mode)
    elif mode is CredentialMode.SAS_TOKEN:
        options[SAS_TOKEN] = _required(location.sas_token, "sas_token", mode).lstrip("?")
    elif mode is CredentialMode.CONNECTION_STRING:
        options.update(_from_connection_string(_connection_fields(location), account))
    elif mode is CredentialMode.AZURITE:
        key = location.account_key.get_secret_value() if location.account_key else None
        if key is None and account != AZURITE_ACCOUNT:
            raise StorageConfigError(f"azurite account '{account}' needs an account_key")
        options[ACCOUNT_KEY] = key or AZURITE_KEY
        options[ENDPOINT] = f"{AZURITE_ENDPOINT}/{account}"
    if location.endpoint:
        options[ENDPOINT] = location.endpoint.rstrip("/")
    if options.get(ENDPOINT, "").startswith("http://"):
        options[ALLOW_HTTP] = "true"
    options.update(location.options)
    return options


def _connection_fields(location: StorageLocation) -> dict[str, str]:
    text = _required(location.connection_string, "connection_string", location.credential)
    return parse_connection_string(text)


def _from_connection_string(fields: dict[str, str], account: str) -> dict[str, str]:
    if fields.get("UseDevelopmentStorage", "").lower() == "true":
        return {ACCOUNT_KEY: AZURITE_KEY, ENDPOINT: f"{AZURITE_ENDPOINT}/{AZURITE_ACCOUNT}"}
    options: dict[str, str] = {}
    if "AccountKey" in fields:
        options[ACCOUNT_KEY] = fields["AccountKey"]
    elif "SharedAccessSignature" in fields:
        options[SAS_TOKEN] = fields["SharedAccessSignature"].lstrip("?")
    else:
        raise StorageConfigError("connection string has neither AccountKey nor SharedAccessSignature")
    if "BlobEndpoint" in fields:
        options[ENDPOINT] = fields["BlobEndpoint"].rstrip("/")
    elif fields.get("EndpointSuffix", "core.windows.net") != "core.windows.net":
        protocol = fields.get("DefaultEndpointsProtocol", "https")
        options[ENDPOINT] = f"{protocol}://{account}.blob.{fields['EndpointSuffix']}"
    return options


def _required(secret: object, field: str, mode: CredentialMode) -> str:
    if secret is None:
        raise StorageConfigError(f"credential mode '{mode.value}' needs '{field}'")
    return secret.get_secret_value()  # type: ignore[attr-defined]


def redact(options: Mapping[str, str]) -> dict[str, str]:
    """``options`` safe to log: secret values replaced."""
    return {k: ("<redacted>" if _SECRET_OPTION.search(k) else v) for k, v in options.items()}
