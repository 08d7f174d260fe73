"""Usage and cost accounting per tenant, principal and model.

Every ended inference (answered, streamed or failed, on every protocol and in job workers)
is counted by a :class:`UsageLedger`, an observer on the data plane: requests, errors, input
and output tokens, compute seconds and cost, per tenant, principal, model, version, currency
and hour. The ledger only adds to a dictionary in memory; every ``usage.flush_interval_s``
(and when the process stops) the component adds what it counted to the ``mh_usage`` table in
one transaction, as an upsert that adds (``INSERT … ON CONFLICT DO UPDATE SET n = n +
excluded.n`` on SQLite and PostgreSQL), so any number of servers and workers count into the
same rows. A flush that fails keeps its amounts for the next one.

Replays (a request with ``replay_of`` or protocol ``replay``) are not live traffic and are not
counted. Cost is what the data plane put in the response's ``usage.cost`` (see
:class:`~modelhost.manifest.Pricing`); totals are kept per currency and never summed across.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import BigInteger, Float, Index, Integer, String, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelhost.components import PeriodicComponent
from modelhost.config import UsageSettings
from modelhost.inference import InferenceEvent, InferenceObserver
from modelhost.observability.metrics import UNKNOWN
from modelhost.registry.db import Base, add_missing_columns
from modelhost.security.keys import ANONYMOUS

log = logging.getLogger("modelhost.usage")

#: What usage can be grouped by, in column order.
DIMENSIONS = ("tenant", "principal", "model", "version")
#: Seconds in one row's period.
HOUR = 3600
_KEY_COLUMNS = ("hour", "tenant", "principal", "model", "version", "currency")


class UsageRow(Base):
    """What one principal of one tenant used of one model version in one hour."""

    __tablename__ = "mh_usage"
    __table_args__ = (Index("ix_mh_usage_tenant_hour", "tenant", "hour"),)

    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    """Start of the hour, seconds since the epoch (UTC)."""
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    principal: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(16), primary_key=True)
    """The version's pricing currency; empty for a version without pricing."""
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    compute_s: Mapped[float] = mapped_column(Float, default=0.0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    cache_hits: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Requests the response cache answered (no model call)."""
    cost_saved: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    """What cache hits and cascades did not cost, under the pricing of the model spared."""


@dataclass(slots=True)
class Totals:
    """Amounts that add up: one ledger entry, one stored row, or one group of a report."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    compute_s: float = 0.0
    cost: float = 0.0
    cache_hits: int = 0
    cost_saved: float = 0.0

    def add(self, other: Totals) -> None:
        """Add ``other``'s amounts to these."""
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.compute_s += other.compute_s
        self.cost += other.cost
        self.cache_hits += other.cache_hits
        self.cost_saved += other.cost_saved

    def as_dict(self) -> dict[str, Any]:
        """The amounts as the API shows them."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "compute_seconds": round(self.compute_s, 6),
            "cost": round(self.cost, 9),
            "cache_hits": self.cache_hits,
            "cost_saved": round(self.cost_saved, 9),
        }


_AMOUNTS = tuple(f.name for f in fields(Totals))
_FLOATS = frozenset({"compute_s", "cost", "cost_saved"})

#: (hour, tenant, principal, model, version, currency)
UsageKey = tuple[int, str, str, str, str, str]


def is_replay(event: InferenceEvent) -> bool:
    """True for an inference that replays an earlier one (not live traffic)."""
    return not event.request.live


class UsageLedger(InferenceObserver):
    """Counts ended inferences in memory until the next flush takes them."""

    def __init__(self) -> None:
        self._pending: dict[UsageKey, Totals] = {}

    def observe(self, event: InferenceEvent) -> None:
        """Add one inference to its tenant, principal, version and hour."""
        if is_replay(event):
            return
        who = event.request.principal or ANONYMOUS
        info, usage = event.info, event.usage
        model, version = (info.model, info.version) if info is not None else (UNKNOWN, UNKNOWN)
        currency = (usage.currency if usage is not None else None) or ""
        key = (
            int(event.started_at // HOUR) * HOUR,
            who.tenant[:128],
            who.subject[:128],
            model,
            version,
            currency,
        )
        totals = self._pending.get(key)
        if totals is None:
            totals = self._pending[key] = Totals()
        totals.requests += 1
        if event.error is not None:
            totals.errors += 1
            return
        if usage is not None:
            totals.input_tokens += usage.input_tokens
            totals.output_tokens += usage.output_tokens
            totals.cost += usage.cost or 0.0
            totals.cost_saved += usage.saved or 0.0
        if str(event.decisions.get("cache", "")).endswith(":hit"):
            totals.cache_hits += 1
        totals.compute_s += event.timings.get("inference", 0.0)

    def take(self) -> dict[UsageKey, Totals]:
        """Everything counted since the last take; the ledger starts again from zero."""
        taken, self._pending = self._pending, {}
        return taken

    def put_back(self, taken: dict[UsageKey, Totals]) -> None:
        """Return amounts a failed flush could not store, for the next flush."""
        for key, totals in taken.items():
            found = self._pending.get(key)
            if found is None:
                self._pending[key] = totals
            else:
                found.add(totals)


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """What a usage report covers and how it is grouped."""

    since: float
    """Seconds since the epoch; hours starting before the hour of ``since`` are left out."""
    until: float
    """Seconds since the epoch; hours starting at or after it are left out."""
    group_by: tuple[str, ...] = ("model",)
    """Some of :data:`DIMENSIONS`; ``version`` brings ``model`` with it."""
    tenant: str | None = None
    """Only this tenant (None: every tenant)."""
    principal: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """One line of a report: the values of the grouped dimensions, a currency, the sums."""

    keys: dict[str, str]
    currency: str | None
    totals: Totals


def columns_of(group_by: Sequence[str]) -> tuple[str, ...]:
    """The dimensions a report groups by, in :data:`DIMENSIONS` order (``version`` with its
    ``model``)."""
    wanted = set(group_by)
    if "version" in wanted:
        wanted.add("model")
    return tuple(d for d in DIMENSIONS if d in wanted)


class UsageStore:
    """The ``mh_usage`` table: upserts that add, and reports that sum."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        Base.metadata.create_all(engine, tables=[Base.metadata.tables[UsageRow.__tablename__]])
        add_missing_columns(engine, UsageRow.__tablename__)

    def add(self, amounts: dict[UsageKey, Totals]) -> None:
        """Add ``amounts`` to their rows (created at zero when missing), in one transaction.

        Rows are written in key order, so two processes flushing at once lock them in the
        same order and never deadlock.
        """
        rows = [
            {**dict(zip(_KEY_COLUMNS, key, strict=True)), **_amounts(totals)}
            for key, totals in sorted(amounts.items())
        ]
        if not rows:
            return
        with Session(self.engine) as session, session.begin():
            dialect = self.engine.dialect.name
            if dialect in ("sqlite", "postgresql"):
                session.execute(_upsert(dialect), rows)
            else:
                for row in rows:
                    _add_generic(session, row)

    def query(self, query: UsageQuery) -> list[UsageGroup]:
        """Sums per group and currency, largest cost first."""
        dims = columns_of(query.group_by)
        group = [getattr(UsageRow, d) for d in dims] + [UsageRow.currency]
        statement = select(*group, *(func.sum(getattr(UsageRow, a)) for a in _AMOUNTS)).where(
            UsageRow.hour >= int(query.since // HOUR) * HOUR, UsageRow.hour < query.until
        )
        for name in ("tenant", "principal", "model"):
            value = getattr(query, name)
            if value is not None:
                statement = statement.where(getattr(UsageRow, name) == value)
        statement = statement.group_by(*group).order_by(*group)
        with Session(self.engine) as session:
            found = session.execute(statement).all()
        groups = []
        for row in found:
            values = list(row)
            keys = {d: str(values[i]) for i, d in enumerate(dims)}
            amounts: dict[str, Any] = {}
            for name, value in zip(_AMOUNTS, values[len(dims) + 1 :], strict=True):
                amounts[name] = float(value or 0) if name in _FLOATS else int(value or 0)
            groups.append(UsageGroup(keys, values[len(dims)] or None, Totals(**amounts)))
        groups.sort(key=lambda g: -g.totals.cost)
        return groups


def _amounts(totals: Totals) -> dict[str, Any]:
    return {name: getattr(totals, name) for name in _AMOUNTS}


def _upsert(dialect: str) -> Any:
    table = Base.metadata.tables[UsageRow.__tablename__]
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    return statement.on_conflict_do_update(
        index_elements=list(_KEY_COLUMNS),
        set_={name: table.c[name] + statement.excluded[name] for name in _AMOUNTS},
    )


def _add_generic(session: Session, row: dict[str, Any]) -> None:
    """Update-then-insert, for databases without ``ON CONFLICT``."""
    match = [getattr(UsageRow, c) == row[c] for c in _KEY_COLUMNS]
    changes = {name: getattr(UsageRow, name) + row[name] for name in _AMOUNTS}
    result = session.execute(update(UsageRow).where(*match).values(changes))
    if not getattr(result, "rowcount", 0):
        session.add(UsageRow(**row))
        session.flush()


class UsageComponent(PeriodicComponent):
    """The ledger on the data plane, its periodic flush, and the reports of ``GET /v1/usage``.

    Args:
        store: the ``mh_usage`` table.
        interval: seconds between flushes.
    """

    def __init__(self, store: UsageStore, interval: float) -> None:
        super().__init__(interval)
        self.store = store
        self.ledger = UsageLedger()
        self._lock = asyncio.Lock()

    def observers(self) -> list[InferenceObserver]:
        """The ledger."""
        return [self.ledger]

    async def stop(self) -> None:
        """Stop the periodic flush and flush what is left."""
        await super().stop()
        await self.flush()

    async def tick(self) -> None:
        """Flush (on failure the amounts stay in the ledger for the next tick)."""
        await self.flush()

    async def flush(self) -> int:
        """Add what the ledger counted to the table; returns the rows written. On failure the
        amounts go back to the ledger and the error is raised."""
        async with self._lock:
            taken = self.ledger.take()
            if not taken:
                return 0
            try:
                await asyncio.to_thread(self.store.add, taken)
            except BaseException:
                self.ledger.put_back(taken)
                raise
            return len(taken)

    async def report(self, query: UsageQuery) -> list[UsageGroup]:
        """Flush this process's counts, then sum the table (other processes' last few
        seconds, up to their flush interval, may not be there yet)."""
        await self.flush()
        return await asyncio.to_thread(self.store.query, query)


def build_usage(settings: UsageSettings, engine: Engine) -> UsageComponent | None:
    """The usage component of a server or worker process, counting into ``engine``'s
    database; None when usage accounting is switched off."""
    if not settings.enabled:
        return None
    return UsageComponent(UsageStore(engine), settings.flush_interval_s)
