"""Which column a vector query searches, and whether its vectors fit it."""

from __future__ import annotations

import pyarrow as pa

from lancedb_ray.errors import InvalidInput


def vector_columns(schema: pa.Schema) -> dict[str, int]:
    """Vector columns and their dimension: fixed-size lists of numbers."""
    found = {}
    for field in schema:
        if pa.types.is_fixed_size_list(field.type):
            value = field.type.value_type
            if pa.types.is_floating(value) or pa.types.is_integer(value):
                found[field.name] = field.type.list_size
    return found


def resolve_vector_column(
    schema: pa.Schema, column: str | None, vectors: list[list[float]]
) -> str:
    """The column to search (named, or the one matching the vectors' dimension), checked."""
    column = column or _infer(schema, len(vectors[0]))
    columns = vector_columns(schema)
    if column not in schema.names:
        raise InvalidInput(f"vector column '{column}' not found; the columns are {schema.names}")
    expected = columns.get(column)
    if expected is None:
        if _is_multivector(schema.field(column).type):
            return column
        raise InvalidInput(f"column '{column}' is not a vector column")
    for vector in vectors:
        if len(vector) != expected:
            raise InvalidInput(
                f"query vector has dimension {len(vector)}, "
                f"but column '{column}' has dimension {expected}"
            )
    return column


def _infer(schema: pa.Schema, dimension: int) -> str:
    columns = vector_columns(schema)
    matching = [name for name, dim in columns.items() if dim == dimension]
    if len(matching) == 1:
        return matching[0]
    if not columns:
        raise InvalidInput("the table has no vector column to search")
    if not matching:
        raise InvalidInput(
            f"query vector has dimension {dimension}, but the table's vector columns are "
            + ", ".join(f"'{n}' (dimension {d})" for n, d in columns.items())
        )
    raise InvalidInput(f"several vector columns {matching} match: name one in 'vector_column'")


def _is_multivector(data_type: pa.DataType) -> bool:
    return pa.types.is_list(data_type) and pa.types.is_fixed_size_list(data_type.value_type)
