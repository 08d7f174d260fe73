"""What the data plane tells observers about every inference it ends.

Provenance, drift monitoring and usage accounting watch inferences without being in the
request path's code: the :class:`~modelhost.serving.dataplane.DataPlane` hands each one an
:class:`InferenceEvent` when an inference ends (answered, streamed to its end, or failed), on
the event loop. An observer must only take note (append to a buffer) and return; its own work
(database writes, statistics) happens elsewhere, off the hot path. An observer that raises is
logged and never fails the request.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelhost.registry import VersionInfo
    from modelhost.runtimes import Usage
    from modelhost.serving.dataplane import InferenceRequest


@dataclass(slots=True)
class InferenceEvent:
    """One ended inference."""

    request: InferenceRequest
    """What was asked, as the transport built it (inputs before guards rewrote them)."""
    info: VersionInfo | None
    """The version that served it; None when the model or version could not be resolved."""
    started_at: float
    """Wall-clock start, seconds since the epoch."""
    duration_s: float
    """From the data plane receiving the request to its end."""
    results: list[Any] | None = None
    """The results as answered (after output guards); None on failure."""
    usage: Usage | None = None
    error: BaseException | None = None
    """The exception the caller got; None on success."""
    streamed: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    """Parts of ``duration_s`` in seconds, as known: ``inference`` (the runtime call, batch
    wait included) and ``batch_wait`` (time spent in an adaptive batch before its call) when
    the data plane measured them. The job queue's wait is ``request.queued_s``."""
    decisions: dict[str, Any] = field(default_factory=dict)
    """What the request path decided on the way, for the record: ``cache`` (``hit`` /
    ``miss``), ``route`` (canary, shadow, cascade step, ...), as the deciding layer sets them."""

    @classmethod
    def ended(
        cls, request: InferenceRequest, info: VersionInfo | None, started: float, **kw: Any
    ) -> InferenceEvent:
        """An event for an inference that started at ``perf_counter()`` time ``started``."""
        elapsed = time.perf_counter() - started
        return cls(request, info, time.time() - elapsed, elapsed, **kw)


class InferenceObserver(ABC):
    """Takes note of ended inferences."""

    @abstractmethod
    def observe(self, event: InferenceEvent) -> None:
        """Note ``event``; called on the event loop, so it must not block."""
