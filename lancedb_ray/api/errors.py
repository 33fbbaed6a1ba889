"""The one place errors become HTTP responses.

Order matters: our own errors carry their status; malformed JSON and
schema-invalid bodies are the client's fault (400, naming the field); anything
else is a 500 that says nothing internal, logged with its request id.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from lancedb_ray.errors import LanceDBRayError

logger = logging.getLogger(__name__)


def error_response(status: int, name: str, message: str) -> JSONResponse:
    return JSONResponse({"error": name, "message": message}, status_code=status)


def _validation_message(exc: ValidationError | RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {error.get('msg')}")
    return "invalid request: " + "; ".join(problems)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LanceDBRayError)
    async def _ours(request: Request, exc: LanceDBRayError) -> JSONResponse:
        if exc.status_code >= 500:
            logger.warning("%s %s -> %s: %s", request.method, request.url.path, exc.name, exc)
        return error_response(exc.status_code, exc.name, exc.message)

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
        request_id = request.headers.get("x-request-id", "-")
        logger.exception("unhandled error in %s (request %s)", request.url.path, request_id)
        return error_response(500, "InternalError", f"internal error (request id {request_id})")
