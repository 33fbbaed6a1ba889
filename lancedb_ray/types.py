"""Small shared value types at the bottom of the import graph."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lancedb_ray.storage.names import validate_name

NAMESPACE_SEPARATOR = "$"
# How long work tells how it goes: (step, fraction of the step done, why its tasks wait or None).
ProgressReport = Callable[[str, "float | None", "str | None"], None]


def is_vector_index(index_type: str) -> bool:
    """Whether lance's name for an index type (``IVF_PQ``, ``IvfHnswSq``, ...) is a vector index.

    Index statistics of some lance versions call every vector index just ``Vector``.
    """
    kind = index_type.upper()
    return "IVF" in kind or "HNSW" in kind or "VECTOR" in kind


@dataclass(frozen=True)
class TableRef:
    """A table as the protocol names it: database, namespace path and table name."""

    database: str
    namespace: tuple[str, ...]
    name: str

    @classmethod
    def parse(cls, database: str, table_id: str) -> TableRef:
        """Parse ``ns1$ns2$table`` (the client's id for a namespaced table)."""
        *namespace, name = table_id.split(NAMESPACE_SEPARATOR)
        for part in namespace:
            validate_name("namespace", part)
        return cls(validate_name("database", database), tuple(namespace), validate_name("table", name))

    @property
    def qualified_name(self) -> str:
        return NAMESPACE_SEPARATOR.join((*self.namespace, self.name))

    @property
    def namespace_path(self) -> list[str] | None:
        return list(self.namespace) or None

    def __str__(self) -> str:
        return f"{self.database}/{self.qualified_name}"


def parse_namespace(namespace_id: str) -> list[str]:
    """Parse a namespace id: ``$`` is the root, ``a$b`` is a nested namespace."""
    if namespace_id in ("", NAMESPACE_SEPARATOR):
        return []
    return [validate_name("namespace", part) for part in namespace_id.split(NAMESPACE_SEPARATOR)]
