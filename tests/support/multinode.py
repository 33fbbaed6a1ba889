"""Pieces of the multi-node scenarios (``ray.cluster_utils.Cluster`` in a process of their own)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lancedb
import numpy as np
import pyarrow as pa
from ray.cluster_utils import Cluster

from tests.support.processes import free_port

if TYPE_CHECKING:
    from ray._private.node import Node

# Ray waits 30 s for a node it adds to register, which a 2-core machine running the test session's
# own cluster beside the scenario's has exceeded (a CI run failed so, before any behaviour was tried).
NODE_START_S = 120


def _node_ports() -> dict[str, int]:
    """Ports of its own for one more node: Ray's defaults may be held by another cluster here."""
    return {"dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port(),
            "runtime_env_agent_port": free_port()}


def new_cluster(**head_args: Any) -> Cluster:
    """A cluster of one head node (ports of its own, no dashboard unless asked), once it registered."""
    cluster = Cluster()
    add_node(cluster, **{"include_dashboard": False, **head_args})
    return cluster


def add_node(cluster: Cluster, **node_args: Any) -> Node:
    """One more node of ``cluster`` (ports of its own), once every node of it registered."""
    node = cluster.add_node(wait=False, **{**_node_ports(), **node_args})
    cluster.wait_for_nodes(timeout=NODE_START_S)
    return node


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
