"""The registry's tables and the database engine (SQLite by default, PostgreSQL for scale-out)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from modelhost.errors import ConfigError, MissingDependencyError


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every modelhost table."""


class ModelRow(Base):
    """A named model; its versions hang below it."""

    __tablename__ = "mh_models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class VersionRow(Base):
    """One version of a model: its manifest, its files and its stage."""

    __tablename__ = "mh_versions"
    __table_args__ = (UniqueConstraint("model", "version", name="uq_mh_versions_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(ForeignKey("mh_models.name"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    runtime: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str] = mapped_column(String(16))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    files: Mapped[dict[str, str]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))


class AliasRow(Base):
    """A named pointer (e.g. ``champion``) to one version of a model."""

    __tablename__ = "mh_aliases"

    model: Mapped[str] = mapped_column(ForeignKey("mh_models.name"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))


class HistoryRow(Base):
    """One change to the registry: when, who, what, from what, to what."""

    __tablename__ = "mh_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(32))
    from_value: Mapped[str | None] = mapped_column(String(128), nullable=True)
    to_value: Mapped[str | None] = mapped_column(String(128), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create the engine for ``url``; ``postgresql://`` URLs use psycopg 3.

    Raises:
        MissingDependencyError: a PostgreSQL URL without the ``postgres`` extra.
        ConfigError: the URL cannot be parsed.
    """
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("postgresql+psycopg"):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise MissingDependencyError("psycopg", "postgres") from None
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except Exception as exc:
        raise ConfigError(f"database URL {url!r} is not usable: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    Base.metadata.create_all(engine)
    return engine


def add_missing_columns(engine: Engine, table_name: str) -> list[str]:
    """Add the columns a table's model declares but an older database lacks.

    Tables are created by ``create_all``, which never changes an existing table; a release
    that adds an amount column (declared ``NOT NULL`` with a server default of zero) brings it
    to existing databases with this, on start-up. Concurrent starts may race: a column another
    process added meanwhile is not an error.

    Returns:
        The names of the columns added.
    """
    table = Base.metadata.tables[table_name]
    present = {c["name"] for c in inspect(engine).get_columns(table_name)}
    added = []
    for column in table.columns:
        if column.name in present:
            continue
        kind = column.type.compile(dialect=engine.dialect)
        default = getattr(column.server_default, "arg", None)
        clause = f" NOT NULL DEFAULT {default}" if default is not None else ""
        statement = f'ALTER TABLE {table_name} ADD COLUMN "{column.name}" {kind}{clause}'
        try:
            with engine.begin() as connection:
                connection.execute(text(statement))
        except Exception:  # another process added it first
            if column.name not in {c["name"] for c in inspect(engine).get_columns(table_name)}:
                raise
        added.append(column.name)
    return added
