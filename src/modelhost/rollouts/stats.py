"""What the control plane counts, in memory, and how it sums it up: canaries and shadows.

**Latency** is counted the same way on both sides, in a :class:`LatencyHistogram`: counts per
log-spaced bucket (:class:`LogBuckets`). Histograms of several replicas merge by adding counts,
so a quantile over every replica needs no raw samples. Each side keeps the bucket edges its
stored rows were written with (a row holds bucket numbers):

* :data:`ROLLOUT_BUCKETS` (the canary guards): 0.1 ms to about ten minutes, 2% apart, so a p95
  read from it is within 1% of the exact one; the ``latency`` of ``mh_rollout_stats``;
* :data:`SHADOW_BUCKETS` (shadow reports): 1 µs to over an hour, eight buckets per doubling
  (about 9% wide, ±4.5% around the middle); ``shadow_latency`` and ``primary_latency`` of
  ``mh_shadow_stats``.

**Canaries**: :class:`StatsLedger`, an observer on the data plane, counts per model version
the live traffic of this process (replays are not live traffic and are skipped):

* *requests*: answered live inferences plus server-side failures;
* *errors*: server-side failures (:class:`~modelhost.errors.ServiceError`,
  :class:`~modelhost.errors.RuntimeFailure`, timeouts, any other exception). A caller's
  :class:`~modelhost.errors.RequestError` (invalid input, over a limit) is not the version's
  fault, so it is not counted at all: it would only dilute the error rate;
* *latency* of the answered ones.

:class:`WindowStats` sums that up over a window (error rate, p50, p95 and the p95's
confidence interval): what the guards of :mod:`modelhost.rollouts.monitor` judge.

**Shadows**: :class:`ShadowStats` counts per model, shadow version and minute
(:data:`PERIOD_S`) what :class:`~modelhost.rollouts.shadow.ShadowRunner` saw: copies compared
and agreed, items compared and agreed, errors, dropped and skipped copies (by reason),
latencies of the shadow's runtime call and of the primary's on the same copies, and examples
of disagreements. :class:`ShadowReport` sums them up for one shadow version.

Where these counts go, and how every replica's are summed: :mod:`modelhost.rollouts.store`.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelhost.accounting.usage import is_replay
from modelhost.errors import RequestError
from modelhost.inference import InferenceEvent, InferenceObserver

# -- latency histograms -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogBuckets:
    """Log-spaced bucket edges: bucket ``first + k`` holds the latencies from
    ``floor_s * base ** (k * width)`` up to the next edge; faster ones land in bucket 0 and
    slower ones in ``top``."""

    floor_s: float
    """The lowest edge, in seconds."""
    base: float
    width: float
    """How many powers of ``base`` one bucket spans."""
    top: int
    """The highest bucket."""
    first: int = 0
    """The bucket just above ``floor_s`` (1: bucket 0 holds only latencies up to ``floor_s``)."""

    def index(self, seconds: float) -> int:
        """The bucket ``seconds`` falls in."""
        if seconds <= self.floor_s:
            return 0
        ratio = seconds / self.floor_s
        # log2 is exact on powers of two: a latency on an edge of base-2 buckets stays on it
        power = math.log2(ratio) if self.base == 2 else math.log(ratio, self.base)
        return min(self.top, self.first + int(power / self.width))

    def value(self, index: int) -> float:
        """The latency a bucket stands for: the geometric middle of its edges (``floor_s``
        below ``first``), in seconds."""
        if index < self.first:
            return self.floor_s
        return self.floor_s * math.pow(self.base, (index - self.first + 0.5) * self.width)


#: The canary guards' buckets: bucket 0 up to 0.1 ms, then 2% apart up to about ten minutes.
ROLLOUT_BUCKETS = LogBuckets(floor_s=1e-4, base=1.02, width=1.0, top=799, first=1)
#: Shadow reports' buckets: eight per doubling from 1 µs, the last (over an hour) takes the rest.
SHADOW_BUCKETS = LogBuckets(floor_s=1e-6, base=2.0, width=1 / 8, top=32 * 8)
#: Standard deviations either side of a quantile's rank in its confidence interval (95%).
CONFIDENCE_Z = 1.96


class LatencyHistogram:
    """Counts of latencies in log-spaced buckets, with their number and sum.

    Args:
        scale: the bucket edges (default: :data:`SHADOW_BUCKETS`).
    """

    __slots__ = ("buckets", "count", "scale", "total_s")

    def __init__(self, scale: LogBuckets = SHADOW_BUCKETS) -> None:
        self.scale = scale
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total_s = 0.0

    def add(self, seconds: float) -> None:
        """Count one latency."""
        index = self.scale.index(seconds)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total_s += seconds

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s counts (over the same edges) to these."""
        if other.scale != self.scale:
            raise ValueError("cannot merge latency histograms with different buckets")
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += other.count
        self.total_s += other.total_s

    def _at_ranks(self, ranks: list[int]) -> list[float]:
        """The latencies at 1-based ``ranks`` (ascending) of the sorted latencies, one walk."""
        found: list[float] = []
        seen = 0
        wanted = iter(ranks)
        rank = next(wanted, None)
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            while rank is not None and seen >= rank:
                found.append(self.scale.value(index))
                rank = next(wanted, None)
        return found

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (nearest rank) of the counted latencies, in seconds: the value
        of its bucket; None when nothing was counted."""
        if self.count <= 0:
            return None
        return self._at_ranks([max(1, math.ceil(q * self.count))])[0]

    def quantile_bounds(self, q: float, z: float = CONFIDENCE_Z) -> tuple[float, float] | None:
        """A confidence interval of the ``q`` quantile that holds whatever the distribution:
        the order statistics ``z`` binomial standard deviations either side of its rank. With
        few samples it is wide (the p95 of 20 requests is little more than their slowest), and
        it narrows as samples grow; None when nothing was counted."""
        total = self.count
        if total <= 0:
            return None
        spread = z * math.sqrt(total * q * (1 - q))
        low = min(total, max(1, math.floor(total * q - spread)))
        high = min(total, max(1, math.ceil(total * q + spread)))
        first, second = self._at_ranks([low, high])
        return first, second

    def mean(self) -> float | None:
        """The mean latency; None when nothing was counted."""
        return self.total_s / self.count if self.count else None

    def to_json(self) -> dict[str, int]:
        """The buckets as a JSON object (keys are bucket numbers), as rows store them."""
        return {str(index): n for index, n in sorted(self.buckets.items())}

    @classmethod
    def from_json(
        cls, buckets: Mapping[str, int] | None, total_s: float, scale: LogBuckets = SHADOW_BUCKETS
    ) -> LatencyHistogram:
        """A histogram read back from a row (``total_s``: the sum of its latencies)."""
        built = cls(scale)
        for key, n in (buckets or {}).items():
            built.buckets[int(key)] = int(n)
        built.count = sum(built.buckets.values())
        built.total_s = float(total_s or 0.0)
        return built

    @classmethod
    def of(cls, buckets: Mapping[int, int], scale: LogBuckets) -> LatencyHistogram:
        """A histogram of counts per bucket."""
        built = cls(scale)
        built.buckets.update(buckets)
        built.count = sum(buckets.values())
        return built

    def copy(self) -> LatencyHistogram:
        """An independent copy."""
        built = LatencyHistogram(self.scale)
        built.merge(self)
        return built


def bucket_of(seconds: float) -> int:
    """The :data:`ROLLOUT_BUCKETS` bucket ``seconds`` falls in."""
    return ROLLOUT_BUCKETS.index(seconds)


def bucket_value(index: int) -> float:
    """The latency a :data:`ROLLOUT_BUCKETS` bucket stands for, in seconds."""
    return ROLLOUT_BUCKETS.value(index)


def quantile(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile of latencies counted per :data:`ROLLOUT_BUCKETS` bucket
    (:meth:`LatencyHistogram.quantile`)."""
    return LatencyHistogram.of(histogram, ROLLOUT_BUCKETS).quantile(q)


def quantile_bounds(
    histogram: Mapping[int, int], q: float, z: float = CONFIDENCE_Z
) -> tuple[float, float] | None:
    """A confidence interval of that quantile (:meth:`LatencyHistogram.quantile_bounds`)."""
    return LatencyHistogram.of(histogram, ROLLOUT_BUCKETS).quantile_bounds(q, z)


def default_replica() -> str:
    """A name for this process in the shared rows that no other replica has: host, pid and a
    random part (a restarted process counts apart from its predecessor)."""
    return f"{socket.gethostname()[:64]}-{os.getpid()}-{secrets.token_hex(4)}"


def _ms(seconds: float | None, digits: int = 3) -> float | None:
    return None if seconds is None else round(seconds * 1000, digits)


# -- canaries ---------------------------------------------------------------------------------

#: (model, version)
VersionKey = tuple[str, str]


def _rollout_histogram() -> LatencyHistogram:
    return LatencyHistogram(ROLLOUT_BUCKETS)


@dataclass(slots=True)
class Counts:
    """What one version did in one period: amounts that add up."""

    requests: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=_rollout_histogram)
    """Answered requests per latency bucket (:data:`ROLLOUT_BUCKETS`)."""

    def add(self, other: Counts) -> None:
        """Add ``other``'s amounts to these."""
        self.requests += other.requests
        self.errors += other.errors
        self.latency.merge(other.latency)

    def answered(self, seconds: float) -> None:
        """Count one answered request that took ``seconds``."""
        self.requests += 1
        self.latency.add(seconds)

    def failed(self) -> None:
        """Count one server-side failure."""
        self.requests += 1
        self.errors += 1


@dataclass(frozen=True, slots=True)
class WindowStats:
    """One version's live traffic over a window, from every replica."""

    requests: int = 0
    errors: int = 0
    answered: int = 0
    """Requests answered without error (the latency quantiles are over these)."""
    p50: float | None = None
    """Median latency in seconds; None without answered requests."""
    p95: float | None = None
    p95_low: float | None = None
    """Lower bound of the p95's 95% confidence interval
    (:meth:`LatencyHistogram.quantile_bounds`)."""
    p95_high: float | None = None
    """Upper bound of the p95's 95% confidence interval."""

    @property
    def error_rate(self) -> float:
        """Server-side failures per request (0 without requests)."""
        return self.errors / self.requests if self.requests else 0.0

    @classmethod
    def of(cls, counts: Counts) -> WindowStats:
        """Summarise summed counts."""
        latency = counts.latency
        bounds = latency.quantile_bounds(0.95)
        return cls(
            requests=counts.requests,
            errors=counts.errors,
            answered=latency.count,
            p50=latency.quantile(0.50),
            p95=latency.quantile(0.95),
            p95_low=bounds[0] if bounds else None,
            p95_high=bounds[1] if bounds else None,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, latencies in milliseconds (what a rollback's reason shows)."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "p50_ms": _ms(self.p50),
            "p95_ms": _ms(self.p95),
            "p95_ms_bounds": [_ms(self.p95_low), _ms(self.p95_high)],
        }


def is_server_error(error: BaseException) -> bool:
    """Whether a failure is the version's (or the service's) fault, not the caller's."""
    return isinstance(error, Exception) and not isinstance(error, RequestError)


def _cached(event: InferenceEvent) -> bool:
    """Whether a response cache answered (the version did not run: nothing to judge it by)."""
    decision = event.decisions.get("cache")
    return isinstance(decision, str) and decision.endswith(":hit")


class StatsLedger(InferenceObserver):
    """Counts ended live inferences per version in memory until the next flush takes them."""

    def __init__(self) -> None:
        self._pending: dict[VersionKey, Counts] = {}

    def observe(self, event: InferenceEvent) -> None:
        """Count an answered inference with its latency, or a server-side failure."""
        info = event.info
        if info is None or is_replay(event) or _cached(event):
            return  # not live traffic, or not the model's work (a cache answered)
        error = event.error
        if error is not None and not is_server_error(error):
            return  # the caller's mistake, or a caller that went away
        key = (info.model, info.version)
        counts = self._pending.get(key)
        if counts is None:
            counts = self._pending[key] = Counts()
        if error is None:
            counts.answered(event.duration_s)
        else:
            counts.failed()

    def take(self) -> dict[VersionKey, Counts]:
        """Everything counted since the last take; the ledger starts again from zero."""
        taken, self._pending = self._pending, {}
        return taken

    def put_back(self, taken: dict[VersionKey, Counts]) -> None:
        """Return counts a failed flush could not store, for the next flush."""
        for key, counts in taken.items():
            found = self._pending.get(key)
            if found is None:
                self._pending[key] = counts
            else:
                found.add(counts)


# -- shadows ----------------------------------------------------------------------------------

#: Seconds in one row's period (the granularity of a report's ``since``).
PERIOD_S = 60


def period_of(at: float) -> int:
    """Start of the period holding ``at``."""
    return int(at // PERIOD_S) * PERIOD_S


#: The counters of a :class:`ShadowTally`: whole numbers that add up (a row has a column each).
TALLY_COUNTS = ("compared", "agreed", "items", "items_agreed", "errors", "dropped")


@dataclass(slots=True)
class ShadowTally:
    """What one process counted for one shadow version in one period."""

    compared: int = 0
    """Copies the shadow answered and that were compared with the primary's answer."""
    agreed: int = 0
    """Compared copies on which every item agreed."""
    items: int = 0
    items_agreed: int = 0
    errors: int = 0
    """Copies on which the shadow failed (raised, timed out, was blocked by its guard)."""
    dropped: int = 0
    """Copies never run: the queue was full, or the process stopped first."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Copies not run, by reason: ``loading``, ``failed``, ``unloaded``, ``invalid_input``,
    ``too_large``."""
    shadow: LatencyHistogram = field(default_factory=LatencyHistogram)
    """The shadow's runtime call on compared copies (:data:`SHADOW_BUCKETS`)."""
    primary: LatencyHistogram = field(default_factory=LatencyHistogram)
    """The primary's runtime call on the same copies."""
    last_error: str | None = None

    def merge(self, other: ShadowTally) -> None:
        """Add ``other``'s counts to these (``last_error``: ``other``'s if it has one)."""
        for name in TALLY_COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, n in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
        self.shadow.merge(other.shadow)
        self.primary.merge(other.primary)
        self.last_error = other.last_error or self.last_error

    def copy(self) -> ShadowTally:
        """An independent copy (what a flush writes while counting goes on)."""
        built = ShadowTally()
        built.merge(self)
        return built


@dataclass(frozen=True, slots=True)
class ShadowExample:
    """One disagreement: the first item of a copy on which the two answers differed."""

    model: str
    version: str
    """The shadow version."""
    primary_version: str
    """The version that answered the caller."""
    request_id: str
    at: float
    """When it was compared, seconds since the epoch."""
    item: int
    """Index of the item in the request's inputs."""
    input: Any
    primary: Any
    """The primary's result for the item, as the caller got it."""
    shadow: Any
    """The shadow's result for the item."""
    replica: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "request_id": self.request_id,
            "at": self.at,
            "primary_version": self.primary_version,
            "item": self.item,
            "input": self.input,
            "primary": self.primary,
            "shadow": self.shadow,
            "replica": self.replica,
        }


#: (model, shadow version, period start)
TallyKey = tuple[str, str, int]


@dataclass(slots=True)
class StatsBatch:
    """What one flush writes: changed tallies (whole running counts) and new examples."""

    replica: str
    tallies: dict[TallyKey, ShadowTally]
    examples: list[ShadowExample]

    def __bool__(self) -> bool:
        return bool(self.tallies or self.examples)


class ShadowStats:
    """One process's counts, per model, shadow version and period, until a flush writes them.

    Args:
        replica: this process's name in the shared rows.
        examples: disagreement examples kept per shadow version between flushes.
    """

    def __init__(self, replica: str, examples: int) -> None:
        self.replica = replica
        self.examples = examples
        self._tallies: dict[TallyKey, ShadowTally] = {}
        self._dirty: set[TallyKey] = set()
        self._examples: dict[tuple[str, str], deque[ShadowExample]] = {}

    def tally(self, model: str, version: str, at: float) -> ShadowTally:
        """The running tally of ``model@version`` for the period of ``at``, marked changed (the
        caller is about to count in it)."""
        key = (model, version, period_of(at))
        found = self._tallies.get(key)
        if found is None:
            found = self._tallies[key] = ShadowTally()
        self._dirty.add(key)
        return found

    def example(self, example: ShadowExample) -> None:
        """Keep a disagreement example (the newest ``examples`` per shadow version)."""
        if self.examples <= 0:
            return
        key = (example.model, example.version)
        kept = self._examples.get(key)
        if kept is None:
            kept = self._examples[key] = deque(maxlen=self.examples)
        kept.append(example)

    def totals(self, model: str, version: str) -> ShadowTally:
        """Everything this process counted for ``model@version`` in the periods it still holds
        (the current one, and older ones not yet written)."""
        total = ShadowTally()
        for key in sorted(self._tallies):
            if key[:2] == (model, version):
                total.merge(self._tallies[key])
        return total

    def take(self) -> StatsBatch:
        """Copies of the tallies that changed since the last take, and the examples kept."""
        tallies = {key: self._tallies[key].copy() for key in sorted(self._dirty)}
        self._dirty.clear()
        examples = [e for kept in self._examples.values() for e in kept]
        self._examples.clear()
        return StatsBatch(self.replica, tallies, examples)

    def put_back(self, batch: StatsBatch) -> None:
        """A flush failed: its tallies are changed again and its examples kept again."""
        self._dirty.update(batch.tallies)
        for example in batch.examples:
            self.example(example)

    def settle(self, now: float) -> None:
        """Forget written tallies of periods that ended (nothing counts into them any more)."""
        current = period_of(now)
        for key in [k for k in self._tallies if k[2] < current and k not in self._dirty]:
            del self._tallies[key]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latencies of one side on the compared copies."""

    count: int
    mean_s: float | None
    p50_s: float | None
    p95_s: float | None

    @classmethod
    def of(cls, histogram: LatencyHistogram) -> LatencySummary:
        """Summarize a histogram."""
        return cls(
            histogram.count, histogram.mean(), histogram.quantile(0.5), histogram.quantile(0.95)
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, in milliseconds."""
        return {
            "count": self.count,
            "mean_ms": _ms(self.mean_s, 4),
            "p50_ms": _ms(self.p50_s, 4),
            "p95_ms": _ms(self.p95_s, 4),
        }


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


@dataclass(frozen=True, slots=True)
class ShadowReport:
    """How one shadow version did against the versions that answered, over every replica."""

    model: str
    version: str
    since: float
    """Periods starting before the period of this moment are left out."""
    totals: ShadowTally
    replicas: int
    """Processes that counted copies for this shadow."""
    examples: tuple[ShadowExample, ...] = ()
    """The newest disagreements first."""

    @property
    def agreement(self) -> float | None:
        """Share of compared items on which the shadow agreed; None before any comparison."""
        items = self.totals.items
        return self.totals.items_agreed / items if items else None

    @property
    def shadow_latency(self) -> LatencySummary:
        """The shadow's runtime calls."""
        return LatencySummary.of(self.totals.shadow)

    @property
    def primary_latency(self) -> LatencySummary:
        """The primary's runtime calls on the same copies."""
        return LatencySummary.of(self.totals.primary)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (latencies in milliseconds; ``difference`` is shadow minus primary)."""
        t = self.totals
        shadow, primary = self.shadow_latency, self.primary_latency
        return {
            "model": self.model,
            "version": self.version,
            "since": self.since,
            "agreement": None if self.agreement is None else round(self.agreement, 6),
            "requests": t.compared,
            "agreed": t.agreed,
            "items": t.items,
            "items_agreed": t.items_agreed,
            "errors": t.errors,
            "dropped": t.dropped,
            "skipped": sum(t.skipped.values()),
            "skipped_reasons": dict(sorted(t.skipped.items())),
            "latency": {
                "shadow": shadow.as_dict(),
                "primary": primary.as_dict(),
                "difference": {
                    "p50_ms": _ms(_difference(shadow.p50_s, primary.p50_s), 4),
                    "p95_ms": _ms(_difference(shadow.p95_s, primary.p95_s), 4),
                },
            },
            "replicas": self.replicas,
            "last_error": t.last_error,
            "examples": [e.as_dict() for e in self.examples],
        }
