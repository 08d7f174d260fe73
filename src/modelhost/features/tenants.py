"""Per-tenant control of features: pin a feature to a version, or override it.

"Did a service vendor introduce a breaking change? ... you as the customer could restore the
system behavior to the previous state without impacting any other user." A tenant (its own
key, scope ``features``) can:

* **pin** a feature to a version: the router sends that tenant's calls to it whatever the
  deployment says (a version named in a call still wins);
* **override** a feature: its own instructions, template, parameters or examples, applied to
  whichever version serves it; the version's output schema is still enforced.

Both are rows of ``mh_feature_tenants`` (one per tenant and feature), every change an event
in ``mh_feature_tenant_events`` (who, when, before, after), and both are undone by ``unpin`` /
``clear``. The data plane reads them from a snapshot in memory (no database call per request)
that every replica reloads every ``registry.refresh_interval_s`` and at once after its own
changes.

The store's methods block on the database: call them from a thread on an event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelhost.features.spec import TenantOverride
from modelhost.registry.db import Base, utcnow

#: Marks a field a change leaves as it is.
_KEEP = object()
#: Events kept per tenant and feature in a history answer.
HISTORY_LIMIT = 100


class TenantFeatureRow(Base):
    """A tenant's pin and override of one feature."""

    __tablename__ = "mh_feature_tenants"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    feature: Mapped[str] = mapped_column(String(64), primary_key=True)
    pinned: Mapped[str | None] = mapped_column(String(64), nullable=True)
    override: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TenantFeatureEvent(Base):
    """One change of a tenant's pin or override: who, when, from what, to what."""

    __tablename__ = "mh_feature_tenant_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    feature: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


_TABLES = [
    Base.metadata.tables[TenantFeatureRow.__tablename__],
    Base.metadata.tables[TenantFeatureEvent.__tablename__],
]


@dataclass(frozen=True, slots=True)
class TenantControl:
    """What one tenant set for one feature."""

    tenant: str
    feature: str
    pinned: str | None
    override: TenantOverride | None
    updated_by: str
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "object": "feature.tenant",
            "tenant": self.tenant,
            "feature": self.feature,
            "pinned_version": self.pinned,
            "override": self.override.model_dump(exclude_none=True) if self.override else None,
            "updated_by": self.updated_by,
            "updated_at": self.updated_at.isoformat(),
        }

    def state(self) -> dict[str, Any]:
        """The part an event records as before / after."""
        return {
            "pinned_version": self.pinned,
            "override": self.override.model_dump(exclude_none=True) if self.override else None,
        }


def _control(row: TenantFeatureRow) -> TenantControl:
    override = TenantOverride.model_validate(row.override) if row.override else None
    return TenantControl(
        row.tenant, row.feature, row.pinned, override, row.updated_by, row.updated_at
    )


class TenantControls:
    """Pins and overrides of every tenant, stored in the database, read from memory."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            Base.metadata.create_all(engine, tables=_TABLES)
        except SQLAlchemyError:  # another process created them at the same moment
            Base.metadata.create_all(engine, tables=_TABLES)
        self._snapshot: dict[tuple[str, str], TenantControl] = {}
        self.reload()

    # -- the data plane's side: memory only ---------------------------------------------------

    def pinned(self, tenant: str, feature: str) -> str | None:
        """The version ``tenant`` pinned ``feature`` to, if any."""
        found = self._snapshot.get((tenant, feature))
        return found.pinned if found is not None else None

    def override(self, tenant: str, feature: str) -> TenantOverride | None:
        """``tenant``'s override of ``feature``, if any."""
        found = self._snapshot.get((tenant, feature))
        return found.override if found is not None else None

    def reload(self) -> None:
        """Read every row into the snapshot (a replica's view of other replicas' changes)."""
        with Session(self.engine) as session:
            rows = session.scalars(select(TenantFeatureRow)).all()
            self._snapshot = {(r.tenant, r.feature): _control(r) for r in rows}

    # -- changes ------------------------------------------------------------------------------

    def get(self, tenant: str, feature: str) -> TenantControl | None:
        """What ``tenant`` set for ``feature`` (from the database)."""
        with Session(self.engine) as session:
            row = session.get(TenantFeatureRow, (tenant, feature))
            return _control(row) if row is not None else None

    def every(self, tenant: str | None = None) -> list[TenantControl]:
        """Every tenant's controls, or one tenant's, by tenant and feature."""
        statement = select(TenantFeatureRow).order_by(
            TenantFeatureRow.tenant, TenantFeatureRow.feature
        )
        if tenant is not None:
            statement = statement.where(TenantFeatureRow.tenant == tenant)
        with Session(self.engine) as session:
            return [_control(r) for r in session.scalars(statement).all()]

    def pin(self, tenant: str, feature: str, version: str, actor: str) -> TenantControl:
        """Keep ``tenant`` on ``version`` of ``feature`` (the caller checked it exists)."""
        control = self._change(tenant, feature, "pin", actor, pinned=version)
        assert control is not None  # a pin leaves a row
        return control

    def unpin(self, tenant: str, feature: str, actor: str) -> TenantControl | None:
        """Let ``tenant`` follow the feature's deployment again."""
        return self._change(tenant, feature, "unpin", actor, pinned=None)

    def set_override(
        self, tenant: str, feature: str, override: TenantOverride, actor: str
    ) -> TenantControl:
        """Give ``tenant`` its own variant of ``feature``."""
        control = self._change(tenant, feature, "override", actor, override=override)
        assert control is not None  # an override leaves a row
        return control

    def clear_override(self, tenant: str, feature: str, actor: str) -> TenantControl | None:
        """Drop ``tenant``'s variant of ``feature``."""
        return self._change(tenant, feature, "clear", actor, override=None)

    def history(self, tenant: str, feature: str) -> list[dict[str, Any]]:
        """The latest changes of ``tenant``'s controls of ``feature``, newest first."""
        statement = (
            select(TenantFeatureEvent)
            .where(TenantFeatureEvent.tenant == tenant, TenantFeatureEvent.feature == feature)
            .order_by(TenantFeatureEvent.id.desc())
            .limit(HISTORY_LIMIT)
        )
        with Session(self.engine) as session:
            return [
                {
                    "action": e.action,
                    "before": e.before,
                    "after": e.after,
                    "actor": e.actor,
                    "at": e.at.isoformat(),
                }
                for e in session.scalars(statement).all()
            ]

    def _change(
        self,
        tenant: str,
        feature: str,
        action: str,
        actor: str,
        *,
        pinned: str | object | None = _KEEP,
        override: TenantOverride | object | None = _KEEP,
    ) -> TenantControl | None:
        """Apply one change in a transaction with its event; a row left with neither pin nor
        override is deleted. Returns the control after the change (None when none is left)."""
        with Session(self.engine) as session, session.begin():
            row = session.get(TenantFeatureRow, (tenant, feature), with_for_update=True)
            before = _control(row).state() if row is not None else None
            if row is None:
                row = TenantFeatureRow(tenant=tenant, feature=feature, updated_by=actor)
                session.add(row)
            if pinned is not _KEEP:
                row.pinned = pinned if isinstance(pinned, str) else None
            if override is not _KEEP:
                row.override = (
                    override.model_dump(exclude_none=True)
                    if isinstance(override, TenantOverride)
                    else None
                )
            row.updated_by, row.updated_at = actor, utcnow()
            session.flush()
            after: TenantControl | None = _control(row)
            if row.pinned is None and not row.override:
                session.execute(
                    delete(TenantFeatureRow).where(
                        TenantFeatureRow.tenant == tenant, TenantFeatureRow.feature == feature
                    )
                )
                after = None
            session.add(
                TenantFeatureEvent(
                    tenant=tenant,
                    feature=feature,
                    action=action,
                    before=before,
                    after=after.state() if after is not None else None,
                    actor=actor,
                )
            )
        self.reload()
        return after
