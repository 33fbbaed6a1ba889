"""One long-lived ``lance.Session`` per process.

Lance caches manifests, fragment metadata and index partitions in a session;
a dataset opened without one starts cold and reads them all again. Every
dataset this process opens shares this session, so a warm query reads nothing
it has read before.
"""

from __future__ import annotations

import threading

import lance

_session: lance.Session | None = None
_lock = threading.Lock()


def process_session(index_cache_bytes: int, metadata_cache_bytes: int) -> lance.Session:
    """The process's session; the first caller sizes it (an executor from its cache budget)."""
    global _session
    with _lock:
        if _session is None:
            _session = lance.Session(
                index_cache_size_bytes=index_cache_bytes, metadata_cache_size_bytes=metadata_cache_bytes
            )
        return _session
