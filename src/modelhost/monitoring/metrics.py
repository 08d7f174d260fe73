"""Every Prometheus metric of modelhost, in one place.

A :class:`Metrics` object owns its own :class:`~prometheus_client.CollectorRegistry`; the
composition root builds one and passes it to whatever records (the data plane) and to the
``/metrics`` route. Nothing here touches prometheus_client's global default registry, so two
apps in one process (tests) never share counters.

=====================================  =========  ==========================================
Name                                   Type       Labels
=====================================  =========  ==========================================
``modelhost_requests_total``           counter    model, version, protocol, outcome
``modelhost_request_duration_seconds`` histogram  model, version, protocol
``modelhost_inference_duration_seconds`` histogram  model, version
``modelhost_batch_size``               histogram  model, version
``modelhost_model_versions``           gauge      state
=====================================  =========  ==========================================

``outcome`` is ``ok`` or the kind of error (see :func:`outcome_of`); ``protocol`` is the one a
transport set on the request, or ``any``. A request whose model is not registered is counted
under model and version ``_unknown`` (no registered name starts with ``_``), so callers cannot
grow the label set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelhost.errors import (
    InferenceTimeout,
    InvalidInput,
    ModelhostError,
    ModelNotReady,
    NotFound,
    PayloadTooLarge,
    RequestError,
    RuntimeFailure,
    ServiceError,
)

#: Label value of a request that named no transport.
ANY_PROTOCOL = "any"
#: Label value of a model or version that could not be resolved.
UNKNOWN = "_unknown"
#: Seconds; from a cached sub-millisecond answer up to a long generation.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: Inputs per runtime call.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

#: Outcome label per error class; the first ``isinstance`` match wins.
_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (InvalidInput, "invalid_input"),
    (PayloadTooLarge, "too_large"),
    (NotFound, "not_found"),
    (RequestError, "bad_request"),
    (ModelNotReady, "not_ready"),
    (InferenceTimeout, "timeout"),
    (ServiceError, "unavailable"),
    (RuntimeFailure, "runtime_error"),
    (ModelhostError, "error"),
)


def outcome_of(exc: BaseException) -> str:
    """The ``outcome`` label of a failed request: a small, fixed set of values."""
    for cls, outcome in _OUTCOMES:
        if isinstance(exc, cls):
            return outcome
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    return "error"


@dataclass(frozen=True, slots=True)
class DeploymentMetrics:
    """The labelled children of one deployment and protocol, looked up once and cached.

    Recording through these costs no label lookup on the hot path; they are thread-safe, so
    :meth:`runtime_call` may run in an inference thread.
    """

    requests_ok: Counter
    request_seconds: Histogram
    inference_seconds: Histogram
    batch_size: Histogram

    def answered(self, seconds: float) -> None:
        """Count one successful request and its end-to-end latency."""
        self.requests_ok.inc()
        self.request_seconds.observe(seconds)

    def runtime_call(self, size: int, seconds: float) -> None:
        """Record one runtime call: how many inputs it held and how long it took."""
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)


class _VersionStates(Collector):
    """``modelhost_model_versions{state}``, read from the model manager at scrape time."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "modelhost_model_versions",
            "Model versions known to this server, by serving state.",
            labels=["state"],
        )

    def describe(self) -> Iterable[Metric]:
        """The family without samples, so registering does not call the manager."""
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        """One sample per state."""
        family = self._family()
        for state, count in sorted(self._counts().items()):
            family.add_metric([state], count)
        return [family]


class Metrics:
    """Every Prometheus metric of one server process, on its own registry.

    Args:
        registry: where the metrics are registered; a fresh one when omitted.
    """

    #: Content type of :meth:`exposition`.
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "modelhost_requests",
            "Inference requests by model, version, protocol and outcome.",
            ["model", "version", "protocol", "outcome"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "modelhost_request_duration_seconds",
            "Latency of answered inference requests inside the data plane, queueing included.",
            ["model", "version", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "modelhost_inference_duration_seconds",
            "Duration of one runtime call (a merged batch counts once).",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelhost_batch_size",
            "Inputs per runtime call, after adaptive batching merged requests.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.drift_score = Gauge(
            "modelhost_drift_score",
            "Drift of live inputs from the reference, by feature and method (psi, ks, kl); "
            "feature '_overall' summarises a version.",
            ["model", "version", "feature", "method"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, str], DeploymentMetrics] = {}

    def deployment(
        self, model: str, version: str, protocol: str = ANY_PROTOCOL
    ) -> DeploymentMetrics:
        """The cached recorders of one deployment as reached by one protocol."""
        key = (model, version, protocol)
        found = self._children.get(key)
        if found is None:
            found = DeploymentMetrics(
                requests_ok=self.requests.labels(model, version, protocol, "ok"),
                request_seconds=self.request_seconds.labels(model, version, protocol),
                inference_seconds=self.inference_seconds.labels(model, version),
                batch_size=self.batch_size.labels(model, version),
            )
            self._children[key] = found
        return found

    def failed(
        self, model: str | None, version: str | None, protocol: str, exc: BaseException
    ) -> None:
        """Count a request that ended in ``exc`` (None for what was never resolved)."""
        self.requests.labels(model or UNKNOWN, version or UNKNOWN, protocol, outcome_of(exc)).inc()

    def drift(self, model: str, version: str, feature: str, method: str, score: float) -> None:
        """Publish the latest drift score of one feature (or ``_overall``) of a version."""
        self.drift_score.labels(model, version, feature, method).set(score)

    def watch_model_versions(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Publish ``modelhost_model_versions{state}`` from ``counts``, read at scrape time."""
        self.registry.register(_VersionStates(counts))

    def exposition(self) -> bytes:
        """Everything in the Prometheus text exposition format."""
        return generate_latest(self.registry)
