"""The agent's Ray metrics (``ray_lancedb_ray_agent_*`` in Prometheus).

Events published are counted by the bus itself (``lancedb_ray_events_published_total``).
"""

from __future__ import annotations

from lancedb_ray.metrics import Metric, MetricSet

METRICS = MetricSet(
    "agent",
    {
        "events_consumed_total": Metric("Counter", "Change events the agent received from the bus."),
        "events_outstanding": Metric(
            "Gauge", "Change events received by the agent and not yet checkpointed."
        ),
        "jobs": Metric("Gauge", "Agent job records by state.", ("state",)),
        "jobs_finished_total": Metric("Counter", "Agent jobs finished, by kind and final state.",
                                ("kind", "state")),
        "job_seconds": Metric("Histogram", "Duration of agent job attempts.", ("kind",),
                              (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)),
        "jobs_waiting": Metric("Gauge", "Running agent jobs whose Ray tasks cannot start now."),
        "jobs_stalled_total": Metric("Counter",
                                     "Agent job attempts failed because their tasks never started.",
                               ("kind",)),
        "unindexed_rows": Metric("Gauge", "Rows of a table not yet covered by its indices.",
                                 ("database", "table"), unbounded=("database", "table")),
        "reconcile_seconds": Metric("Histogram", "Duration of one reconciler pass over all tables.",
                                    (), (0.1, 0.5, 1, 5, 10, 30, 60, 300)),
    },
)
