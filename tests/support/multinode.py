"""Pieces of the multi-node scenarios (``ray.cluster_utils.Cluster`` in a process of their own)."""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

from tests.support.processes import free_port


def node_ports() -> dict[str, int]:
    """Ports of its own for one more node: Ray's defaults may be held by another cluster here."""
    return {"dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port(),
            "runtime_env_agent_port": free_port()}


def vector_table(directory: Path, rows: int, dim: int, fragment_rows: int) -> lancedb.table.Table:
    """A table ``t`` of ``rows`` random vectors, written in fragments of ``fragment_rows``."""
    rng = np.random.default_rng(0)
    table = None
    for start in range(0, rows, fragment_rows):
        vectors = rng.normal(size=(fragment_rows, dim)).astype(np.float32)
        data = pa.table({"id": np.arange(start, start + fragment_rows),
                         "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)})
        if table is None:
            table = lancedb.connect(directory).create_table("t", data)
        else:
            table.add(data)
    assert table is not None
    return table
