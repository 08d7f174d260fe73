"""Monitoring: the Prometheus metrics of the whole project live in :mod:`.metrics`."""

from __future__ import annotations

from modelhost.monitoring.metrics import DeploymentMetrics, Metrics, outcome_of

__all__ = ["DeploymentMetrics", "Metrics", "outcome_of"]
