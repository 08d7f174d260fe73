"""The ``mh_provenance`` table in the registry's database (SQLite or PostgreSQL).

Rows are written in batches (one INSERT of many rows) by the recorder's writer thread, read by
the API with filters, and purged once older than the retention. Record ids sort by start time
(:func:`~modelhost.provenance.capture.record_id`), so newest-first pages and time windows are
ranges of the primary key and of the ``(tenant, id)`` and ``(model, id)`` indexes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from itertools import chain
from typing import Any, Literal, cast

from sqlalchemy import (
    JSON,
    Float,
    Index,
    Integer,
    Select,
    SmallInteger,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from modelhost.errors import ConfigError
from modelhost.provenance.capture import COLUMNS, Payload, id_floor, request_bucket
from modelhost.registry.db import Base


class EncodedJson(TypeDecorator[Any]):
    """A JSON column written from text the recorder encoded already (with orjson, in its
    writer thread), so the insert does not encode every value again; read back as JSON."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        """None: values arrive as JSON text and go to the driver unchanged."""
        return None


class ProvenanceRow(Base):
    """One inference: who, what, which version, what went in and out, how long, what it cost."""

    __tablename__ = "mh_provenance"
    __table_args__ = (
        Index("ix_mh_provenance_request", "request_bucket", "id", "request_id"),
        Index("ix_mh_provenance_tenant", "tenant", "id"),
        Index("ix_mh_provenance_model", "model", "id"),
        # errors only (partial indexes): "what failed lately" without scanning the answers
        *(
            Index(
                f"ix_mh_provenance_errors{suffix}",
                *columns,
                "id",
                sqlite_where=text("status = 'error'"),
                postgresql_where=text("status = 'error'"),
            )
            for suffix, columns in (("", ()), ("_tenant", ("tenant",)), ("_model", ("model",)))
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128))
    request_bucket: Mapped[int] = mapped_column(SmallInteger)
    """:func:`~modelhost.provenance.capture.request_bucket` of the request id."""
    started_at: Mapped[float] = mapped_column(Float)
    duration_ms: Mapped[float] = mapped_column(Float)
    tenant: Mapped[str] = mapped_column(String(128))
    principal: Mapped[str] = mapped_column(String(260))
    subject: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    protocol: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    runtime: Mapped[str | None] = mapped_column(String(32), nullable=True)
    manifest_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pipeline_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(8))
    error: Mapped[dict[str, Any] | None] = mapped_column(EncodedJson, nullable=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(EncodedJson)
    items: Mapped[int] = mapped_column(Integer)
    data_hash: Mapped[str] = mapped_column(String(64))
    output_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payload: Mapped[str] = mapped_column(String(16))
    inputs: Mapped[list[Any] | None] = mapped_column(EncodedJson, nullable=True)
    outputs: Mapped[list[Any] | None] = mapped_column(EncodedJson, nullable=True)
    timings: Mapped[dict[str, Any]] = mapped_column(EncodedJson)
    usage: Mapped[dict[str, Any] | None] = mapped_column(EncodedJson, nullable=True)
    cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    decisions: Mapped[dict[str, Any]] = mapped_column(EncodedJson)
    replay_of: Mapped[str | None] = mapped_column(String(128), nullable=True)


_TABLE = cast(Table, ProvenanceRow.__table__)
#: Rows per multi-row INSERT on SQLite: 29 columns x 256 rows = 7,424 parameters, under the
#: 32,766 SQLite allows since 3.32 (older libraries allow 999: 34 rows).
_SQLITE_ROWS = 256 if sqlite3.sqlite_version_info >= (3, 32) else 999 // len(COLUMNS)


@dataclass(frozen=True, slots=True)
class Record:
    """One provenance record as read back (JSON columns decoded)."""

    id: str
    request_id: str
    started_at: float
    duration_ms: float
    tenant: str
    principal: str
    subject: str
    key_id: str | None
    protocol: str
    model: str
    version: str | None
    runtime: str | None
    manifest_digest: str | None
    pipeline_version: str | None
    status: str
    error: dict[str, Any] | None
    parameters: dict[str, Any]
    items: int
    data_hash: str
    output_hash: str | None
    payload: str
    inputs: list[Any] | None
    outputs: list[Any] | None
    timings: dict[str, Any]
    usage: dict[str, Any] | None
    cost: float | None
    decisions: dict[str, Any]
    replay_of: str | None

    @property
    def replayable(self) -> bool:
        """True when the record kept its inputs as sent, so it can run again."""
        return self.payload == Payload.FULL.value

    def view(self) -> dict[str, Any]:
        """The JSON shape of the API."""
        body = asdict(self)
        body["created"] = datetime.fromtimestamp(self.started_at, UTC).isoformat()
        body["replayable"] = self.replayable
        return body


_COLUMNS = tuple(_TABLE.c[f.name] for f in fields(Record))


@dataclass(frozen=True, slots=True)
class Query:
    """Filters of a listing; every one set must match."""

    tenant: str | None = None
    """Only this tenant's records; None: every tenant's (administrators)."""
    model: str | None = None
    version: str | None = None
    status: Literal["ok", "error"] | None = None
    principal: str | None = None
    """``tenant/subject`` or a bare subject."""
    protocol: str | None = None
    since: float | None = None
    """Started at or after (seconds since the epoch)."""
    until: float | None = None
    """Started before."""
    replays: Literal["exclude", "include", "only"] = "exclude"
    """Replays are not live traffic: left out unless asked for."""
    replay_of: str | None = None
    """Only the replays of this request id."""
    replayable: bool | None = None
    """True: only records that kept their inputs as sent; False: only those that did not."""
    limit: int = 50
    before: str | None = None
    """A record id: only records older than it (the cursor of the next page)."""


def _filtered(statement: Select[Any], query: Query) -> Select[Any]:
    c = _TABLE.c
    if query.status is not None:  # a literal, so the partial index of errors can serve it
        statement = statement.where(c.status == literal_column(f"'{query.status}'"))
    exact = {
        c.tenant: query.tenant,
        c.model: query.model,
        c.version: query.version,
        c.protocol: query.protocol,
        c.replay_of: query.replay_of,
    }
    for column, value in exact.items():
        if value is not None:
            statement = statement.where(column == value)
    if query.principal is not None:
        statement = statement.where(
            or_(c.principal == query.principal, c.subject == query.principal)
        )
    if query.since is not None:
        statement = statement.where(c.id >= id_floor(query.since))
    if query.until is not None:
        statement = statement.where(c.id < id_floor(query.until))
    if query.before is not None:
        statement = statement.where(c.id < query.before)
    if query.replays == "exclude" and query.replay_of is None:
        statement = statement.where(c.replay_of.is_(None))
    elif query.replays == "only":
        statement = statement.where(c.replay_of.is_not(None))
    if query.replayable is True:
        statement = statement.where(c.payload == Payload.FULL.value)
    elif query.replayable is False:
        statement = statement.where(c.payload != Payload.FULL.value)
    return statement


def _writer_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_writer(engine: Engine) -> Engine:
    """A connection of its own for provenance writes to a SQLite file, committing with
    ``synchronous=NORMAL``: in WAL mode that skips the fsync of every commit (the WAL is
    synced at checkpoints), which costs a fifth of a record's insert; the database stays
    consistent, and a power loss (not a crash of the process) may lose the last records
    committed, as a SIGKILL loses the buffered ones. The registry's, jobs' and keys'
    connections keep their full durability. An in-memory database has no second connection
    to open: writes share the engine there."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return engine
    writer = create_engine(engine.url, pool_size=1, max_overflow=0, pool_pre_ping=True)
    event.listen(writer, "connect", _writer_pragmas)
    return writer


class ProvenanceStore:
    """Reads and writes provenance records in one SQL database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            Base.metadata.create_all(engine, tables=[_TABLE])
        except SQLAlchemyError:  # another process created it at the same moment
            Base.metadata.create_all(engine, tables=[_TABLE])
        compiled = insert(_TABLE).compile(dialect=engine.dialect)
        self._insert = str(compiled)
        self._sqlite = engine.dialect.name == "sqlite"
        self._named = not engine.dialect.positional
        if tuple(compiled.positiontup or COLUMNS) != COLUMNS:  # the table's own order
            raise ConfigError("mh_provenance columns are out of order; this is a bug")
        self._statements: dict[int, str] = {}
        self._writer = _sqlite_writer(engine) if self._sqlite else engine

    def close(self) -> None:
        """Close the connection writes go through (SQLite); reads keep the shared engine."""
        if self._writer is not self.engine:
            self._writer.dispose()

    def insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Write rows built by :meth:`~modelhost.provenance.capture.RowBuilder.values` (every
        column in :data:`~modelhost.provenance.capture.COLUMNS` order, JSON as encoded text)
        in one transaction.

        The values go to the driver as they are, skipping SQLAlchemy's per-row parameter
        processing (they need none). On SQLite they go as multi-row ``INSERT … VALUES (…),
        (…)`` statements of up to 256 rows: one step of the database per statement rather than
        one per row, so the writer thread gives the interpreter lock back to the event loop a
        few times per batch instead of once per row (a measured cost when both share one
        core). Elsewhere (PostgreSQL) one ``executemany`` of the compiled INSERT.
        """
        if not rows:
            return
        with self._writer.begin() as conn:
            if not self._sqlite:
                params: Sequence[Any] = rows
                if self._named:
                    params = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
                conn.exec_driver_sql(self._insert, params)
                return
            for start in range(0, len(rows), _SQLITE_ROWS):
                chunk = rows[start : start + _SQLITE_ROWS]
                conn.exec_driver_sql(self._values(len(chunk)), tuple(chain.from_iterable(chunk)))

    def _values(self, count: int) -> str:
        """The multi-row INSERT of ``count`` rows (kept: SQLite caches its compiled form)."""
        found = self._statements.get(count)
        if found is None:
            row = "(" + ", ".join("?" * len(COLUMNS)) + ")"
            found = f"INSERT INTO {_TABLE.name} ({', '.join(COLUMNS)}) VALUES " + ", ".join(
                [row] * count
            )
            self._statements[count] = found
        return found

    def get(self, key: str, tenant: str | None = None) -> Record | None:
        """The record with id ``key``, else the newest one of request id ``key``; None when
        there is none (in ``tenant``, when given)."""
        c = _TABLE.c
        by_id = select(*_COLUMNS).where(c.id == key)
        by_request = (
            select(*_COLUMNS)
            .where(c.request_bucket == request_bucket(key), c.request_id == key)
            .order_by(c.request_bucket.desc(), c.id.desc())
            .limit(1)
        )
        if tenant is not None:
            by_id = by_id.where(c.tenant == tenant)
            by_request = by_request.where(c.tenant == tenant)
        with self.engine.connect() as conn:
            found = conn.execute(by_id).mappings().first()
            if found is None:
                found = conn.execute(by_request).mappings().first()
        return Record(**found) if found is not None else None

    def list(self, query: Query) -> list[Record]:
        """Records matching ``query``, newest first, at most ``query.limit``."""
        statement = _filtered(select(*_COLUMNS), query)
        statement = statement.order_by(_TABLE.c.id.desc()).limit(query.limit)
        with self.engine.connect() as conn:
            return [Record(**row) for row in conn.execute(statement).mappings()]

    def count(self, query: Query) -> int:
        """How many records match ``query`` (its limit and cursor aside)."""
        statement = _filtered(select(func.count()).select_from(_TABLE), replace(query, before=None))
        with self.engine.connect() as conn:
            return int(conn.execute(statement).scalar_one())

    def purge(self, older_than: float) -> int:
        """Delete records started before ``older_than``; returns how many."""
        with self.engine.begin() as conn:
            result = conn.execute(delete(_TABLE).where(_TABLE.c.id < id_floor(older_than)))
        return int(result.rowcount or 0)

    def analyze(self) -> None:
        """Refresh SQLite's statistics of the table (a sampled ``ANALYZE``, about a
        millisecond), without which its planner takes the tenant or model index over the
        partial index of errors for ``status=error``. PostgreSQL keeps its own statistics."""
        if self._sqlite:
            with self.engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA analysis_limit=400")
                conn.exec_driver_sql(f"ANALYZE {_TABLE.name}")
