"""Translate what lance and lancedb raise into errors with an HTTP status.

Lance reports bad input (unknown columns, unparsable SQL, casts) as
ValueError and friends, and storage trouble as OSError; the distinction is all
a client needs to decide between fixing its request and retrying.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
from lance_namespace.errors import ErrorCode, LanceNamespaceError

from lancedb_ray.errors import (
    AlreadyExists,
    Forbidden,
    InvalidInput,
    LanceDBRayError,
    NotFound,
    Unavailable,
)
from lancedb_ray.storage.faults import storage_error

_NOT_FOUND = re.compile(
    r"(Table|Namespace) ('.*' )?(was )?not found|was not found|does not exist", re.I
)
# lancedb's own sentence for what was not found ("Table 'x' was not found"): said as embedded lancedb says it.
_STATED_NOT_FOUND = re.compile(r"(Table|Namespace) '[^']*' (was )?not found", re.I)
# A file of a committed version is missing: the version was cleaned up or the table re-created
# while it was read. Transient for the client (a retry reads the current version), and the
# path it names is internal.
_MISSING_FILE = re.compile(
    r"(not found: |Object at location )\S*(/data/|/_indices/|/_deletions/)",
    re.I,
)
_ALREADY_EXISTS = re.compile(r"already exists", re.I)
_CONFLICT = re.compile(r"commit conflict|retryable commit conflict|too many concurrent writers", re.I)
_BAD_INPUT_IN_OSERROR = re.compile(
    r"schema|field|column|cast|not found in|dimension|invalid|parse|unsupported|expected", re.I
)
# pylance raises RuntimeError for some input problems: say so by the error's own kind.
_BAD_INPUT_IN_RUNTIME = re.compile(
    r"^Invalid input|LanceError\((Schema|Index|InvalidInput|Arrow)\)|Ref is invalid|not supported", re.I
)
# Source locations and backtraces say nothing to a client and leak build paths.
_NOISE = re.compile(r",?\s*(location: )?/\S+\.rs:\d+:\d+")
# What Python code raises on a bug; raised by a frame of this package it is ours, not the input's.
# (ValueError and RuntimeError also come from native calls made straight from our frames.)
_BUG_TYPES = (KeyError, IndexError, AttributeError, NameError, AssertionError, TypeError)
_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent) + os.sep
MAX_MESSAGE = 1000  # an echoed 10,000-parenthesis filter helps nobody


def clean_message(exc: BaseException) -> str:
    message = _NOISE.sub("", str(exc)).strip()
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "..."


def translate(exc: BaseException, subject: str, database: str) -> LanceDBRayError:
    """The error to answer with for ``exc`` raised while working on ``subject``."""
    if isinstance(exc, LanceDBRayError):
        return exc
    if isinstance(exc, _BUG_TYPES) and _raised_here(exc):  # a bug of ours: never the client's fault
        return LanceDBRayError(f"{subject}: internal error")
    message = clean_message(exc)
    if isinstance(exc, LanceNamespaceError):
        return _namespace_error(exc, subject, message)
    if _MISSING_FILE.search(message):
        return Unavailable(f"{subject}: the table changed while it was read, retry")
    if _NOT_FOUND.search(message):
        if _field_problem(message):  # a column the request named: its fault, whatever the type
            return InvalidInput(f"{subject}: {message}")
        return _not_found(subject, message)
    if _ALREADY_EXISTS.search(message):
        return AlreadyExists(f"{subject} already exists")
    if _CONFLICT.search(message):
        return Unavailable(f"{subject}: concurrent writers conflicted, retry: {message}")
    bad_input = (ValueError, TypeError, KeyError, NotImplementedError, OverflowError, pa.ArrowException)
    if isinstance(exc, bad_input) and not isinstance(exc, pa.ArrowIOError):
        return InvalidInput(f"{subject}: {message}")
    if isinstance(exc, RuntimeError) and _BAD_INPUT_IN_RUNTIME.search(message):
        return InvalidInput(f"{subject}: {message}")
    transient = storage_error(exc, database)
    if transient is not None:
        return transient
    if isinstance(exc, OSError) and _BAD_INPUT_IN_OSERROR.search(message):
        # pylance raises OSError for some input problems (e.g. appending another schema).
        return InvalidInput(f"{subject}: {message}")
    if isinstance(exc, (OSError, TimeoutError)):
        return Unavailable(f"storage for database '{database}' is unavailable: {type(exc).__name__}")
    return LanceDBRayError(f"{subject}: internal error")


def _not_found(subject: str, message: str) -> NotFound:
    """What was not found, once: lancedb's sentence when it is one, else ours with lance's detail."""
    if _STATED_NOT_FOUND.fullmatch(message):
        return NotFound(message)
    return NotFound(f"{subject} was not found: {message}")


def _namespace_error(exc: LanceNamespaceError, subject: str, message: str) -> LanceDBRayError:
    """Namespace errors carry a code: use it rather than the text."""
    name = getattr(exc.code, "name", "")
    if name.endswith("_NOT_FOUND"):
        return _not_found(subject, message)
    if name.endswith("_ALREADY_EXISTS"):
        return AlreadyExists(f"{subject} already exists")
    if exc.code in (ErrorCode.CONCURRENT_MODIFICATION, ErrorCode.SERVICE_UNAVAILABLE,
                    ErrorCode.THROTTLING):
        return Unavailable(f"{subject}: {message}, retry")
    if exc.code in (ErrorCode.PERMISSION_DENIED, ErrorCode.UNAUTHENTICATED):
        return Forbidden(f"{subject}: access to storage was denied")
    if exc.code == ErrorCode.INTERNAL:
        return LanceDBRayError(f"{subject}: internal error")
    return InvalidInput(f"{subject}: {message}")


def _raised_here(exc: BaseException) -> bool:
    """Whether the innermost frame that raised ``exc`` is this package's own code."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR)


def _field_problem(message: str) -> bool:
    lowered = message.lower()
    return "field" in lowered or "column" in lowered


@contextmanager
def lance_errors(subject: str, database: str) -> Iterator[None]:
    """Re-raise anything lance throws inside the block as a status-carrying error."""
    try:
        yield
    except LanceDBRayError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated, with the original chained
        raise translate(exc, subject, database) from exc
