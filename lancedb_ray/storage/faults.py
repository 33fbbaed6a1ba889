"""Classify storage exceptions into the HTTP errors a client can act on.

Lance surfaces object-store failures as OSError/ValueError whose text carries
the Azure status and error code (``403 Forbidden ... AuthorizationFailure``,
``ContainerNotFound``, ``HTTP error: error sending request`` when the service is
unreachable); azure-storage-blob and adlfs raise azure.core exceptions. Both
are mapped here so that an outage becomes a retryable 503 and a credential
problem a 403, each naming the database and never echoing the original text,
which may carry account or endpoint details.
"""

from __future__ import annotations

import re

from azure.core.exceptions import (
    ClientAuthenticationError,
    ServiceRequestError,
    ServiceResponseError,
)

from lancedb_ray.errors import Forbidden, LanceDBRayError, NotFound, Unavailable

_MISSING_CONTAINER = re.compile(r"ContainerNotFound|The specified container does not exist")
_DENIED = re.compile(
    r"AuthorizationFailure|AuthenticationFailed|AuthorizationPermissionMismatch"
    r"|AuthorizationResourceTypeMismatch|lacked the necessary privileges"
    r"|non-2xx status code: 40[13]|\b403 Forbidden\b|InsufficientAccountPermissions"
)
_TRANSIENT = re.compile(
    r"error sending request|connection refused|connectionrefused|connection reset"
    r"|connectionreset|connection aborted|broken pipe|timed out"
    r"|dispatch failure|kind: (?:connect|timeout)|non-2xx status code: (?:5\d\d|429)"
    r"|ServerBusy|OperationTimedOut|TooManyRequests|service unavailable",
    re.IGNORECASE,
)


def storage_error(exc: BaseException, database: str) -> LanceDBRayError | None:
    """The service error for a storage failure of ``database``, or None if it is not one."""
    if isinstance(exc, LanceDBRayError):
        return None
    status = _azure_status(exc)
    text = _chain_text(exc)
    if _MISSING_CONTAINER.search(text):
        return NotFound(f"the storage container of database '{database}' does not exist")
    if status in (401, 403) or _is_auth_error(exc) or _DENIED.search(text):
        return Forbidden(f"storage access for database '{database}' was denied")
    if (
        (status is not None and (status >= 500 or status in (408, 429)))
        or _is_transient_type(exc)
        or _TRANSIENT.search(text)
    ):
        return Unavailable(f"storage for database '{database}' is unavailable; retry later")
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _chain_text(exc: BaseException) -> str:
    return "\n".join(f"{type(e).__name__}: {e}" for e in _chain(exc))


def _azure_status(exc: BaseException) -> int | None:
    for err in _chain(exc):
        status = getattr(err, "status_code", None)
        if isinstance(status, int) and not isinstance(err, LanceDBRayError):
            return status
    return None


def _is_auth_error(exc: BaseException) -> bool:
    return any(isinstance(err, ClientAuthenticationError) for err in _chain(exc))


def _is_transient_type(exc: BaseException) -> bool:
    transient = (ConnectionError, TimeoutError, ServiceRequestError, ServiceResponseError)
    return any(isinstance(err, transient) for err in _chain(exc))
