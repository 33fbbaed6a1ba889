"""Errors that carry their HTTP status and a stable name.

One middleware (``api.errors``) maps them to responses. The official client
shows ``"{status}: {body}"`` and retries 429/5xx, so the status decides whether
a client retries and the message must say what was wrong. They survive
pickling, so they cross Ray actor boundaries intact.
"""

from __future__ import annotations


class LanceDBRayError(Exception):
    status_code: int = 500
    name: str = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.message,))


class InvalidInput(LanceDBRayError):
    status_code = 400
    name = "InvalidInput"


class AlreadyExists(LanceDBRayError):
    """400 with "already exists" in the text: the client raises TableAlreadyExists."""

    status_code = 400
    name = "AlreadyExists"


class Unauthorized(LanceDBRayError):
    status_code = 401
    name = "Unauthorized"


class Forbidden(LanceDBRayError):
    status_code = 403
    name = "Forbidden"


class NotFound(LanceDBRayError):
    status_code = 404
    name = "NotFound"


class PayloadTooLarge(LanceDBRayError):
    status_code = 413
    name = "PayloadTooLarge"


class Overloaded(LanceDBRayError):
    status_code = 429
    name = "Overloaded"


class RateLimited(Overloaded):
    """A key over its quota: 429 with ``Retry-After`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type, tuple[str, int]]:  # type: ignore[override]
        return (type(self), (self.message, self.retry_after))


class Unavailable(LanceDBRayError):
    """A transient fault (storage outage, executor restart): the client retries."""

    status_code = 503
    name = "Unavailable"


class JobStalled(Unavailable):
    """Work whose Ray tasks could not start within the allowed time; the message says why."""

    name = "JobStalled"


class Unsupported(LanceDBRayError):
    """An operation the protocol has and this server does not: 501, which the client neither
    retries nor reports as "table not found" (as it would a 404)."""

    status_code = 501
    name = "Unsupported"


class Gone(LanceDBRayError):
    """Something the request names existed and is no more (an aborted or expired upload): 410,
    which the client neither retries nor reports as "table not found"."""

    status_code = 410
    name = "Gone"
