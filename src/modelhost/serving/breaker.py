"""Circuit breakers: stop calling a model version that keeps failing, for a cool-down.

One :class:`CircuitBreaker` per model version, kept by :class:`Breakers` (built by the
composition root, held by the data plane). ``failures`` consecutive failures (timeouts,
runtime errors, crashes of the model's code; a caller's error is not the model's fault and
does not count) open it; while
open, calls are refused at once with :class:`~modelhost.errors.ModelNotReady` (Retry-After:
the cool-down left), so the data plane tries the version's fallbacks, or the caller gets 503.
After ``cooldown_s`` it half-opens: ``half_open_probes`` calls go through; a success closes
it, a failure opens it again. The ``modelhost_circuit_state`` gauge follows every change.
"""

from __future__ import annotations

import logging
import math
import time
from enum import IntEnum
from typing import Protocol

from modelhost.config import BreakerSettings
from modelhost.errors import (
    InferenceTimeout,
    ModelhostError,
    ModelNotReady,
    QueueTimeout,
    RuntimeFailure,
)
from modelhost.observability.metrics import Metrics
from modelhost.registry import VersionInfo

log = logging.getLogger("modelhost.breaker")


class Clock(Protocol):
    """Seconds on a monotonic clock."""

    def __call__(self) -> float:
        """Now."""
        ...


class CircuitState(IntEnum):
    """Where a breaker is; the value is what the gauge shows."""

    CLOSED = 0  #: the version is called
    OPEN = 1  #: the version is skipped until the cool-down ends
    HALF_OPEN = 2  #: probe calls are let through to see whether it recovered


def counts_against(exc: BaseException) -> bool:
    """True for a failure that is the model's fault: a timeout, a runtime error, or any
    exception that is not modelhost's own (the model's code crashed). A call that timed out
    while still queued for the inference pool (:class:`QueueTimeout`) judged the queue, not
    the model, and does not count."""
    if isinstance(exc, QueueTimeout):
        return False
    return isinstance(exc, InferenceTimeout | RuntimeFailure) or (
        isinstance(exc, Exception) and not isinstance(exc, ModelhostError)
    )


class CircuitBreaker:
    """The breaker of one model version."""

    def __init__(self, settings: BreakerSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.state = CircuitState.CLOSED
        self.failures = 0
        """Consecutive failures while closed."""
        self.opened_at = 0.0
        self.probes = 0
        """Probe calls in flight while half-open."""
        self.probed_at = 0.0

    def retry_after(self) -> float:
        """Seconds left of the cool-down (0 when not open)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.settings.cooldown_s - self.clock())

    def allow(self) -> bool:
        """Whether a call may go through now (half-opening after the cool-down)."""
        if self.state is CircuitState.OPEN and self.retry_after() <= 0:
            self.state, self.probes = CircuitState.HALF_OPEN, 0
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is not CircuitState.HALF_OPEN:
            return False
        if self.clock() - self.probed_at > self.settings.cooldown_s:
            self.probes = 0  # probes that never reported (cancelled, answered from a cache)
        if self.probes < self.settings.half_open_probes:
            self.probes, self.probed_at = self.probes + 1, self.clock()
            return True
        return False

    def succeeded(self) -> None:
        """A call answered: the version works."""
        self.state, self.failures, self.probes = CircuitState.CLOSED, 0, 0

    def failed(self) -> None:
        """A call failed by the model's fault."""
        if self.state is CircuitState.HALF_OPEN:
            self._open()
            return
        self.failures += 1
        if self.state is CircuitState.CLOSED and self.failures >= self.settings.failures:
            self._open()

    def _open(self) -> None:
        self.state, self.opened_at, self.failures, self.probes = (
            CircuitState.OPEN,
            self.clock(),
            0,
            0,
        )


class Breakers:
    """The circuit breakers of every model version this process calls.

    Args:
        settings: thresholds and cool-down.
        metrics: where ``modelhost_circuit_state`` is set; none: not exported.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        settings: BreakerSettings | None = None,
        metrics: Metrics | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else BreakerSettings()
        self.metrics = metrics
        self.clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, info: VersionInfo) -> CircuitBreaker:
        """The breaker of ``info`` (closed when first asked for)."""
        found = self._breakers.get(info.ref)
        if found is None:
            found = self._breakers[info.ref] = CircuitBreaker(self.settings, self.clock)
        return found

    def state(self, info: VersionInfo) -> CircuitState:
        """Where the breaker of ``info`` is (an open one past its cool-down reads half-open
        only once a call asks)."""
        found = self._breakers.get(info.ref)
        return found.state if found is not None else CircuitState.CLOSED

    def admit(self, info: VersionInfo) -> None:
        """Let a call to ``info`` through, or refuse it while its breaker is open.

        Raises:
            ModelNotReady: the breaker is open (``retry_after``: the cool-down left), or
                half-open with its probes already in flight.
        """
        found = self._breakers.get(info.ref)
        if found is None:
            return
        allowed = found.allow()
        self._show(info, found)
        if not allowed:
            wait = found.retry_after() or 1.0
            raise ModelNotReady(
                f"{info.ref} is failing: its circuit breaker is open; retry in {wait:.3g}s",
                retry_after=float(math.ceil(wait)),
            )

    def succeeded(self, info: VersionInfo) -> None:
        """Note an answered call of ``info``."""
        found = self._breakers.get(info.ref)
        if found is not None and (found.state is not CircuitState.CLOSED or found.failures):
            found.succeeded()
            self._show(info, found)

    def failed(self, info: VersionInfo, exc: BaseException) -> None:
        """Note a failed call of ``info``; only the model's own failures count."""
        if not counts_against(exc):
            found = self._breakers.get(info.ref)
            if found is not None and found.probes > 0:  # a probe that proved nothing
                found.probes -= 1
            return
        found = self.breaker(info)
        was = found.state
        found.failed()
        self._show(info, found)
        if found.state is CircuitState.OPEN and was is not CircuitState.OPEN:
            log.warning(
                "circuit breaker of %s opened after %s: calls are refused for %.3gs",
                info.ref,
                type(exc).__name__,
                self.settings.cooldown_s,
            )
            if self.metrics is not None:
                self.metrics.circuit_opened.labels(info.model, info.version).inc()

    def _show(self, info: VersionInfo, breaker: CircuitBreaker) -> None:
        if self.metrics is not None:
            self.metrics.circuit_state.labels(info.model, info.version).set(breaker.state.value)
