"""Where drift monitoring keeps what must outlive a process: each version's reference
statistics, its alert state (so an alert fires once per crossing, across processes and
restarts), and the alerts sent with every delivery attempt."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from modelhost.drift.stats import Reference
from modelhost.registry.db import Base, utcnow

#: The alert states a version moves between; the other statuses leave the state as it is.
STATE_OK = "ok"
STATE_DRIFT = "drift"


class DriftReferenceRow(Base):
    """The reference statistics of one model version."""

    __tablename__ = "mh_drift_reference"

    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(512))
    content_sha256: Mapped[str] = mapped_column(String(64))
    options_sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))


class DriftStateRow(Base):
    """Whether a version is in drift (an alert was sent) or not."""

    __tablename__ = "mh_drift_state"

    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DriftAlertRow(Base):
    """One drift event (``drift.alert`` or ``drift.resolved``) and what became of it."""

    __tablename__ = "mh_drift_alerts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    deliveries: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    hooks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


_TABLES = ("mh_drift_reference", "mh_drift_state", "mh_drift_alerts")


def _aware(moment: datetime) -> datetime:
    """SQLite drops the zone of stored datetimes; they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class StoredReference:
    """A reference with where it came from."""

    reference: Reference
    content_sha256: str
    options_sha256: str
    created_at: datetime
    created_by: str

    def describe(self) -> dict[str, Any]:
        """The ``reference`` object of the drift API."""
        return {
            "source": self.reference.source,
            "rows": self.reference.rows,
            "sha256": self.content_sha256,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "features": {n: f.kind.value for n, f in self.reference.features.items()},
        }


def new_alert_id() -> str:
    """A random alert id such as ``drift_3f2a…``."""
    return f"drift_{secrets.token_hex(12)}"


class DriftStore:
    """The drift tables over the registry's database (created when missing). Blocking: call
    from a thread in async code."""

    def __init__(self, engine: Engine) -> None:
        tables = Base.metadata.tables
        Base.metadata.create_all(engine, tables=[tables[name] for name in _TABLES])
        self._session = sessionmaker(engine, expire_on_commit=False)

    # -- references ------------------------------------------------------------------------

    def reference(self, model: str, version: str) -> StoredReference | None:
        """The stored reference of a version, or None."""
        with self._session() as session:
            row = session.get(DriftReferenceRow, (model, version))
            if row is None:
                return None
            return StoredReference(
                Reference.from_json(row.stats),
                row.content_sha256,
                row.options_sha256,
                _aware(row.created_at),
                row.created_by,
            )

    def save_reference(
        self, model: str, version: str, reference: Reference, options_sha256: str, actor: str
    ) -> StoredReference:
        """Store (or replace) a version's reference."""
        now = utcnow()
        values = {
            "source": reference.source,
            "content_sha256": reference.sha256,
            "options_sha256": options_sha256,
            "rows": reference.rows,
            "stats": reference.to_json(),
            "created_at": now,
            "created_by": actor,
        }
        for attempt in range(2):
            try:
                with self._session.begin() as session:
                    row = session.get(DriftReferenceRow, (model, version))
                    if row is None:
                        session.add(DriftReferenceRow(model=model, version=version, **values))
                    else:
                        for key, value in values.items():
                            setattr(row, key, value)
                break
            except IntegrityError:  # another process stored one just now: replace it
                if attempt:
                    raise
        return StoredReference(reference, reference.sha256, options_sha256, now, actor)

    def stored(self) -> dict[str, str]:
        """``model@version`` → content hash of every stored reference."""
        with self._session() as session:
            query = select(
                DriftReferenceRow.model, DriftReferenceRow.version, DriftReferenceRow.content_sha256
            )
            return {f"{m}@{v}": digest for m, v, digest in session.execute(query)}

    # -- alert state -----------------------------------------------------------------------

    def state(self, model: str, version: str) -> tuple[str, datetime | None]:
        """The alert state (``ok`` or ``drift``) and since when."""
        with self._session() as session:
            row = session.get(DriftStateRow, (model, version))
            if row is None:
                return STATE_OK, None
            return row.status, _aware(row.changed_at)

    def transition(self, model: str, version: str, status: str) -> bool:
        """Move a version to ``status``; True only for the one caller (of any process) that
        changed it, so each crossing is acted on once."""
        with self._session.begin() as session:
            row = session.get(DriftStateRow, (model, version))
            if row is None:
                if status == STATE_OK:
                    return False
                session.add(DriftStateRow(model=model, version=version, status=status))
                try:
                    session.flush()
                except IntegrityError:  # another process recorded it first
                    return False
                return True
            if row.status == status:
                return False
            changed = session.execute(
                update(DriftStateRow)
                .where(
                    DriftStateRow.model == model,
                    DriftStateRow.version == version,
                    DriftStateRow.status == row.status,
                )
                .values(status=status, changed_at=utcnow())
            )
            return bool(getattr(changed, "rowcount", 0) == 1)

    # -- alerts ----------------------------------------------------------------------------

    def add_alert(self, alert_id: str, event: str, evidence: dict[str, Any]) -> None:
        """Record a drift event before it is delivered."""
        with self._session.begin() as session:
            session.add(
                DriftAlertRow(
                    id=alert_id,
                    model=evidence["model"],
                    version=evidence["version"],
                    event=event,
                    evidence=evidence,
                    deliveries=[],
                    hooks=[],
                )
            )

    def record(
        self,
        alert_id: str,
        *,
        delivery: dict[str, Any] | None = None,
        hook: dict[str, Any] | None = None,
    ) -> None:
        """Append a delivery attempt or a retraining hook's outcome to an alert."""
        with self._session.begin() as session:
            row = session.get(DriftAlertRow, alert_id)
            if row is None:
                return
            if delivery is not None:
                row.deliveries = [*row.deliveries, delivery]
            if hook is not None:
                row.hooks = [*row.hooks, hook]

    def alerts(
        self, model: str, version: str | None = None, limit: int = 10
    ) -> list[dict[str, Any]]:
        """The newest drift events of a model (one version, or all), newest first."""
        with self._session() as session:
            query = (
                select(DriftAlertRow)
                .where(DriftAlertRow.model == model)
                .order_by(DriftAlertRow.at.desc())
                .limit(limit)
            )
            if version is not None:
                query = query.where(DriftAlertRow.version == version)
            return [
                {
                    "id": row.id,
                    "event": row.event,
                    "model": row.model,
                    "version": row.version,
                    "at": _aware(row.at).isoformat(),
                    "overall": row.evidence.get("overall"),
                    "drifted_features": row.evidence.get("drifted_features", []),
                    "deliveries": row.deliveries,
                    "hooks": row.hooks,
                }
                for row in session.scalars(query)
            ]
