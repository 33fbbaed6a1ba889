"""The Lance agent: keeps every table's indices fresh, its fragments compact, its history trimmed.

``core`` is the loop (events -> decisions -> durable jobs -> indexers), free of
Ray; ``deployment`` runs it as the ``LanceAgent`` Serve deployment; ``store``
keeps job records on storage; ``decide`` is the policy.
"""

from lancedb_ray.agent.jobs import Job, JobKind, JobState
from lancedb_ray.agent.store import JobStore, open_job_store

__all__ = ["Job", "JobKind", "JobState", "JobStore", "open_job_store"]
