"""Every Prometheus metric of modelhost, in one place.

A :class:`Metrics` object owns its own :class:`~prometheus_client.CollectorRegistry`; the
composition root builds one and passes it to whatever records (the data plane, and the
observer from :meth:`Metrics.observer` on it) and to the ``/metrics`` route. Nothing here
touches prometheus_client's global default registry, so two apps in one process (tests) never
share counters.

==========================================  =========  =====================================
Name                                        Type       Labels
==========================================  =========  =====================================
``modelhost_requests_total``                counter    model, version, protocol, outcome
``modelhost_request_duration_seconds``      histogram  model, version, protocol
``modelhost_inference_duration_seconds``    histogram  model, version
``modelhost_batch_size``                    histogram  model, version
``modelhost_tokens_total``                  counter    model, version, kind (input, output)
``modelhost_cost_total``                    counter    model, version, currency
``modelhost_job_queue_wait_seconds``        histogram  model, version
``modelhost_job_latency_seconds``           histogram  model, version, outcome
``modelhost_jobs``                          gauge      status (queued, running)
``modelhost_model_versions``                gauge      state
``modelhost_model_state``                   gauge      model, version, state
``modelhost_drift_score``                   gauge      model, version, feature, method
``modelhost_canary_weight``                 gauge      model, version
``modelhost_rollout_actions_total``         counter    model, action
``modelhost_shadow_requests_total``         counter    model, version, outcome
``modelhost_cache_requests_total``          counter    model, version, kind, outcome
``modelhost_circuit_state``                 gauge      model, version (0 closed, 1 open,
                                                       2 half-open)
``modelhost_circuit_opened_total``         counter    model, version
``modelhost_feature_age_seconds``           histogram  model, version, view
``modelhost_feature_fetch_seconds``         histogram  model, version
``modelhost_feature_missing_total``         counter    model, version, outcome (defaulted,
                                                       rejected)
``modelhost_feature_skew_ratio``            gauge      model, version, feature
``modelhost_feature_materialized_timestamp`` gauge     repository
``modelhost_webhook_attempts_total``        counter    event, outcome (delivered, http_error,
                                                       redirect, timeout, network,
                                                       unresolved, refused)
==========================================  =========  =====================================

``outcome`` is ``ok`` or the kind of error (see :func:`outcome_of`); ``protocol`` is the one a
transport set on the request, or ``any``. A request whose model is not registered is counted
under model and version ``_unknown`` (no registered name starts with ``_``), so callers cannot
grow the label set. Tokens and cost count live traffic only (replays are left out, as in
``GET /v1/usage``). Cache outcomes are ``hit``, ``miss`` and ``bypass`` (the ``X-Cache``
header), by ``kind`` (``exact``, ``semantic``).
"""

from __future__ import annotations

import asyncio
import logging
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
from modelhost.inference import ANY_PROTOCOL, InferenceEvent, InferenceObserver

log = logging.getLogger("modelhost.metrics")

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
#: Seconds a job waits or takes, from enqueue: from a worker that was idle to a backlog.
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: The ``modelhost_jobs`` statuses: what is waiting and what is being worked on.
JOB_STATES = ("queued", "running")

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


class _ScrapeTimeGauge(Collector):
    """A gauge family whose samples are read at scrape time from a callback (the model
    manager, the job queue). A failing callback is logged and leaves the family empty, so one
    unreachable database never breaks the whole scrape."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: list[str],
        samples: Callable[[], Iterable[tuple[Iterable[str], float]]],
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._samples = samples

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self._name, self._documentation, labels=self._labels)

    def describe(self) -> Iterable[Metric]:
        """The family without samples, so registering does not call the callback."""
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        """The callback's samples, sorted by labels."""
        family = self._family()
        try:
            samples = sorted((list(labels), value) for labels, value in self._samples())
        except Exception:  # a scrape must not fail because one source is down; it is logged
            log.exception("reading %s failed", self._name)
            samples = []
        for labels, value in samples:
            family.add_metric(labels, value)
        return [family]


@dataclass(frozen=True, slots=True)
class _UsageMetrics:
    """The labelled token and cost children of one version (and currency), cached."""

    input_tokens: Counter
    output_tokens: Counter
    cost: Counter | None


class _Recorder(InferenceObserver):
    """Records tokens, cost and job timings of every ended inference (an observer on the
    data plane, so every protocol and the job worker are counted alike)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def observe(self, event: InferenceEvent) -> None:
        """Count the event's tokens and cost (live traffic) and its job timings."""
        request, info = event.request, event.info
        model, version = (info.model, info.version) if info is not None else (UNKNOWN, UNKNOWN)
        usage = event.usage
        live = request.live
        if usage is not None and live:
            children = self._metrics.usage(model, version, usage.currency)
            if usage.input_tokens:
                children.input_tokens.inc(usage.input_tokens)
            if usage.output_tokens:
                children.output_tokens.inc(usage.output_tokens)
            if children.cost is not None and usage.cost:
                children.cost.inc(usage.cost)
        if request.queued_s is not None:
            outcome = "ok" if event.error is None else outcome_of(event.error)
            self._metrics.job_wait.labels(model, version).observe(request.queued_s)
            self._metrics.job_latency.labels(model, version, outcome).observe(
                request.queued_s + event.duration_s
            )


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
        self.tokens = Counter(
            "modelhost_tokens",
            "Tokens (or items, for models that count inputs) of answered live inferences.",
            ["model", "version", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "modelhost_cost",
            "Cost of answered live inferences under each version's pricing, in its currency.",
            ["model", "version", "currency"],
            registry=self.registry,
        )
        self.job_wait = Histogram(
            "modelhost_job_queue_wait_seconds",
            "Seconds an async job waited in the queue before an attempt started.",
            ["model", "version"],
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.job_latency = Histogram(
            "modelhost_job_latency_seconds",
            "Seconds from a job's enqueue to the end of an attempt at it (a retried job counts "
            "once per attempt), by outcome.",
            ["model", "version", "outcome"],
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.drift_score = Gauge(
            "modelhost_drift_score",
            "Drift of live inputs from the reference, by feature and method (psi, ks, kl); "
            "feature '_overall' summarises a version.",
            ["model", "version", "feature", "method"],
            registry=self.registry,
        )
        self.canary_weight = Gauge(
            "modelhost_canary_weight",
            "Percent of unpinned traffic the canary version of a model takes (0 when rolled back).",
            ["model", "version"],
            registry=self.registry,
        )
        self.rollout_actions = Counter(
            "modelhost_rollout_actions",
            "Automatic rollout actions taken by this process: rollback (a guard breached), "
            "ramp (a step up), promote (a ramp completed), held (a gate stopped a ramp).",
            ["model", "action"],
            registry=self.registry,
        )
        self.shadow_requests = Counter(
            "modelhost_shadow_requests",
            "Copies of live requests run on shadow versions, by outcome: agree, disagree, "
            "error (the shadow failed), dropped (the shadow queue was full or the process "
            "stopped), skipped (the "
            "shadow was not ready or refused the input).",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.circuit_state = Gauge(
            "modelhost_circuit_state",
            "Circuit breaker of a model version: 0 closed (called), 1 open (skipped for its "
            "cool-down), 2 half-open (probe calls let through).",
            ["model", "version"],
            registry=self.registry,
        )
        self.circuit_opened = Counter(
            "modelhost_circuit_opened_total",
            "Times the circuit breaker of a model version opened (after its failures).",
            ["model", "version"],
            registry=self.registry,
        )
        self.cache_requests = Counter(
            "modelhost_cache_requests",
            "Requests the response cache was asked about, by outcome: hit (answered from the "
            "cache), miss (stored), bypass (not cacheable, or the caller sent no-cache).",
            ["model", "version", "kind", "outcome"],
            registry=self.registry,
        )
        self.feature_age = Histogram(
            "modelhost_feature_age_seconds",
            "Age of the oldest stored feature value a request read, per feature view: how "
            "fresh the online store is (materialization lag).",
            ["model", "version", "view"],
            buckets=(
                60,
                300,
                900,
                3600,
                3 * 3600,
                6 * 3600,
                12 * 3600,
                86400,
                2 * 86400,
                7 * 86400,
                float("inf"),
            ),
            registry=self.registry,
        )
        self.feature_fetch = Histogram(
            "modelhost_feature_fetch_seconds",
            "Seconds one online feature retrieval took (one call per request, whole batch).",
            ["model", "version"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5),
            registry=self.registry,
        )
        self.feature_missing = Counter(
            "modelhost_feature_missing",
            "Request rows whose entity had missing or stale stored features, by what the "
            "model's policy did: defaulted or rejected (422).",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.feature_skew = Gauge(
            "modelhost_feature_skew_ratio",
            "Share of served rows whose feature value differs from its offline recomputation "
            "at the same entity and time (last skew check).",
            ["model", "version", "feature"],
            registry=self.registry,
        )
        self.feature_materialized = Gauge(
            "modelhost_feature_materialized_timestamp",
            "When the online store of a feature repository was last materialized (seconds "
            "since the epoch) by this process.",
            ["repository"],
            registry=self.registry,
        )
        self.webhook_attempts = Counter(
            "modelhost_webhook_attempts",
            "POSTs to user-named URLs (job callbacks, drift, rollout and skew alerts) by event "
            "and outcome: delivered, http_error, redirect (not followed), timeout, network, "
            "unresolved, refused (by the SSRF guard).",
            ["event", "outcome"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, str], DeploymentMetrics] = {}
        self._usage: dict[tuple[str, str, str | None], _UsageMetrics] = {}

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

    def usage(self, model: str, version: str, currency: str | None) -> _UsageMetrics:
        """The cached token and cost recorders of one version (no cost without a currency)."""
        key = (model, version, currency)
        found = self._usage.get(key)
        if found is None:
            found = _UsageMetrics(
                input_tokens=self.tokens.labels(model, version, "input"),
                output_tokens=self.tokens.labels(model, version, "output"),
                cost=self.cost.labels(model, version, currency) if currency else None,
            )
            self._usage[key] = found
        return found

    def observer(self) -> InferenceObserver:
        """The data plane observer that records tokens, cost and job timings."""
        return _Recorder(self)

    def watch_model_versions(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Publish ``modelhost_model_versions{state}`` from ``counts``, read at scrape time."""
        self.registry.register(
            _ScrapeTimeGauge(
                "modelhost_model_versions",
                "Model versions known to this server, by serving state.",
                ["state"],
                lambda: (([state], count) for state, count in counts().items()),
            )
        )

    def watch_model_states(self, states: Callable[[], Iterable[tuple[str, str, str]]]) -> None:
        """Publish ``modelhost_model_state{model,version,state}`` (1 for each version's
        current state) from ``states`` (``(model, version, state)`` triples), read at scrape
        time."""
        self.registry.register(
            _ScrapeTimeGauge(
                "modelhost_model_state",
                "1 for the serving state each model version is in (loading, ready, failed, "
                "unloaded).",
                ["model", "version", "state"],
                lambda: (([model, version, state], 1.0) for model, version, state in states()),
            )
        )

    def watch_jobs(self, depth: Callable[[], Mapping[str, int]]) -> None:
        """Publish ``modelhost_jobs{status}`` (queued and running jobs, every process's) from
        ``depth`` (the job queue's counts by status), read at scrape time."""

        def samples() -> list[tuple[list[str], float]]:
            counts = depth()
            return [([status], counts.get(status, 0)) for status in JOB_STATES]

        self.registry.register(
            _ScrapeTimeGauge(
                "modelhost_jobs",
                "Async jobs (batch items included) waiting in the queue or running, in every "
                "process sharing the queue.",
                ["status"],
                samples,
            )
        )

    def exposition(self) -> bytes:
        """Everything in the Prometheus text exposition format."""
        return generate_latest(self.registry)
