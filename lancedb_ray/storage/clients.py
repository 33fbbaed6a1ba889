"""Azure clients (adlfs filesystem, blob service client) built from storage options.

Lance is configured by storage options alone, so the other clients are derived
from those same options rather than from the settings: a DatabaseLocation is
then self-sufficient, and picklable to Ray actors.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from lancedb_ray.storage import credentials as opt


def blob_endpoint(options: Mapping[str, str]) -> str:
    """The account's blob endpoint URL, without a trailing '/'."""
    return options.get(opt.ENDPOINT) or f"https://{options[opt.ACCOUNT_NAME]}.blob.core.windows.net"


def connection_string(options: Mapping[str, str]) -> str | None:
    """A connection string for key or SAS credentials; None for token credentials."""
    fields = f"BlobEndpoint={blob_endpoint(options)};AccountName={options[opt.ACCOUNT_NAME]}"
    if opt.ACCOUNT_KEY in options:
        return f"{fields};AccountKey={options[opt.ACCOUNT_KEY]}"
    if opt.SAS_TOKEN in options:
        return f"{fields};SharedAccessSignature={options[opt.SAS_TOKEN]}"
    return None


def token_credential(options: Mapping[str, str], *, aio: bool) -> Any:
    """DefaultAzureCredential (workload identity first on AKS) for the configured client.

    Tenant, token file and authority come from the pod's environment, as the
    credential reads them itself; only a location's own client id is passed on.
    """
    if aio:
        from azure.identity.aio import DefaultAzureCredential
    else:
        from azure.identity import DefaultAzureCredential
    kwargs: dict[str, str] = {}
    if opt.CLIENT_ID in options:
        kwargs["managed_identity_client_id"] = options[opt.CLIENT_ID]
        kwargs["workload_identity_client_id"] = options[opt.CLIENT_ID]
    return DefaultAzureCredential(**kwargs)


def blob_service_client(options: Mapping[str, str]) -> Any:
    """A synchronous azure-storage-blob client with short retries (used off the hot path)."""
    from azure.storage.blob import BlobServiceClient

    # The storage SDK's default backoff starts at 15 s; an outage must surface faster.
    retry = {"retry_total": 1, "initial_backoff": 0.5, "increment_base": 2, "connection_timeout": 5}
    conn = connection_string(options)
    if conn is not None:
        return BlobServiceClient.from_connection_string(conn, **retry)
    credential = None if options.get(opt.SKIP_SIGNATURE) == "true" else token_credential(options, aio=False)
    return BlobServiceClient(blob_endpoint(options), credential=credential, **retry)


def azure_filesystem(options: Mapping[str, str]) -> Any:
    """An adlfs AzureBlobFileSystem for these options; one per distinct options."""
    return _azure_filesystem(tuple(sorted(options.items())))


@functools.lru_cache(maxsize=64)
def _azure_filesystem(items: tuple[tuple[str, str], ...]) -> Any:
    from adlfs import AzureBlobFileSystem

    options = dict(items)
    conn = connection_string(options)
    if conn is not None:
        return AzureBlobFileSystem(connection_string=conn)
    if options.get(opt.SKIP_SIGNATURE) == "true":
        return AzureBlobFileSystem(account_name=options[opt.ACCOUNT_NAME], anon=True)
    host = blob_endpoint(options).split("://", 1)[1]
    return AzureBlobFileSystem(
        account_name=options[opt.ACCOUNT_NAME],
        account_host=host,
        credential=token_credential(options, aio=True),
    )
