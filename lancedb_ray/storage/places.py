"""Where a storage location points: a local directory or an Azure blob prefix.

Settings allow several spellings of the same place (``az://`` and ``abfss://``
URIs, or account + container + prefix fields); everything downstream works on
one normalised form, which is also what overlap detection compares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from lancedb_ray.settings import StorageLocation, on_object_store

_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_AZURE_SCHEMES = ("az", "azure", "abfs", "abfss", "wasb", "wasbs")


class StorageConfigError(ValueError):
    """The storage settings are inconsistent; the service must not start with them."""


@dataclass(frozen=True)
class LocalPlace:
    """An absolute local directory."""

    path: str

    @property
    def uri(self) -> str:
        return self.path

    def child(self, name: str) -> LocalPlace:
        return LocalPlace(f"{self.path.rstrip('/')}/{name}")

    def overlaps(self, other: Place) -> bool:
        """True when one is the other or lies inside it."""
        return isinstance(other, LocalPlace) and _nested(self._key, other._key)

    def inside(self, other: Place) -> bool:
        """True when this lies strictly inside ``other``."""
        return self.overlaps(other) and len(self._key) > len(other._key)  # type: ignore[union-attr]

    @property
    def _key(self) -> tuple[str, ...]:
        return _segments(self.path)


@dataclass(frozen=True)
class AzurePlace:
    """A prefix inside one container of one storage account."""

    account: str
    container: str
    prefix: str  # no leading or trailing '/'

    @property
    def uri(self) -> str:
        # az:// is the form both lance and lancedb.connect accept; the account travels
        # in the storage options.
        return f"az://{self.container}/{self.prefix}".rstrip("/")

    def child(self, name: str) -> AzurePlace:
        return AzurePlace(self.account, self.container, f"{self.prefix}/{name}".strip("/"))

    def overlaps(self, other: Place) -> bool:
        """True when one is the other or lies inside it."""
        return (
            isinstance(other, AzurePlace)
            and (self.account, self.container) == (other.account, other.container)
            and _nested(self._key, other._key)
        )

    def inside(self, other: Place) -> bool:
        """True when this lies strictly inside ``other``."""
        return self.overlaps(other) and len(self._key) > len(other._key)  # type: ignore[union-attr]

    @property
    def _key(self) -> tuple[str, ...]:
        return _segments(self.prefix)


Place = LocalPlace | AzurePlace


def place_of(location: StorageLocation, account_hint: str | None = None) -> Place:
    """Normalise ``location``; ``account_hint`` is the account named by a connection string."""
    uri = location.uri
    if uri and on_object_store(uri):
        return _azure_from_uri(uri, location.account or account_hint)
    if uri is None and location.container:
        return _azure_place(location.account or account_hint, location.container, location.prefix)
    if uri is None:
        raise StorageConfigError("a storage location needs either a uri or a container")
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    # Absolute now, so that a later chdir (Ray workers) cannot move the data.
    return LocalPlace(str(Path(path).expanduser().resolve()))


def _azure_from_uri(uri: str, account: str | None) -> AzurePlace:
    parts = urlsplit(uri)
    if parts.scheme not in _AZURE_SCHEMES:
        raise StorageConfigError(f"unsupported storage uri scheme '{parts.scheme}://'")
    container, _, host = parts.netloc.partition("@")
    if host:
        host_account = host.split(".", 1)[0]
        if account and account != host_account:
            raise StorageConfigError(
                f"storage uri names account '{host_account}' but the location says '{account}'"
            )
        account = host_account
    return _azure_place(account, container, parts.path)


def _azure_place(account: str | None, container: str, prefix: str) -> AzurePlace:
    if not account:
        raise StorageConfigError(
            f"container '{container}' needs a storage account (the location's, or AZURE_STORAGE_ACCOUNT_NAME)"
        )
    if not _ACCOUNT.fullmatch(account):
        raise StorageConfigError(f"invalid storage account name '{account}'")
    if not _CONTAINER.fullmatch(container):
        raise StorageConfigError(f"invalid container name '{container}'")
    segments = _segments(prefix)
    if any(seg in (".", "..") for seg in segments):
        raise StorageConfigError(f"storage prefix '{prefix}' must not contain '.' or '..'")
    return AzurePlace(account, container, "/".join(segments))


def _segments(path: str) -> tuple[str, ...]:
    return tuple(seg for seg in PurePosixPath(path).parts if seg != "/")


def _nested(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """True when one path equals the other or lies inside it."""
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]
