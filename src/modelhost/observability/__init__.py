"""Observability: Prometheus metrics (:mod:`.metrics`), OpenTelemetry tracing and logs."""

from __future__ import annotations

from modelhost.observability.metrics import DeploymentMetrics, Metrics, outcome_of

__all__ = ["DeploymentMetrics", "Metrics", "outcome_of"]
