"""Who is calling and what they may do: API keys, their databases and their roles.

A request's key is hashed once and compared, in constant time, with the digest of
every configured key (no early exit). The route then needs a role, and a route
that names a database needs a key allowed for it: the refusal is the same 403
whether or not that database exists, and it comes before storage is touched.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from lancedb_ray.errors import Forbidden, Unauthorized
from lancedb_ray.settings import ApiKey, Role, Settings

MAX_KEY_LENGTH = 256
_RANK = {Role.READ: 0, Role.WRITE: 1, Role.ADMIN: 2}

# The routes a read key may call, by route name (the endpoint's function name); every
# other data route needs write, and /v1/admin/* needs admin.
READ_ROUTES = frozenset({
    "list_tables", "describe_table", "count_rows", "table_stats", "query", "explain_plan",
    "analyze_plan", "list_indices", "index_stats", "list_versions", "list_tags", "tag_version",
    "list_namespaces", "describe_namespace", "list_namespace_tables",
})


def identify(settings: Settings, presented: str | None) -> ApiKey:
    """The configured key ``presented`` is, else 401 (missing, malformed or unknown)."""
    if not presented:
        raise Unauthorized("missing x-api-key header")
    if len(presented) > MAX_KEY_LENGTH or not presented.isascii() or not presented.isprintable():
        raise Unauthorized(f"malformed API key: expected at most {MAX_KEY_LENGTH} printable ASCII "
                           "characters")
    digest = hashlib.sha256(presented.encode("ascii")).digest()
    found: ApiKey | None = None
    for key in settings.server.api_keys:  # every entry, so timing says nothing about which
        if hmac.compare_digest(digest, bytes.fromhex(key.sha256)) and found is None:
            found = key
    if found is None:
        raise Unauthorized("invalid API key")
    return found


def required_role(request: Request) -> Role:
    route = request.scope.get("route")
    if request.url.path.startswith("/v1/admin/"):
        return Role.ADMIN
    return Role.READ if getattr(route, "name", None) in READ_ROUTES else Role.WRITE


def authorize(key: ApiKey, role: Role, database: str | None) -> None:
    """403 unless ``key`` has ``role`` and, for a database route, may use ``database``."""
    if _RANK[key.role] < _RANK[role]:
        raise Forbidden(f"API key '{key.name}' has role {key.role.value}; this needs {role.value}")
    if database is not None and not key.allows(database):
        raise Forbidden(f"API key '{key.name}' may not use database '{database}'")
