"""The one place errors become HTTP responses.

Order matters: our own errors carry their status; malformed JSON and
schema-invalid bodies are the client's fault (400, naming the field); anything
else is a 500 that says nothing internal, logged with its request id.
"""

from __future__ import annotations

import json
import logging
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from lancedb_ray.errors import LanceDBRayError, RateLimited

logger = logging.getLogger(__name__)


# Where data lives is the operator's business: URIs (az://container/..., https://account...),
# absolute local paths and Azure account hosts never reach a client.
_URI = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"`,;)]*")
_PATH = re.compile(r"(?<![\w.\-/])/(?:[^\s'\"`,;:)/]+/)+[^\s'\"`,;:)]*")
_ACCOUNT = re.compile(r"\b[a-z0-9]{3,24}\.(blob|dfs)\.core\.windows\.net\b|\bdevstoreaccount1\b")


def scrub(message: str) -> str:
    """``message`` with storage locations replaced by a placeholder."""
    message = _URI.sub("<storage>", message)
    message = _ACCOUNT.sub("<storage>", message)
    return _PATH.sub("<path>", message)


def error_response(status: int, name: str, message: str) -> JSONResponse:
    return JSONResponse({"error": name, "message": scrub(message)}, status_code=status)


def _validation_message(exc: ValidationError | RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {error.get('msg')}")
    return "invalid request: " + "; ".join(problems)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LanceDBRayError)
    async def _ours(request: Request, exc: LanceDBRayError) -> JSONResponse:
        if exc.status_code == 500:  # translated from something unexpected: keep its traceback
            return _internal(request, exc, exc.message)
        response = error_response(exc.status_code, exc.name, exc.message)
        if isinstance(exc, RateLimited):
            response.headers["retry-after"] = str(exc.retry_after)
        return response

    @app.exception_handler(json.JSONDecodeError)
    async def _bad_json(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return error_response(400, "InvalidInput", f"request body is not valid JSON: {exc}")

    @app.exception_handler(ValidationError)
    async def _invalid(request: Request, exc: ValidationError) -> JSONResponse:
        return error_response(400, "InvalidInput", _validation_message(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "InvalidInput", _validation_message(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal(request, exc, "internal error")


def _internal(request: Request, exc: BaseException, message: str) -> JSONResponse:
    """A 500 that names only the request id; the traceback goes to the log under that id."""
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    logger.error("unhandled error in %s %s (request %s)", request.method, request.url.path,
                 request_id, exc_info=(type(exc), exc, exc.__traceback__))
    return error_response(500, "InternalError", f"{message} (request id {request_id})")
