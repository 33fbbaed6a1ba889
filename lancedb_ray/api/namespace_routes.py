"""Routes under ``/v1/namespace/{id}/``; ``$`` is the root namespace, ``a$b`` a nested one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from lancedb_ray.api.context import authenticate, database, json_body, services
from lancedb_ray.api.table_routes import _int_param
from lancedb_ray.types import parse_namespace

router = APIRouter(prefix="/v1/namespace", dependencies=[Depends(authenticate)])
_BOTH = ["GET", "POST"]


class CreateNamespaceRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    mode: str | None = None
    properties: dict[str, str] | None = None


class DropNamespaceRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    mode: str | None = None
    behavior: str | None = None


@router.api_route("/{namespace_id}/create", methods=["POST"])
async def create_namespace(request: Request, namespace_id: str) -> dict[str, Any]:
    body = await json_body(request, CreateNamespaceRequest)
    return await run_in_threadpool(
        services(request).namespaces.create,
        database(request),
        parse_namespace(namespace_id),
        body.mode,
        body.properties,
    )


@router.api_route("/{namespace_id}/list", methods=_BOTH)
async def list_namespaces(request: Request, namespace_id: str) -> dict[str, Any]:
    return await run_in_threadpool(
        services(request).namespaces.list,
        database(request),
        parse_namespace(namespace_id),
        request.query_params.get("page_token"),
        _int_param(request, "limit"),
    )


@router.api_route("/{namespace_id}/describe", methods=_BOTH)
async def describe_namespace(request: Request, namespace_id: str) -> dict[str, Any]:
    return await run_in_threadpool(
        services(request).namespaces.describe, database(request), parse_namespace(namespace_id)
    )


@router.api_route("/{namespace_id}/drop", methods=["POST"])
async def drop_namespace(request: Request, namespace_id: str) -> dict[str, Any]:
    body = await json_body(request, DropNamespaceRequest)
    return await run_in_threadpool(
        services(request).namespaces.drop,
        database(request),
        parse_namespace(namespace_id),
        body.mode,
        body.behavior,
    )


@router.api_route("/{namespace_id}/table/list", methods=_BOTH)
async def list_namespace_tables(request: Request, namespace_id: str) -> dict[str, Any]:
    return await run_in_threadpool(
        services(request).tables.list_tables,
        database(request),
        parse_namespace(namespace_id),
        request.query_params.get("page_token"),
        _int_param(request, "limit"),
    )
