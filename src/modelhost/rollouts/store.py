"""The statistics every replica shares: the tables the control plane's counts are written to.

A canary is judged, and a shadow reported on, from the traffic *all* ``modelhost serve``
replicas (and job workers) gave it, not from one process's share. So each process counts in
memory (:mod:`modelhost.rollouts.stats`) and, every ``rollouts.stats_flush_s``, writes what it
counted to tables of the one database, tagged with its replica name; readers sum the rows of
every replica. Rows older than ``rollouts.stats_retention_s`` are purged.

* ``mh_rollout_stats`` (:class:`RolloutStatsStore`, written by :class:`RolloutStats`): each
  flush *adds* one row per version with what the replica counted since its last flush;
  :meth:`RolloutStatsStore.window` sums the rows flushed since a moment, so a window is exact
  to one flush interval.
* ``mh_shadow_stats`` (:class:`ShadowStore`, written by
  :class:`~modelhost.rollouts.shadow.ShadowRunner`): one row per (model, version, replica,
  minute), written only by its replica and always with the whole running count, so a flush is
  an idempotent overwrite (``INSERT … ON CONFLICT DO UPDATE SET col = excluded.col``): a
  failed flush simply writes again next time, and replicas never contend for a row.
  Disagreement examples go to ``mh_shadow_examples`` (the newest ``rollouts.shadow_examples``
  per shadow are kept). :meth:`ShadowStore.report` sums the rows since a moment.

Latency columns hold histogram buckets as JSON objects (bucket number to count), over the
bucket edges of :data:`~modelhost.rollouts.stats.ROLLOUT_BUCKETS` and
:data:`~modelhost.rollouts.stats.SHADOW_BUCKETS`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import fields
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import JSON, BigInteger, Float, Index, Integer, String, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelhost.registry.db import Base
from modelhost.rollouts.stats import (
    ROLLOUT_BUCKETS,
    SHADOW_BUCKETS,
    TALLY_COUNTS,
    Counts,
    LatencyHistogram,
    ShadowExample,
    ShadowReport,
    ShadowTally,
    StatsBatch,
    StatsLedger,
    TallyKey,
    VersionKey,
    WindowStats,
    default_replica,
    period_of,
)

#: Seconds between purges of rows past their retention.
PURGE_EVERY_S = 60.0
#: Largest JSON text of one stored example field; longer values are cut (and marked so).
EXAMPLE_BYTES = 4096


def _create(engine: Engine, tables: list[Table]) -> None:
    try:
        Base.metadata.create_all(engine, tables=tables)
    except SQLAlchemyError:  # another process created them at the same moment
        Base.metadata.create_all(engine, tables=tables)


def _deleted(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _epoch(moment: datetime | float) -> float:
    return moment.timestamp() if isinstance(moment, datetime) else float(moment)


# -- canaries ---------------------------------------------------------------------------------


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


_ROLLOUT_TABLE = Base.metadata.tables[RolloutStatsRow.__tablename__]


class RolloutStatsStore:
    """The ``mh_rollout_stats`` table: rows every replica adds, windows that sum them.

    Its methods block on the database: call them from a thread on an event loop.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        _create(engine, [_ROLLOUT_TABLE])

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
                "latency": c.latency.to_json(),
            }
            for (model, version), c in sorted(counts.items())
            if c.requests
        ]
        if rows:
            with Session(self.engine) as session, session.begin():
                session.execute(_ROLLOUT_TABLE.insert(), rows)
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
                total.latency.merge(LatencyHistogram.from_json(latency, 0.0, ROLLOUT_BUCKETS))
        return total

    def window(self, model: str, version: str, since: datetime | float) -> WindowStats:
        """``model@version``'s traffic from every replica since ``since``: requests, errors,
        error rate, p50 and p95 latency."""
        return WindowStats.of(self.counts(model, version, since))

    def purge(self, before: datetime | float) -> int:
        """Delete rows flushed before ``before``; returns how many."""
        with Session(self.engine) as session, session.begin():
            return _deleted(
                session.execute(delete(RolloutStatsRow).where(RolloutStatsRow.at < _epoch(before)))
            )


class RolloutStats:
    """This process's part of the shared statistics: its ledger, its flushes and purges.

    Args:
        store: the shared table.
        retention_s: seconds rows are kept.
        replica: this process's name in the rows (default:
            :func:`~modelhost.rollouts.stats.default_replica`).
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
            if now - self._purged >= min(PURGE_EVERY_S, self.retention_s):
                self._purged = now
                await asyncio.to_thread(self.store.purge, now - self.retention_s)
            return written

    async def window(self, model: str, version: str, since: datetime | float) -> WindowStats:
        """Every replica's traffic of ``model@version`` since ``since`` (this process's
        unflushed counts are not in it: flush first)."""
        return await asyncio.to_thread(self.store.window, model, version, since)


# -- shadows ----------------------------------------------------------------------------------


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
    """Histogram buckets (:data:`~modelhost.rollouts.stats.SHADOW_BUCKETS`)."""
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
        **{name: getattr(tally, name) for name in TALLY_COUNTS},
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
        **{name: getattr(row, name) for name in TALLY_COUNTS},
        skipped={str(k): int(v) for k, v in (row.skipped or {}).items()},
        shadow=LatencyHistogram.from_json(row.shadow_latency, row.shadow_s, SHADOW_BUCKETS),
        primary=LatencyHistogram.from_json(row.primary_latency, row.primary_s, SHADOW_BUCKETS),
        last_error=row.last_error,
    )


_KEYS = ("model", "version", "replica", "period")
#: What an example row holds: the fields of :class:`~modelhost.rollouts.stats.ShadowExample`.
_EXAMPLE = tuple(f.name for f in fields(ShadowExample))


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
        _create(
            engine,
            [tables[ShadowStatsRow.__tablename__], tables[ShadowExampleRow.__tablename__]],
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
        return tuple(ShadowExample(**{name: getattr(r, name) for name in _EXAMPLE}) for r in rows)

    def purge(self, before: float) -> int:
        """Delete rows of periods that ended before ``before`` and older examples; returns
        the rows deleted."""
        with Session(self.engine) as session, session.begin():
            stats = session.execute(
                delete(ShadowStatsRow).where(ShadowStatsRow.period < period_of(before))
            )
            examples = session.execute(delete(ShadowExampleRow).where(ShadowExampleRow.at < before))
        return _deleted(stats) + _deleted(examples)


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
