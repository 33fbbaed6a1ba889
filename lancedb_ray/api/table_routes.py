"""Routes under ``/v1/table/``: decode the protocol, call the service, encode the answer.

Every path is registered exactly as the client spells it (with its trailing
slash): a redirect between slash forms would break chunked Arrow uploads.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from lancedb_ray.api.arrow_io import ARROW_FILE, arrow_file_bytes
from lancedb_ray.api.context import (
    Body,
    arrow_body,
    authenticate,
    database,
    freshness,
    is_arrow,
    json_body,
    key_quotas,
    request_id,
    services,
)
from lancedb_ray.api.limits import check_query
from lancedb_ray.errors import InvalidInput
from lancedb_ray.execution.base import QueryTarget
from lancedb_ray.protocol import (
    AddColumnsRequest,
    AlterColumnsRequest,
    CloneRequest,
    CountRowsRequest,
    CreateIndexRequest,
    DeleteRequest,
    DropColumnsRequest,
    ExplainRequest,
    MergeInsertParams,
    PrewarmDataRequest,
    QueryRequest,
    RenameRequest,
    RestoreRequest,
    TagRequest,
    UpdateFieldMetadataRequest,
    UpdateRequest,
    VersionedRequest,
)
from lancedb_ray.types import TableRef


def _fresh_enough(request: Request) -> None:
    """Honour the client's read-freshness headers before any table route reads."""
    table_id = request.path_params.get("table_id")
    min_version, min_time = freshness(request)
    if table_id and (min_version is not None or min_time is not None):
        services(request).connections.require_fresh(_ref(request, table_id), min_version, min_time)


router = APIRouter(prefix="/v1/table", dependencies=[Depends(authenticate), Depends(_fresh_enough)])


def _ref(request: Request, table_id: str) -> TableRef:
    return TableRef.parse(database(request), table_id)


def _int_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise InvalidInput(f"query parameter '{name}' must be an integer, got '{value}'") from exc


async def _query_body(request: Request, model: type[Body]) -> Body:
    """A query-carrying body, checked against the per-request query limits."""
    body = await json_body(request, model)
    query = body.query if isinstance(body, ExplainRequest) else body
    quotas = key_quotas(request)
    check_query(query, quotas.max_k, quotas.max_query_vectors)
    return body


def _required_param(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise InvalidInput(f"missing query parameter '{name}'")
    return value


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() in ("true", "1")


@router.get("/")
async def list_tables(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(
        services(request).tables.list_tables,
        database(request),
        [],
        request.query_params.get("page_token"),
        _int_param(request, "limit"),
    )


@router.post("/{table_id}/create/")
async def create_table(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    data = await arrow_body(request)
    mode = request.query_params.get("mode", "create")
    await run_in_threadpool(services(request).tables.create, ref, data, mode, request_id(request))
    return {}


@router.post("/{table_id}/describe/")
async def describe_table(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, VersionedRequest)
    return await run_in_threadpool(services(request).tables.describe, ref, body.version)


@router.post("/{table_id}/drop/")
async def drop_table(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    await run_in_threadpool(services(request).tables.drop, ref, request_id(request))
    return {}


@router.post("/{table_id}/rename/")
async def rename_table(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, RenameRequest)
    new_name = "$".join([*(body.new_namespace or []), body.new_table_name])
    await run_in_threadpool(services(request).tables.rename, ref, new_name, request_id(request))
    return {}


@router.post("/{table_id}/clone")
async def clone_table(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, CloneRequest)
    await run_in_threadpool(services(request).tables.clone, ref, body, request_id(request))
    return {}


@router.post("/{table_id}/page_cache/prewarm/")
async def prewarm_data(request: Request, table_id: str) -> dict[str, Any]:
    """Load the table where queries read it (the plan executors' caches when they run)."""
    ref = _ref(request, table_id)
    body = await json_body(request, PrewarmDataRequest)
    await run_in_threadpool(services(request).tables.require_columns, ref, body.columns)
    await run_in_threadpool(services(request).executor.prewarm, [f"{ref.database}/{table_id}"])
    return {}


@router.post("/{table_id}/count_rows/")
async def count_rows(request: Request, table_id: str) -> Response:
    ref = _ref(request, table_id)
    body = await json_body(request, CountRowsRequest)
    count = await run_in_threadpool(
        services(request).executor.count, QueryTarget(ref, body.version), body.predicate
    )
    return Response(json.dumps(count), media_type="application/json")


@router.post("/{table_id}/stats/")
async def table_stats(request: Request, table_id: str) -> dict[str, Any]:
    return await run_in_threadpool(services(request).tables.stats, _ref(request, table_id))


@router.post("/{table_id}/insert/")
async def insert(request: Request, table_id: str) -> dict[str, Any]:
    """One write, or with ``upload_id`` one part of a multipart upload (staged, not committed)."""
    ref = _ref(request, table_id)
    mode = request.query_params.get("mode", "append")
    if mode not in ("append", "overwrite"):
        raise InvalidInput(f"unknown insert mode '{mode}': use append or overwrite")
    data = await arrow_body(request)
    upload_id = request.query_params.get("upload_id")
    if upload_id is not None:
        return await run_in_threadpool(
            services(request).uploads.put_part, ref, upload_id,
            request.query_params.get("upload_part_id"), data, mode == "overwrite",
        )
    return await run_in_threadpool(
        services(request).tables.insert, ref, data, mode == "overwrite", request_id(request)
    )


# The client spells the multipart routes without a trailing slash (remote/table.rs).
@router.post("/{table_id}/multipart_write/create")
async def create_upload(request: Request, table_id: str) -> dict[str, Any]:
    return await run_in_threadpool(services(request).uploads.create, _ref(request, table_id))


@router.post("/{table_id}/multipart_write/complete")
async def complete_upload(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    upload_id = _required_param(request, "upload_id")
    return await run_in_threadpool(services(request).uploads.complete, ref, upload_id)


@router.post("/{table_id}/multipart_write/abort")
async def abort_upload(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    upload_id = _required_param(request, "upload_id")
    return await run_in_threadpool(services(request).uploads.abort, ref, upload_id)


@router.post("/{table_id}/merge_insert/")
async def merge_insert(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    on = request.query_params.getlist("on")
    if not on:
        raise InvalidInput("merge_insert needs the key column(s) in the 'on' query parameter")
    params = MergeInsertParams(
        on=on,
        when_matched_update_all=_flag(request, "when_matched_update_all"),
        when_matched_update_all_filt=request.query_params.get("when_matched_update_all_filt"),
        when_not_matched_insert_all=_flag(request, "when_not_matched_insert_all"),
        when_not_matched_by_source_delete=_flag(request, "when_not_matched_by_source_delete"),
        when_not_matched_by_source_delete_filt=request.query_params.get(
            "when_not_matched_by_source_delete_filt"
        ),
    )
    data = await arrow_body(request)
    return await run_in_threadpool(
        services(request).tables.merge_insert, ref, data, params, request_id(request)
    )


@router.post("/{table_id}/delete/")
async def delete(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, DeleteRequest)
    return await run_in_threadpool(
        services(request).tables.delete, ref, body.predicate, request_id(request)
    )


@router.post("/{table_id}/update/")
async def update(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, UpdateRequest)
    return await run_in_threadpool(services(request).tables.update, ref, body, request_id(request))


@router.post("/{table_id}/query/")
async def query(request: Request, table_id: str) -> Response:
    ref = _ref(request, table_id)
    body = await _query_body(request, QueryRequest)
    executor = services(request).executor

    def answer() -> bytes:  # search and encode in one hop to the thread pool
        return arrow_file_bytes(executor.search(QueryTarget(ref, body.version), body))

    return Response(await run_in_threadpool(answer), media_type=ARROW_FILE)


@router.post("/{table_id}/explain_plan/")
async def explain_plan(request: Request, table_id: str) -> Response:
    ref = _ref(request, table_id)
    body = await _query_body(request, ExplainRequest)
    plan = await run_in_threadpool(
        services(request).executor.explain,
        QueryTarget(ref, body.query.version),
        body.query,
        body.verbose,
    )
    return Response(json.dumps(plan), media_type="application/json")


@router.post("/{table_id}/analyze_plan/")
async def analyze_plan(request: Request, table_id: str) -> Response:
    ref = _ref(request, table_id)
    body = await _query_body(request, QueryRequest)
    plan = await run_in_threadpool(
        services(request).executor.analyze, QueryTarget(ref, body.version), body
    )
    return Response(json.dumps(plan), media_type="application/json")


@router.post("/{table_id}/create_index/")
async def create_index(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, CreateIndexRequest)
    await run_in_threadpool(services(request).indexes.create, ref, body, request_id(request))
    return {}


@router.post("/{table_id}/index/list/")
async def list_indices(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, VersionedRequest)
    return await run_in_threadpool(services(request).indexes.list, ref, body.version)


@router.post("/{table_id}/index/{index_name}/stats/")
async def index_stats(request: Request, table_id: str, index_name: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    return await run_in_threadpool(services(request).indexes.stats, ref, index_name)


@router.post("/{table_id}/index/{index_name}/prewarm/")
async def prewarm_index(request: Request, table_id: str, index_name: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    await run_in_threadpool(services(request).indexes.prewarm, ref, index_name,
                            services(request).executor)
    return {}


@router.post("/{table_id}/index/{index_name}/drop/")
async def drop_index(request: Request, table_id: str, index_name: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    await run_in_threadpool(services(request).indexes.drop, ref, index_name, request_id(request))
    return {}


@router.post("/{table_id}/add_columns/")
async def add_columns(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    if is_arrow(request):  # all-null columns, sent as the schema of an empty Arrow stream
        schema = (await arrow_body(request)).schema
        return await run_in_threadpool(
            services(request).tables.add_null_columns, ref, schema, request_id(request)
        )
    body = await json_body(request, AddColumnsRequest)
    return await run_in_threadpool(
        services(request).tables.add_columns, ref, body, request_id(request)
    )


@router.post("/{table_id}/alter_columns/")
async def alter_columns(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, AlterColumnsRequest)
    return await run_in_threadpool(
        services(request).tables.alter_columns, ref, body, request_id(request)
    )


@router.post("/{table_id}/update_field_metadata/")
async def update_field_metadata(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, UpdateFieldMetadataRequest)
    return await run_in_threadpool(
        services(request).tables.update_field_metadata, ref, body, request_id(request)
    )


@router.post("/{table_id}/drop_columns/")
async def drop_columns(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, DropColumnsRequest)
    return await run_in_threadpool(
        services(request).tables.drop_columns, ref, body.columns, request_id(request)
    )


@router.post("/{table_id}/version/list/")
async def list_versions(request: Request, table_id: str) -> dict[str, Any]:
    return await run_in_threadpool(services(request).versions.list, _ref(request, table_id))


@router.post("/{table_id}/restore/")
async def restore(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, RestoreRequest)
    return await run_in_threadpool(
        services(request).versions.restore, ref, body.version, request_id(request)
    )


@router.post("/{table_id}/tags/list/")
async def list_tags(request: Request, table_id: str) -> dict[str, Any]:
    return await run_in_threadpool(services(request).versions.list_tags, _ref(request, table_id))


@router.post("/{table_id}/tags/version/")
async def tag_version(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, TagRequest)
    return await run_in_threadpool(services(request).versions.tag_version, ref, body.tag)


@router.post("/{table_id}/tags/create/")
async def create_tag(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, TagRequest)
    await run_in_threadpool(services(request).versions.create_tag, ref, body.tag, body.version)
    return {}


@router.post("/{table_id}/tags/update/")
async def update_tag(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, TagRequest)
    await run_in_threadpool(services(request).versions.update_tag, ref, body.tag, body.version)
    return {}


@router.post("/{table_id}/tags/delete/")
async def delete_tag(request: Request, table_id: str) -> dict[str, Any]:
    ref = _ref(request, table_id)
    body = await json_body(request, TagRequest)
    await run_in_threadpool(services(request).versions.delete_tag, ref, body.tag)
    return {}
