"""Circuit breakers: which failures count, open → half-open → closed, the gauge and the log."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from modelhost.config import BreakerSettings
from modelhost.errors import (
    InferenceTimeout,
    InvalidInput,
    ModelNotReady,
    QueueTimeout,
    RuntimeFailure,
)
from modelhost.manifest import parse_manifest
from modelhost.observability.metrics import Metrics
from modelhost.registry import Stage, VersionInfo
from modelhost.serving.breaker import Breakers, CircuitState, counts_against


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _version(name: str = "m") -> VersionInfo:
    manifest = parse_manifest({"name": name, "version": "1.0.0", "runtime": "python"})
    return VersionInfo(
        name, "1.0.0", "python", Stage.PRODUCTION, manifest, {}, 0, datetime.now(UTC), "t"
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def breakers(clock: FakeClock, metrics: Metrics) -> Breakers:
    settings = BreakerSettings(failures=3, cooldown_s=10, half_open_probes=1)
    return Breakers(settings, metrics, clock)


def _gauge(metrics: Metrics, info: VersionInfo) -> float:
    return metrics.circuit_state.labels(info.model, info.version)._value.get()  # type: ignore[no-any-return]  # prometheus_client's sample value is untyped


def test_which_failures_are_the_models_fault() -> None:
    assert counts_against(InferenceTimeout("slow"))
    assert counts_against(RuntimeFailure("crashed"))
    assert counts_against(ZeroDivisionError())  # the model's own code raised
    assert not counts_against(QueueTimeout("queued too long"))  # the queue, not the model
    assert not counts_against(InvalidInput("bad input"))  # the caller's mistake
    assert not counts_against(KeyboardInterrupt())


def test_consecutive_failures_open_it_and_calls_are_refused_with_the_cooldown_left(
    breakers: Breakers, clock: FakeClock, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    info = _version()
    breakers.admit(info)  # never failed: no breaker at all
    assert breakers.state(info) is CircuitState.CLOSED
    with caplog.at_level(logging.WARNING, logger="modelhost.breaker"):
        for _ in range(2):
            breakers.failed(info, RuntimeFailure("boom"))
        assert breakers.state(info) is CircuitState.CLOSED
        breakers.failed(info, InferenceTimeout("slow"))
    assert breakers.state(info) is CircuitState.OPEN
    assert _gauge(metrics, info) == CircuitState.OPEN.value
    assert metrics.circuit_opened.labels("m", "1.0.0")._value.get() == 1
    assert [r.getMessage() for r in caplog.records] == [
        "circuit breaker of m@1.0.0 opened after InferenceTimeout: calls are refused for 10s"
    ]
    clock.now += 4
    with pytest.raises(ModelNotReady) as refused:
        breakers.admit(info)
    assert refused.value.retry_after == 6
    assert "circuit breaker is open" in refused.value.message


def test_a_success_between_failures_resets_the_count(breakers: Breakers) -> None:
    info = _version()
    for _ in range(2):
        breakers.failed(info, RuntimeFailure("boom"))
    breakers.succeeded(info)
    for _ in range(2):
        breakers.failed(info, RuntimeFailure("boom"))
    assert breakers.state(info) is CircuitState.CLOSED


def test_queue_timeouts_and_caller_errors_never_open_it(breakers: Breakers) -> None:
    info = _version()
    for _ in range(10):
        breakers.failed(info, QueueTimeout("queued"))
        breakers.failed(info, InvalidInput("bad"))
    breakers.admit(info)
    assert breakers.state(info) is CircuitState.CLOSED


def test_after_the_cooldown_one_probe_goes_through_and_its_answer_decides(
    breakers: Breakers, clock: FakeClock, metrics: Metrics
) -> None:
    info = _version()
    for _ in range(3):
        breakers.failed(info, RuntimeFailure("boom"))
    clock.now += 10
    breakers.admit(info)  # the probe
    assert breakers.state(info) is CircuitState.HALF_OPEN
    assert _gauge(metrics, info) == CircuitState.HALF_OPEN.value
    with pytest.raises(ModelNotReady):
        breakers.admit(info)  # a second caller while the probe is out
    breakers.failed(info, RuntimeFailure("still broken"))  # the probe failed: open again
    assert breakers.state(info) is CircuitState.OPEN
    clock.now += 10
    breakers.admit(info)
    breakers.succeeded(info)  # the probe answered: closed
    assert breakers.state(info) is CircuitState.CLOSED
    assert _gauge(metrics, info) == CircuitState.CLOSED.value
    breakers.admit(info)
    breakers.admit(info)


def test_a_probe_that_proved_nothing_frees_its_slot(breakers: Breakers, clock: FakeClock) -> None:
    info = _version()
    for _ in range(3):
        breakers.failed(info, RuntimeFailure("boom"))
    clock.now += 10
    breakers.admit(info)
    breakers.failed(info, QueueTimeout("queued"))  # the probe never reached the model
    assert breakers.state(info) is CircuitState.HALF_OPEN
    breakers.admit(info)  # another probe may go


def test_a_probe_that_never_reports_is_forgotten_after_a_cooldown(
    breakers: Breakers, clock: FakeClock
) -> None:
    info = _version()
    for _ in range(3):
        breakers.failed(info, RuntimeFailure("boom"))
    clock.now += 10
    breakers.admit(info)  # cancelled: neither succeeded nor failed
    clock.now += 11
    breakers.admit(info)


def test_each_version_has_its_own_breaker(breakers: Breakers) -> None:
    broken, healthy = _version("broken"), _version("healthy")
    for _ in range(3):
        breakers.failed(broken, RuntimeFailure("boom"))
    with pytest.raises(ModelNotReady):
        breakers.admit(broken)
    breakers.admit(healthy)
    assert breakers.state(healthy) is CircuitState.CLOSED


def test_without_metrics_it_still_opens() -> None:
    clock = FakeClock()
    plain = Breakers(BreakerSettings(failures=1, cooldown_s=5), None, clock)
    info = _version()
    plain.failed(info, RuntimeFailure("boom"))
    with pytest.raises(ModelNotReady) as refused:
        plain.admit(info)
    assert refused.value.retry_after == 5
