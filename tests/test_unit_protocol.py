"""Pure functions of the protocol layer, without Ray or a server."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from lancedb.query import (
    BooleanQuery,
    FullTextOperator,
    MatchQuery,
    MultiMatchQuery,
    Occur,
    PhraseQuery,
)

from lancedb_ray.errors import AlreadyExists, InvalidInput, NotFound, Unavailable
from lancedb_ray.execution.query_builder import parse_full_text
from lancedb_ray.protocol import UNLIMITED, QueryRequest
from lancedb_ray.service import paging, writes
from lancedb_ray.storage.lance_errors import clean_message, translate
from lancedb_ray.types import TableRef, parse_namespace

# -- TableRef.parse ----------------------------------------------------------------------------


def test_table_ref_plain_name() -> None:
    ref = TableRef.parse("mydb", "items")
    assert (ref.database, ref.namespace, ref.name) == ("mydb", (), "items")
    assert ref.qualified_name == "items"
    assert ref.namespace_path is None
    assert str(ref) == "mydb/items"


def test_table_ref_namespaced_id_round_trips() -> None:
    ref = TableRef.parse("mydb", "ns1$ns2$items")
    assert ref.namespace == ("ns1", "ns2")
    assert ref.name == "items"
    assert ref.namespace_path == ["ns1", "ns2"]
    assert ref.qualified_name == "ns1$ns2$items"
    assert TableRef.parse("mydb", ref.qualified_name) == ref


@pytest.mark.parametrize(
    ("database", "table_id", "kind"),
    [
        ("..", "items", "database"),
        ("a/b", "items", "database"),
        ("", "items", "database"),
        ("mydb", "..", "table"),
        ("mydb", ".", "table"),
        ("mydb", "a/b", "table"),
        ("mydb", "a\\b", "table"),
        ("mydb", "", "table"),
        ("mydb", ".hidden", "table"),
        ("mydb", "..$items", "namespace"),
        ("mydb", "$items", "namespace"),
        ("mydb", "ns$..", "table"),
        ("mydb", "x" * 129, "table"),
        ("mydb", "tab\nle", "table"),
    ],
)
def test_table_ref_refuses_names_that_could_escape(database: str, table_id: str, kind: str) -> None:
    with pytest.raises(InvalidInput, match=f"invalid {kind} name"):
        TableRef.parse(database, table_id)


def test_parse_namespace() -> None:
    assert parse_namespace("$") == []
    assert parse_namespace("") == []
    assert parse_namespace("a") == ["a"]
    assert parse_namespace("a$b") == ["a", "b"]
    with pytest.raises(InvalidInput, match="namespace"):
        parse_namespace("a$..")


# -- paging: page_token is the last name seen --------------------------------------------------


def test_page_walks_sorted_names_after_the_token() -> None:
    names = ["a", "b", "c", "d", "e"]
    assert paging.page(names, None, 2) == (["a", "b"], "b")
    assert paging.page(names, "b", 2) == (["c", "d"], "d")
    assert paging.page(names, "d", 2) == (["e"], None)
    assert paging.page(names, "e", 2) == ([], None)
    assert paging.page(names, None, None) == (names, None)
    assert paging.page(names, "bb", 10) == (["c", "d", "e"], None)  # a name that is gone
    assert paging.page(names, None, 5) == (names, None)  # exactly one full page: no token


def test_all_names_follows_the_backends_own_tokens() -> None:
    class Page:
        def __init__(self, tables: list[str], page_token: str | None) -> None:
            self.tables, self.page_token = tables, page_token

    pages = {None: Page(["c", "a"], "x.lance/"), "x.lance/": Page(["b"], None)}
    assert paging.all_names(lambda token: pages[token], "tables") == ["a", "b", "c"]


# -- query bodies --------------------------------------------------------------------------------


def test_query_request_limit_and_vectors() -> None:
    assert QueryRequest(k=UNLIMITED).limit is None
    assert QueryRequest(k=7).limit == 7
    single = QueryRequest(vector=[1.0, 2.0])
    assert single.query_vectors == [[1.0, 2.0]] and not single.is_multi_vector
    several = QueryRequest(vector=[[1.0, 2.0], [3.0, 4.0]])
    assert several.query_vectors == [[1.0, 2.0], [3.0, 4.0]] and several.is_multi_vector
    assert QueryRequest().query_vectors == []


def test_query_request_ignores_unknown_fields() -> None:
    request = QueryRequest.model_validate({"k": 3, "vector": [], "some_future_field": 1})
    assert request.k == 3


# -- parse_full_text: the client's JSON back into lancedb's query objects ---------------------


def _round_trip(query) -> object:
    return parse_full_text(json.loads(query.to_json()))


@pytest.mark.parametrize(
    "query",
    [
        MatchQuery("apple pie", "text"),
        MatchQuery("apple", "text", boost=2.0, fuzziness=1, max_expansions=10,
                   operator=FullTextOperator.AND, prefix_length=2),
        MatchQuery("apple", "tags", document_granularity="list_element"),
        PhraseQuery("apple pie", "text"),
        PhraseQuery("apple pie", "text", slop=2),
        PhraseQuery("apple pie", "tags", document_granularity="list_element"),
        MultiMatchQuery("apple", ["text", "title"], boosts=[1.0, 3.0]),
        BooleanQuery([(Occur.MUST, MatchQuery("apple", "text")),
                      (Occur.SHOULD, PhraseQuery("cherry pie", "text", slop=1)),
                      (Occur.MUST_NOT, MatchQuery("banana", "text"))]),
        BooleanQuery([(Occur.MUST, BooleanQuery([(Occur.SHOULD, MatchQuery("a", "text"))]))]),
    ],
    ids=lambda q: type(q).__name__,
)
def test_parse_full_text_round_trips_the_clients_json(query) -> None:
    assert _round_trip(query) == query


def test_parse_full_text_multi_match_without_boosts_weighs_columns_equally() -> None:
    parsed = _round_trip(MultiMatchQuery("apple", ["text", "title"]))
    assert parsed == MultiMatchQuery("apple", ["text", "title"], boosts=[1.0, 1.0])


def test_parse_full_text_operator_is_case_insensitive() -> None:
    parsed = parse_full_text({"match": {"terms": "a", "column": "text", "operator": "and"}})
    assert parsed.operator == FullTextOperator.AND


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({}, "exactly one kind"),
        ({"match": {"terms": "a"}, "phrase": {"terms": "a"}}, "exactly one kind"),
        ({"fuzzy": {"terms": "a", "column": "text"}}, "unknown full-text query kind 'fuzzy'"),
        ({"match": "apple"}, "must be an object"),
        ({"match": {"terms": "a"}}, "lacks field 'column'"),
        ({"phrase": {"column": "text"}}, "lacks field 'terms'"),
        ({"multi_match": {"query": "a"}}, "lacks field 'columns'"),
        ({"match": {"terms": "a", "column": "text", "operator": "Xor"}}, "unknown full-text operator"),
        ({"boolean": {"must": [{"nope": {}}]}}, "unknown full-text query kind 'nope'"),
    ],
)
def test_parse_full_text_names_the_problem(body: dict, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        parse_full_text(body)


# -- writes.conform: incoming Arrow data against the table's schema ---------------------------

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), 2)),
        pa.field("note", pa.string()),
    ]
)


def test_conform_reorders_and_casts() -> None:
    data = pa.table(
        {
            "note": ["a", "b"],
            "vector": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float64(), 2)),
            "id": pa.array([1, 2], pa.int32()),
        }
    )
    out = writes.conform(data, SCHEMA)
    assert out.schema == SCHEMA
    assert out.column("id").to_pylist() == [1, 2]
    assert out.column("vector").to_pylist() == [[1.0, 2.0], [3.0, 4.0]]
    assert out.column("note").to_pylist() == ["a", "b"]


def test_conform_fills_missing_nullable_columns_with_nulls() -> None:
    out = writes.conform(pa.table({"id": pa.array([5], pa.int64())}), SCHEMA)
    assert out.schema == SCHEMA
    assert out.column("note").to_pylist() == [None]
    assert out.column("vector").to_pylist() == [None]


def test_conform_refuses_unexpected_and_missing_required_columns() -> None:
    with pytest.raises(InvalidInput, match=r"unexpected columns \['extra'\]"):
        writes.conform(pa.table({"id": [1], "extra": [1]}), SCHEMA)
    with pytest.raises(InvalidInput, match=r"lacks non-nullable columns \['id'\]"):
        writes.conform(pa.table({"note": ["a"]}), SCHEMA)


def test_conform_refuses_uncastable_values_naming_the_column() -> None:
    with pytest.raises(InvalidInput, match="column 'id' is string"):
        writes.conform(pa.table({"id": ["not a number"]}), SCHEMA)
    wrong_dimension = pa.table(
        {"id": [1], "vector": pa.array([[1.0, 2.0, 3.0]], pa.list_(pa.float32(), 3))}
    )
    with pytest.raises(InvalidInput, match="column 'vector'"):
        writes.conform(wrong_dimension, SCHEMA)


def test_conform_refuses_nulls_in_a_non_nullable_column() -> None:
    with pytest.raises(InvalidInput, match="'id' is not nullable"):
        writes.conform(pa.table({"id": pa.array([1, None], pa.int64())}), SCHEMA)


def test_conform_accepts_an_empty_batch() -> None:
    empty = pa.table({"id": pa.array([], pa.int64())})
    assert writes.conform(empty, SCHEMA).num_rows == 0


# -- lance_errors.translate: lance's exceptions to statuses ------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ValueError("Table 'x' was not found"), NotFound),
        (ValueError("Dataset at path x was not found"), NotFound),
        (ValueError("Table 'x' already exists"), AlreadyExists),
        (ValueError("Invalid user input: No field named nope"), InvalidInput),
        (ValueError("Schema error: column nope does not exist"), InvalidInput),
        (RuntimeError("LanceError(Index): FTS field path 'nope' does not exist"), InvalidInput),
        (RuntimeError("Namespace error: Namespace not found: zz"), NotFound),
        (ValueError("External error: Not found: srv/db/t.lance/data/0101.lance"), Unavailable),
        (OSError("Object at location az://c/db/t.lance/_indices/u/index.idx not found"),
         Unavailable),
        (ValueError("Dataset at path /srv/data/db/t.lance was not found"), NotFound),
        (OSError("Retryable commit conflict for version 3"), Unavailable),
        (OSError("LanceError(IO): Append with different schema"), InvalidInput),
        (TimeoutError("read timed out"), Unavailable),
        (pa.ArrowInvalid("Could not convert"), InvalidInput),
    ],
)
def test_translate_picks_the_status(exc: Exception, kind: type) -> None:
    assert type(translate(exc, "table 'x'", "db")) is kind


def test_what_was_not_found_is_said_once_as_embedded_lancedb_says_it(tmp_path) -> None:
    import lancedb

    with pytest.raises(ValueError) as embedded:
        lancedb.connect(tmp_path).open_table("x")
    # lancedb's sentence, "Table 'x' was not found", not "table 'x' was not found: Table 'x' was ..."
    assert translate(embedded.value, "table 'x'", "db").message == str(embedded.value)
    detailed = translate(RuntimeError("Namespace error: Namespace not found: zz"), "namespace 'zz'", "db")
    assert detailed.message == "namespace 'zz' was not found: Namespace error: Namespace not found: zz"


def test_translate_keeps_our_own_errors_and_hides_internal_ones() -> None:
    ours = NotFound("gone")
    assert translate(ours, "table 'x'", "db") is ours
    internal = translate(RuntimeError("segfault at /secret/path"), "table 'x'", "db")
    assert internal.status_code == 500
    assert "secret" not in internal.message


def test_a_missing_file_does_not_leak_its_path() -> None:
    error = translate(ValueError("External error: Not found: /srv/db/t.lance/data/0101.lance"),
                      "query on 't'", "db")
    assert error.status_code == 503
    assert "/srv" not in error.message


def test_clean_message_strips_source_locations() -> None:
    raw = "Invalid input, bad thing, /home/runner/.cargo/registry/src/lance-0.1/src/x.rs:12:5"
    assert clean_message(ValueError(raw)) == "Invalid input, bad thing"
