"""Shadow statistics shared by every replica: what each shadow version agreed on, how fast.

Each process counts in memory (:class:`ShadowStats`) per model, shadow version and minute
(:data:`PERIOD_S`): copies compared and agreed, items compared and agreed, errors, dropped
and skipped copies (by reason), and latency histograms of the shadow's runtime call and of
the primary's on the same copies. Every ``rollouts.stats_flush_s`` the
:class:`~modelhost.serving.shadow.ShadowRunner` writes the minutes that changed to
``mh_shadow_stats``: one row per (model, version, replica, minute), written only by its
replica and always with the whole running count, so a flush is an idempotent overwrite
(``INSERT … ON CONFLICT DO UPDATE SET col = excluded.col``): a failed flush simply writes
again next time, and replicas never contend for a row. Disagreement examples go to
``mh_shadow_examples`` (the newest ``rollouts.shadow_examples`` per shadow are kept).

:meth:`ShadowStore.report` sums the rows of every replica since a moment: agreement rate,
counts and p50/p95 of shadow and primary latency, merged from the histograms (log buckets,
about 4.5 % wide, so percentiles are exact to that).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import JSON, BigInteger, Float, Index, Integer, String, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelhost.registry.db import Base

#: Seconds in one row's period (the granularity of a report's ``since``).
PERIOD_S = 60
#: Histogram buckets per doubling of latency (each bucket is ~9 % wide, ±4.5 % around its
#: middle).
BUCKETS_PER_OCTAVE = 8
#: Latency of bucket 0's lower edge, seconds; anything faster lands in bucket 0.
FLOOR_S = 1e-6
#: Highest bucket (~1e-6 * 2**32 s, over an hour); anything slower lands here.
TOP_BUCKET = 32 * BUCKETS_PER_OCTAVE
#: Largest JSON text of one stored example field; longer values are cut (and marked so).
EXAMPLE_BYTES = 4096


class LatencyHistogram:
    """Counts of latencies in logarithmic buckets; histograms of several replicas merge by
    adding counts, so percentiles over every replica need no raw samples."""

    __slots__ = ("buckets", "count", "total_s")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total_s = 0.0

    def add(self, seconds: float) -> None:
        """Count one latency."""
        index = 0
        if seconds > FLOOR_S:
            index = min(TOP_BUCKET, int(math.log2(seconds / FLOOR_S) * BUCKETS_PER_OCTAVE))
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total_s += seconds

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s counts to these."""
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += other.count
        self.total_s += other.total_s

    def quantile(self, q: float) -> float | None:
        """The latency below which a share ``q`` of the counted ones fall (the geometric
        middle of its bucket); None when nothing was counted."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return FLOOR_S * 2 ** ((index + 0.5) / BUCKETS_PER_OCTAVE)
        return None  # pragma: no cover - the counts add up to ``count``

    def mean(self) -> float | None:
        """The mean latency; None when nothing was counted."""
        return self.total_s / self.count if self.count else None

    def to_json(self) -> dict[str, int]:
        """The buckets as a JSON object (keys are bucket numbers)."""
        return {str(index): n for index, n in sorted(self.buckets.items())}

    @classmethod
    def from_json(cls, buckets: dict[str, int] | None, total_s: float) -> LatencyHistogram:
        """A histogram read back from a row."""
        built = cls()
        for key, n in (buckets or {}).items():
            built.buckets[int(key)] = int(n)
        built.count = sum(built.buckets.values())
        built.total_s = float(total_s or 0.0)
        return built

    def copy(self) -> LatencyHistogram:
        """An independent copy."""
        built = LatencyHistogram()
        built.merge(self)
        return built


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
    """The shadow's runtime call on compared copies."""
    primary: LatencyHistogram = field(default_factory=LatencyHistogram)
    """The primary's runtime call on the same copies."""
    last_error: str | None = None

    def merge(self, other: ShadowTally) -> None:
        """Add ``other``'s counts to these (``last_error``: ``other``'s if it has one)."""
        self.compared += other.compared
        self.agreed += other.agreed
        self.items += other.items
        self.items_agreed += other.items_agreed
        self.errors += other.errors
        self.dropped += other.dropped
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


def period_of(at: float) -> int:
    """Start of the period holding ``at``."""
    return int(at // PERIOD_S) * PERIOD_S


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


class ShadowStatsRow(Base):
    """What one replica counted for one shadow version in one period (whole counts)."""

    __tablename__ = "mh_shadow_stats"
    __table_args__ = (Index("ix_mh_shadow_stats_model_period", "model", "period"),)

    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    replica: Mapped[str] = mapped_column(String(96), primary_key=True)
    period: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    """Start of the period, seconds since the epoch (UTC)."""
    compared: Mapped[int] = mapped_column(BigInteger, default=0)
    agreed: Mapped[int] = mapped_column(BigInteger, default=0)
    items: Mapped[int] = mapped_column(BigInteger, default=0)
    items_agreed: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    """Skipped copies by reason."""
    shadow_s: Mapped[float] = mapped_column(Float, default=0.0)
    """Sum of the shadow's latencies in ``shadow_latency``."""
    shadow_latency: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    """Histogram buckets (see :class:`LatencyHistogram`)."""
    primary_s: Mapped[float] = mapped_column(Float, default=0.0)
    primary_latency: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)


class ShadowExampleRow(Base):
    """One disagreement of a shadow version with the primary."""

    __tablename__ = "mh_shadow_examples"
    __table_args__ = (Index("ix_mh_shadow_examples_model_version_at", "model", "version", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    primary_version: Mapped[str] = mapped_column(String(64))
    replica: Mapped[str] = mapped_column(String(96))
    request_id: Mapped[str] = mapped_column(String(128))
    at: Mapped[float] = mapped_column(Float)
    item: Mapped[int] = mapped_column(Integer)
    input: Mapped[Any] = mapped_column(JSON)
    primary: Mapped[Any] = mapped_column(JSON)
    shadow: Mapped[Any] = mapped_column(JSON)


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
            "mean_ms": _ms(self.mean_s),
            "p50_ms": _ms(self.p50_s),
            "p95_ms": _ms(self.p95_s),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 4)


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
                    "p50_ms": _ms(_difference(shadow.p50_s, primary.p50_s)),
                    "p95_ms": _ms(_difference(shadow.p95_s, primary.p95_s)),
                },
            },
            "replicas": self.replicas,
            "last_error": t.last_error,
            "examples": [e.as_dict() for e in self.examples],
        }


def bounded(value: Any) -> Any:
    """``value`` as plain JSON, or, when its JSON is longer than :data:`EXAMPLE_BYTES`, the
    start of that JSON text marked as cut (an example must not store a whole upload)."""
    text = orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
    if len(text) <= EXAMPLE_BYTES:
        return orjson.loads(text)
    return {
        "truncated": True,
        "bytes": len(text),
        "json": text[:EXAMPLE_BYTES].decode(errors="ignore"),
    }


def _row(replica: str, key: TallyKey, tally: ShadowTally, now: float) -> dict[str, Any]:
    model, version, period = key
    return {
        "model": model,
        "version": version,
        "replica": replica,
        "period": period,
        "compared": tally.compared,
        "agreed": tally.agreed,
        "items": tally.items,
        "items_agreed": tally.items_agreed,
        "errors": tally.errors,
        "dropped": tally.dropped,
        "skipped": dict(tally.skipped),
        "shadow_s": tally.shadow.total_s,
        "shadow_latency": tally.shadow.to_json(),
        "primary_s": tally.primary.total_s,
        "primary_latency": tally.primary.to_json(),
        "last_error": tally.last_error[:500] if tally.last_error else None,
        "updated_at": now,
    }


def _tally(row: ShadowStatsRow) -> ShadowTally:
    return ShadowTally(
        compared=row.compared,
        agreed=row.agreed,
        items=row.items,
        items_agreed=row.items_agreed,
        errors=row.errors,
        dropped=row.dropped,
        skipped={str(k): int(v) for k, v in (row.skipped or {}).items()},
        shadow=LatencyHistogram.from_json(row.shadow_latency, row.shadow_s),
        primary=LatencyHistogram.from_json(row.primary_latency, row.primary_s),
        last_error=row.last_error,
    )


_KEYS = ("model", "version", "replica", "period")


def _overwrite(dialect: str) -> Any:
    """``INSERT … ON CONFLICT (key) DO UPDATE SET every column = excluded``."""
    table = Base.metadata.tables[ShadowStatsRow.__tablename__]
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    return statement.on_conflict_do_update(
        index_elements=list(_KEYS),
        set_={c.name: statement.excluded[c.name] for c in table.columns if c.name not in _KEYS},
    )


class ShadowStore:
    """The ``mh_shadow_stats`` and ``mh_shadow_examples`` tables."""

    def __init__(self, engine: Engine, *, examples: int = 20) -> None:
        self.engine = engine
        self.examples = examples
        """Disagreement examples kept per shadow version (older ones are deleted)."""
        tables = Base.metadata.tables
        Base.metadata.create_all(
            engine,
            tables=[
                tables[ShadowStatsRow.__tablename__],
                tables[ShadowExampleRow.__tablename__],
            ],
        )

    def write(self, batch: StatsBatch, now: float) -> None:
        """Store a flush in one transaction: tallies overwrite their rows (in key order, so
        two writers never deadlock), examples are added and the oldest beyond the kept
        number deleted."""
        rows = [_row(batch.replica, key, t, now) for key, t in sorted(batch.tallies.items())]
        with Session(self.engine) as session, session.begin():
            dialect = self.engine.dialect.name
            if rows and dialect in ("sqlite", "postgresql"):
                session.execute(_overwrite(dialect), rows)
            else:
                for row in rows:
                    session.merge(ShadowStatsRow(**row))
            for example in batch.examples:
                session.add(_example_row(example))
            session.flush()
            for model, version in sorted({(e.model, e.version) for e in batch.examples}):
                self._trim(session, model, version)

    def _trim(self, session: Session, model: str, version: str) -> None:
        old = session.scalars(
            select(ShadowExampleRow.id)
            .where(ShadowExampleRow.model == model, ShadowExampleRow.version == version)
            .order_by(ShadowExampleRow.at.desc(), ShadowExampleRow.id.desc())
            .offset(self.examples)
        ).all()
        if old:
            session.execute(delete(ShadowExampleRow).where(ShadowExampleRow.id.in_(old)))

    def report(self, model: str, since: float) -> list[ShadowReport]:
        """Every shadow version of ``model`` with rows since ``since``, summed over replicas,
        by version; with its newest examples since then."""
        with Session(self.engine) as session:
            found = session.scalars(
                select(ShadowStatsRow).where(
                    ShadowStatsRow.model == model, ShadowStatsRow.period >= period_of(since)
                )
            ).all()
            totals: dict[str, ShadowTally] = {}
            replicas: dict[str, set[str]] = {}
            for row in sorted(found, key=lambda r: r.updated_at):
                totals.setdefault(row.version, ShadowTally()).merge(_tally(row))
                replicas.setdefault(row.version, set()).add(row.replica)
            return [
                ShadowReport(
                    model,
                    version,
                    since,
                    totals[version],
                    len(replicas[version]),
                    self._examples(session, model, version, since),
                )
                for version in sorted(totals)
            ]

    def _examples(
        self, session: Session, model: str, version: str, since: float
    ) -> tuple[ShadowExample, ...]:
        rows = session.scalars(
            select(ShadowExampleRow)
            .where(
                ShadowExampleRow.model == model,
                ShadowExampleRow.version == version,
                ShadowExampleRow.at >= since,
            )
            .order_by(ShadowExampleRow.at.desc(), ShadowExampleRow.id.desc())
            .limit(self.examples)
        ).all()
        return tuple(
            ShadowExample(
                model=r.model,
                version=r.version,
                primary_version=r.primary_version,
                request_id=r.request_id,
                at=r.at,
                item=r.item,
                input=r.input,
                primary=r.primary,
                shadow=r.shadow,
                replica=r.replica,
            )
            for r in rows
        )

    def purge(self, before: float) -> int:
        """Delete rows of periods that ended before ``before`` and older examples; returns
        the rows deleted."""
        with Session(self.engine) as session, session.begin():
            stats = session.execute(
                delete(ShadowStatsRow).where(ShadowStatsRow.period < period_of(before))
            )
            examples = session.execute(delete(ShadowExampleRow).where(ShadowExampleRow.at < before))
        return _count(stats) + _count(examples)


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _example_row(example: ShadowExample) -> ShadowExampleRow:
    return ShadowExampleRow(
        model=example.model,
        version=example.version,
        primary_version=example.primary_version,
        replica=example.replica[:96],
        request_id=example.request_id[:128],
        at=example.at,
        item=example.item,
        input=bounded(example.input),
        primary=bounded(example.primary),
        shadow=bounded(example.shadow),
    )
