"""Data writes that a client may retry: applied once per request id.

The client re-sends an insert or merge_insert body after a timeout or a 5xx,
with the same ``x-request-id``. Each commit carries that id in its Lance
transaction properties, in the same atomic commit as the data, so a retry,
on any replica and after any crash, finds the earlier commit and answers with
its result instead of writing the rows a second time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta

import lance
import pyarrow as pa
from lance import LanceOperation
from lance.dataset import LanceDataset
from lance.fragment import FragmentMetadata

from lancedb_ray.errors import InvalidInput
from lancedb_ray.storage.uploads import transaction_properties

REQUEST_ID = "lancedb-ray.request-id"
_COUNTS = ("num_inserted_rows", "num_updated_rows", "num_deleted_rows")


@dataclass(frozen=True)
class WriteResult:
    version: int
    num_inserted_rows: int = 0
    num_updated_rows: int = 0
    num_deleted_rows: int = 0
    replayed: bool = False  # True when a retry found the earlier commit
    # The committed version in memory: a concurrent rename's check compares its state.
    committed: LanceDataset | None = dataclasses.field(default=None, compare=False, repr=False)


def find_committed(dataset: LanceDataset, request_id: str | None, window: int) -> WriteResult | None:
    """The result of an earlier commit of ``request_id`` among the last ``window`` versions."""
    if not request_id:
        return None
    latest = dataset.version
    for version in range(latest, max(0, latest - window), -1):
        props = transaction_properties(dataset, version)
        if props.get(REQUEST_ID) == request_id:
            counts = {name: int(props.get(name, 0)) for name in _COUNTS}
            return WriteResult(version=version, replayed=True, **counts)
    return None


def conform(data: pa.Table, schema: pa.Schema, partial: bool = False) -> pa.Table:
    """Reorder and cast ``data`` to the table's schema, or say exactly what differs.

    With ``partial`` (a merge_insert source) the columns ``data`` omits stay omitted:
    lance then keeps their values on updated rows and decides, as embedded lancedb
    does, whether new rows may lack them. Padding them with nulls would overwrite
    the stored values. Nulls in non-nullable columns are lance's to refuse too.
    """
    incoming = set(data.schema.names)
    expected = set(schema.names)
    missing = [] if partial else [
        n for n in schema.names if n not in incoming and not schema.field(n).nullable
    ]
    unexpected = [n for n in data.schema.names if n not in expected]
    if missing or unexpected:
        raise InvalidInput(
            f"schema mismatch: data has unexpected columns {unexpected} and lacks "
            f"non-nullable columns {missing}; the table's columns are {schema.names}"
        )
    fields, columns = [], []
    for field in schema:
        if field.name in incoming:
            column = data.column(field.name)
            if column.type != field.type:
                try:
                    column = column.cast(field.type)
                except pa.ArrowException as exc:
                    raise InvalidInput(
                        f"schema mismatch: column '{field.name}' is {column.type}, "
                        f"the table has {field.type}: {exc}"
                    ) from exc
        elif partial:
            continue
        else:
            column = pa.nulls(data.num_rows, field.type)
        if not field.nullable and column.null_count:
            if not partial:
                raise InvalidInput(f"column '{field.name}' is not nullable but has null values")
            # A merge writes only some source rows: lance refuses nulls in the rows it writes
            # (as embedded lancedb does), so a null in a row that matches nothing is fine.
            field = field.with_nullable(True)
        fields.append(field)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema.metadata))


def append(
    dataset: LanceDataset,
    data: pa.Table,
    request_id: str | None,
    storage_options: dict[str, str],
    overwrite: bool = False,
) -> WriteResult:
    mode = "overwrite" if overwrite else "append"
    if not overwrite:
        data = conform(data, dataset.schema)
    written = lance.write_dataset(
        data,
        dataset,
        mode=mode,
        storage_options=storage_options or None,
        transaction_properties=_properties(request_id, num_inserted_rows=data.num_rows),
    )
    return WriteResult(version=written.version, num_inserted_rows=data.num_rows, committed=written)


def stage(
    dataset: LanceDataset, data: pa.Table, overwrite: bool, storage_options: dict[str, str]
) -> tuple[list[FragmentMetadata], pa.Schema]:
    """Write ``data`` as fragments of ``dataset`` that no version references yet (a part of a
    multipart upload), and the schema they have: the table's unless they are to replace it."""
    if not overwrite:
        data = conform(data, dataset.schema)
    fragments = lance.fragment.write_fragments(
        data, dataset, mode="overwrite" if overwrite else "append",
        storage_options=storage_options or None,
    )
    return fragments, data.schema


def commit_staged(
    dataset: LanceDataset,
    fragments: list[FragmentMetadata],
    schema: pa.Schema | None,
    properties: dict[str, str],
    storage_options: dict[str, str],
    timeout: timedelta,
) -> LanceDataset:
    """Commit staged fragments in one version: appended, or replacing the table when ``schema``
    is given; ``properties`` travel in the same atomic commit. Gives up after ``timeout``.
    The committed dataset is returned, for a concurrent rename's check of what it holds."""
    operation = (
        LanceOperation.Append(fragments) if schema is None
        else LanceOperation.Overwrite(schema, fragments)
    )
    transaction = lance.Transaction(
        read_version=dataset.version, operation=operation, transaction_properties=properties
    )
    return LanceDataset.commit(
        dataset, transaction, storage_options=storage_options or None, commit_timeout=timeout
    )


@dataclass(frozen=True)
class MergeSpec:
    on: list[str]
    update_all: bool = False
    update_filter: str | None = None
    insert_all: bool = False
    delete_by_source: bool = False
    delete_filter: str | None = None


def merge_insert(
    dataset: LanceDataset,
    data: pa.Table,
    spec: MergeSpec,
    request_id: str | None,
    storage_options: dict[str, str],
) -> WriteResult:
    missing_keys = [key for key in spec.on if key not in data.schema.names]
    if missing_keys:
        raise InvalidInput(f"merge_insert key columns {missing_keys} are not in the data")
    data = conform(data, dataset.schema, partial=True)
    builder = dataset.merge_insert(spec.on)
    if spec.update_all:
        builder = builder.when_matched_update_all(spec.update_filter)
    if spec.insert_all:
        builder = builder.when_not_matched_insert_all()
    if spec.delete_by_source:
        builder = builder.when_not_matched_by_source_delete(spec.delete_filter)
    transaction, stats = builder.execute_uncommitted(data)
    counts = {name: int(stats.get(name, 0)) for name in _COUNTS}
    transaction.transaction_properties = {
        **(transaction.transaction_properties or {}),
        **_properties(request_id, **counts),
    }
    committed = LanceDataset.commit(
        dataset, transaction, storage_options=storage_options or None
    )
    return WriteResult(version=committed.version, committed=committed, **counts)


def _properties(request_id: str | None, **counts: int) -> dict[str, str]:
    props = {name: str(value) for name, value in counts.items()}
    if request_id:
        props[REQUEST_ID] = request_id
    return props
