"""Live statistics of every model version, shared by every replica: what the canary guards read.

A canary is judged on the traffic *all* ``modelhost serve`` replicas (and job workers) gave
it, not on one process's share. So each process counts, per model version, in memory:

* **requests**: answered live inferences plus server-side failures;
* **errors**: server-side failures (:class:`~modelhost.errors.ServiceError`,
  :class:`~modelhost.errors.RuntimeFailure`, timeouts, any other exception). A caller's
  :class:`~modelhost.errors.RequestError` (invalid input, over a limit) is not the version's
  fault, so it is not counted at all: it would only dilute the error rate;
* **latency** of the answered ones, in a histogram of log-spaced buckets
  (:data:`RATIO` apart, so a p95 read from it is within 1% of the exact one).

:class:`StatsLedger` is that counter, an observer on the data plane (replays are not live
traffic and are skipped). Every ``rollouts.stats_flush_s`` :class:`RolloutStats` adds what it
counted as one row per version to the ``mh_rollout_stats`` table, tagged with the process's
replica id and the flush time; :meth:`RolloutStatsStore.window` sums the rows of every
replica flushed since a moment. A window is therefore exact to one flush interval. Rows older
than ``rollouts.stats_retention_s`` are purged.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, String, delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelhost.errors import RequestError
from modelhost.monitoring.usage import is_replay
from modelhost.registry.db import Base
from modelhost.serving.observers import InferenceEvent, InferenceObserver

#: Upper bound of the first latency bucket, in seconds (faster answers all land in it).
MIN_LATENCY_S = 1e-4
#: Ratio between the bounds of consecutive latency buckets.
RATIO = 1.02
#: Buckets of the latency histogram: 0.1 ms to about ten minutes.
BUCKETS = 800
#: Standard deviations either side of a quantile's rank in its confidence interval (95%).
CONFIDENCE_Z = 1.96
_LOG_RATIO = math.log(RATIO)
#: Seconds between purges of rows past their retention.
_PURGE_EVERY_S = 60.0

#: (model, version)
VersionKey = tuple[str, str]


def bucket_of(seconds: float) -> int:
    """The latency bucket ``seconds`` falls in."""
    if seconds <= MIN_LATENCY_S:
        return 0
    return min(BUCKETS - 1, 1 + int(math.log(seconds / MIN_LATENCY_S) / _LOG_RATIO))


def bucket_value(index: int) -> float:
    """The latency a bucket stands for: the geometric middle of its bounds, in seconds."""
    if index <= 0:
        return MIN_LATENCY_S
    return MIN_LATENCY_S * math.pow(RATIO, index - 0.5)


def _at_ranks(histogram: dict[int, int], ranks: list[int]) -> list[float]:
    """The latencies at 1-based ``ranks`` (ascending) of the sorted latencies, one walk."""
    found: list[float] = []
    seen = 0
    wanted = iter(ranks)
    rank = next(wanted, None)
    for index in sorted(histogram):
        seen += histogram[index]
        while rank is not None and seen >= rank:
            found.append(bucket_value(index))
            rank = next(wanted, None)
    return found


def quantile(histogram: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of the latencies counted in ``histogram``, in seconds;
    None when it is empty."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    return _at_ranks(histogram, [max(1, math.ceil(q * total))])[0]


def quantile_bounds(
    histogram: dict[int, int], q: float, z: float = CONFIDENCE_Z
) -> tuple[float, float] | None:
    """A confidence interval of the ``q`` quantile that holds whatever the distribution:
    the order statistics ``z`` binomial standard deviations either side of its rank. With
    few samples it is wide (the p95 of 20 requests is little more than their slowest), and it
    narrows as samples grow; None when ``histogram`` is empty."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    spread = z * math.sqrt(total * q * (1 - q))
    low = min(total, max(1, math.floor(total * q - spread)))
    high = min(total, max(1, math.ceil(total * q + spread)))
    first, second = _at_ranks(histogram, [low, high])
    return first, second


@dataclass(slots=True)
class Counts:
    """What one version did in one period: amounts that add up."""

    requests: int = 0
    errors: int = 0
    latency: dict[int, int] = field(default_factory=dict)
    """Answered requests per latency bucket (:func:`bucket_of`)."""

    def add(self, other: Counts) -> None:
        """Add ``other``'s amounts to these."""
        self.requests += other.requests
        self.errors += other.errors
        for index, n in other.latency.items():
            self.latency[index] = self.latency.get(index, 0) + n

    def answered(self, seconds: float) -> None:
        """Count one answered request that took ``seconds``."""
        self.requests += 1
        index = bucket_of(seconds)
        self.latency[index] = self.latency.get(index, 0) + 1

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
    """Lower bound of the p95's 95% confidence interval (:func:`quantile_bounds`)."""
    p95_high: float | None = None
    """Upper bound of the p95's 95% confidence interval."""

    @property
    def error_rate(self) -> float:
        """Server-side failures per request (0 without requests)."""
        return self.errors / self.requests if self.requests else 0.0

    @classmethod
    def of(cls, counts: Counts) -> WindowStats:
        """Summarise summed counts."""
        bounds = quantile_bounds(counts.latency, 0.95)
        return cls(
            requests=counts.requests,
            errors=counts.errors,
            answered=sum(counts.latency.values()),
            p50=quantile(counts.latency, 0.50),
            p95=quantile(counts.latency, 0.95),
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


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


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


class RolloutStatsRow(Base):
    """What one replica counted for one version between two of its flushes."""

    __tablename__ = "mh_rollout_stats"
    __table_args__ = (
        Index("ix_mh_rollout_stats_version_at", "model", "version", "at"),
        Index("ix_mh_rollout_stats_at", "at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    replica: Mapped[str] = mapped_column(String(128))
    at: Mapped[float] = mapped_column(Float)
    """When the replica flushed, seconds since the epoch."""
    requests: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    latency: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    """Answered requests per latency bucket (bucket index as a string: JSON keys)."""


_TABLE = Base.metadata.tables[RolloutStatsRow.__tablename__]


def _epoch(moment: datetime | float) -> float:
    return moment.timestamp() if isinstance(moment, datetime) else float(moment)


class RolloutStatsStore:
    """The ``mh_rollout_stats`` table: rows every replica adds, windows that sum them.

    Its methods block on the database: call them from a thread on an event loop.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            Base.metadata.create_all(engine, tables=[_TABLE])
        except SQLAlchemyError:  # another process created it at the same moment
            Base.metadata.create_all(engine, tables=[_TABLE])

    def add(self, replica: str, at: float, counts: dict[VersionKey, Counts]) -> int:
        """Store one row per version of ``counts``, flushed by ``replica`` at ``at`` (seconds
        since the epoch). Returns the rows written."""
        rows = [
            {
                "model": model,
                "version": version,
                "replica": replica[:128],
                "at": at,
                "requests": c.requests,
                "errors": c.errors,
                "latency": {str(i): n for i, n in sorted(c.latency.items())},
            }
            for (model, version), c in sorted(counts.items())
            if c.requests
        ]
        if rows:
            with Session(self.engine) as session, session.begin():
                session.execute(_TABLE.insert(), rows)
        return len(rows)

    def counts(self, model: str, version: str, since: datetime | float) -> Counts:
        """Every replica's counts for ``model@version`` flushed at or after ``since``."""
        statement = select(
            RolloutStatsRow.requests, RolloutStatsRow.errors, RolloutStatsRow.latency
        ).where(
            RolloutStatsRow.model == model,
            RolloutStatsRow.version == version,
            RolloutStatsRow.at >= _epoch(since),
        )
        total = Counts()
        with Session(self.engine) as session:
            for requests, errors, latency in session.execute(statement):
                total.requests += int(requests or 0)
                total.errors += int(errors or 0)
                for index, n in (latency or {}).items():
                    key = int(index)
                    total.latency[key] = total.latency.get(key, 0) + int(n)
        return total

    def window(self, model: str, version: str, since: datetime | float) -> WindowStats:
        """``model@version``'s traffic from every replica since ``since``: requests, errors,
        error rate, p50 and p95 latency."""
        return WindowStats.of(self.counts(model, version, since))

    def purge(self, before: datetime | float) -> int:
        """Delete rows flushed before ``before``; returns how many."""
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                delete(RolloutStatsRow).where(RolloutStatsRow.at < _epoch(before))
            )
            return int(getattr(result, "rowcount", 0) or 0)


def default_replica() -> str:
    """A name for this process that no other replica has: host, pid and a random part."""
    return f"{socket.gethostname()[:64]}-{os.getpid()}-{secrets.token_hex(4)}"


class RolloutStats:
    """This process's part of the shared statistics: its ledger, its flushes and purges.

    Args:
        store: the shared table.
        retention_s: seconds rows are kept.
        replica: this process's name in the rows (default: :func:`default_replica`).
        clock: seconds since the epoch.
    """

    def __init__(
        self,
        store: RolloutStatsStore,
        *,
        retention_s: float = 24 * 3600.0,
        replica: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ledger = StatsLedger()
        self.retention_s = retention_s
        self.replica = replica or default_replica()
        self.clock = clock
        self._lock = asyncio.Lock()
        self._purged = 0.0

    async def flush(self) -> int:
        """Add what the ledger counted to the table (and purge old rows now and then);
        returns the rows written. On failure the counts go back to the ledger and the error
        is raised."""
        async with self._lock:
            now = self.clock()
            taken = self.ledger.take()
            try:
                written = await asyncio.to_thread(self.store.add, self.replica, now, taken)
            except BaseException:
                self.ledger.put_back(taken)
                raise
            if now - self._purged >= min(_PURGE_EVERY_S, self.retention_s):
                self._purged = now
                await asyncio.to_thread(self.store.purge, now - self.retention_s)
            return written

    async def window(self, model: str, version: str, since: datetime | float) -> WindowStats:
        """Every replica's traffic of ``model@version`` since ``since`` (this process's
        unflushed counts are not in it: flush first)."""
        return await asyncio.to_thread(self.store.window, model, version, since)
