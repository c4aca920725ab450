"""The agent's process-wide Prometheus metrics (served by cumulo.agent.metrics).

Created outside prometheus_client's global registry: each metrics app registers them in its
own (tests run several agents in one process)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECONCILE_SECONDS = Histogram(
    "cumulo_agent_reconcile_seconds", "Time of one reconcile pass (volumes, then instances)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=None)
QMP_ERRORS = Counter("cumulo_agent_qmp_errors", "QMP commands that failed (no answer, error)",
                     ["command"], registry=None)

ALL = (RECONCILE_SECONDS, QMP_ERRORS)
