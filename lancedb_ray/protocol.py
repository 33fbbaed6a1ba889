"""Request bodies of the LanceDB remote protocol, as plain typed data.

These are what cross from the HTTP layer to the service layer and, for
queries, on to the plan executors (they pickle). Unknown fields are ignored:
newer clients add fields, and refusing them would break compatibility.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

UNLIMITED = 9223372036854775807
# Counts, sizes and versions: lance takes them as unsigned 64-bit (or smaller) numbers.
Count = Annotated[int, Field(ge=0, le=UNLIMITED)]


class _Body(BaseModel):
    # NaN and infinities are not JSON and mean nothing as vectors or bounds.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class FullTextRequest(_Body):
    """``full_text_query``: the simple form (``query`` a string) or the structured one."""

    columns: list[str] | None = None
    query: str | dict[str, Any]


class ColumnOrdering(_Body):
    """One ``order_by`` key, as lance's ``ColumnOrdering`` has it."""

    column_name: str
    ascending: bool = True
    nulls_first: bool = False


class QueryRequest(_Body):
    k: Count = 10
    vector: list[float] | list[list[float]] = Field(default_factory=list)
    vector_column: str | None = None
    filter: str | None = None
    prefilter: bool = True
    columns: list[str] | dict[str, str] | None = None
    offset: Count | None = None
    with_row_id: bool = False
    fast_search: bool = False
    version: Count | None = None
    distance_type: Literal["l2", "cosine", "dot", "hamming"] | None = None
    nprobes: Count | None = None
    minimum_nprobes: Count | None = None
    maximum_nprobes: Count | None = None
    refine_factor: Count | None = None
    ef: Count | None = None
    lower_bound: float | None = None
    upper_bound: float | None = None
    bypass_vector_index: bool = False
    full_text_query: FullTextRequest | None = None
    order_by: list[ColumnOrdering] | None = None

    @property
    def limit(self) -> int | None:
        return None if self.k >= UNLIMITED else self.k

    @property
    def query_vectors(self) -> list[list[float]]:
        """Always a list of vectors: one per query (phalanx >= 0.2 sends several)."""
        if not self.vector:
            return []
        if isinstance(self.vector[0], list):
            return self.vector  # type: ignore[return-value]
        return [self.vector]  # type: ignore[list-item]

    @property
    def is_multi_vector(self) -> bool:
        return bool(self.vector) and isinstance(self.vector[0], list)


class ExplainRequest(_Body):
    verbose: bool = False
    query: QueryRequest


class VersionedRequest(_Body):
    version: Count | None = None


class CountRowsRequest(VersionedRequest):
    predicate: str | None = None


class DeleteRequest(_Body):
    predicate: str


class UpdateRequest(_Body):
    predicate: str | None = None
    updates: list[tuple[str, str]]


class RenameRequest(_Body):
    new_table_name: str
    new_namespace: list[str] | None = None


class NewColumn(_Body):
    name: str
    expression: str


class AddColumnsRequest(_Body):
    new_columns: list[NewColumn]


class ColumnAlteration(_Body):
    path: str
    rename: str | None = None
    nullable: bool | None = None
    data_type: dict[str, Any] | None = None


class AlterColumnsRequest(_Body):
    alterations: list[ColumnAlteration]


class FieldMetadataUpdate(_Body):
    path: str
    metadata: dict[str, str | None]
    replace: bool = False


class UpdateFieldMetadataRequest(_Body):
    updates: list[FieldMetadataUpdate]


class PrewarmDataRequest(_Body):
    columns: list[str] = Field(default_factory=list)  # empty: every column


class CloneRequest(_Body):
    source_location: str
    source_version: int | None = None
    source_tag: str | None = None
    is_shallow: bool = True


class DropColumnsRequest(_Body):
    columns: list[str]


class RestoreRequest(_Body):
    version: Count | str  # a version number or a tag


class TagRequest(_Body):
    tag: str
    version: Count | None = None


class CreateIndexRequest(_Body):
    """Every field any index kind takes; the service picks what its kind needs."""

    column: str
    index_type: str | None = None
    metric_type: Literal["l2", "cosine", "dot", "hamming"] | None = None
    name: str | None = None
    replace: bool = True
    # vector
    num_partitions: Count | None = None
    num_sub_vectors: Count | None = None
    num_bits: Count | None = None
    sample_rate: Count | None = None
    max_iterations: Count | None = None
    m: Count | None = None
    ef_construction: Count | None = None
    target_partition_size: Count | None = None
    # full text
    with_position: bool = False
    base_tokenizer: str = "simple"
    language: str = "English"
    max_token_length: Count | None = 40
    lower_case: bool = True
    stem: bool = True
    remove_stop_words: bool = True
    custom_stop_words: list[str] | None = None
    ascii_folding: bool = True
    min_ngram_length: Count = 3
    max_ngram_length: Count = 3
    prefix_only: bool = False
    block_size: Count = 128


class MergeInsertParams(_Body):
    """``merge_insert`` options, which arrive as query parameters."""

    on: list[str]
    when_matched_update_all: bool = False
    when_matched_update_all_filt: str | None = None
    when_not_matched_insert_all: bool = False
    when_not_matched_by_source_delete: bool = False
    when_not_matched_by_source_delete_filt: str | None = None
