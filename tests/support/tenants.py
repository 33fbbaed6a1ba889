"""Keys of two tenants beside the tests' admin key, for the isolation tests.

The live service's settings hold only their digests, as a real deployment would.
"""

from __future__ import annotations

from typing import Any

from lancedb_ray.settings import key_digest

ALPHA_WRITE = "alpha-write-key"  # write on alpha* databases
ALPHA_READ = "alpha-read-key"  # read on alpha* databases
BETA_ADMIN = "beta-admin-key"  # admin on beta* databases
LIMITED = "limited-key"  # write on limited* databases, with small quotas
ONE_WRITER = "one-writer-key"  # write on limited* databases, one write per table at a time
LIMITED_QUOTAS = {"requests_per_second": 2, "burst": 2, "max_k": 50, "max_query_vectors": 2,
                  "max_body_bytes": 64 * 1024}

_ENTRIES = [("alpha-write", ALPHA_WRITE, ["alpha*"], "write"),
            ("alpha-read", ALPHA_READ, ["alpha*"], "read"),
            ("beta-admin", BETA_ADMIN, ["beta*"], "admin")]

TENANT_KEYS: list[dict[str, Any]] = [
    {"name": name, "sha256": key_digest(key), "databases": databases, "role": role}
    for name, key, databases, role in _ENTRIES
] + [
    {"name": "limited", "sha256": key_digest(LIMITED), "databases": ["limited*"], "role": "write",
     "quotas": LIMITED_QUOTAS},
    {"name": "one-writer", "sha256": key_digest(ONE_WRITER), "databases": ["limited*"],
     "role": "write", "quotas": {"concurrent_writes_per_table": 1}},
]
