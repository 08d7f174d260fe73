"""How each model's traffic is split between versions, and every change to it.

A model's *deployment* is its production version (the registry's stage) plus what the
rollout tables add: an optional **canary** taking ``weight`` percent of unpinned traffic
(optionally ramping on a schedule), any number of **shadow** versions that get a copy of live
requests, the **guards** that roll a bad canary back, and the former production versions a
rollback returns to. It lives in the database, so every replica reads the same truth;
every change bumps :meth:`Deployments.generation` (which :meth:`Registry.generation
<modelhost.registry.Registry.generation>` includes) and is written to the deployment history
with who made it and why.

Concurrent writers (two replicas' guard loops, an operator and a ramp) never overwrite each
other blindly: :meth:`Deployments.update` takes the revision the caller decided on and
changes nothing when another writer moved first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import JSON, DateTime, Float, Integer, String, func, select, update
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from modelhost.errors import InvalidInput
from modelhost.registry.db import Base, utcnow

#: Former production versions remembered for rollback (newest first).
KEEP_PREVIOUS = 5


class Sticky(StrEnum):
    """What keeps one caller on one side of a split."""

    PRINCIPAL = "principal"  #: the authenticated principal (tenant and subject)
    SESSION = "session"  #: the ``X-Session-ID`` header, else the principal


class RolloutState(StrEnum):
    """Where a model's rollout is."""

    STABLE = "stable"  #: production takes all unpinned traffic (shadows may still run)
    CANARY = "canary"  #: a canary takes ``weight`` percent of unpinned traffic
    ROLLED_BACK = "rolled_back"  #: a guard breached: the canary's weight is 0, ``reason`` says why


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """When a canary is rolled back: compared with production over a sliding window."""

    window_s: float = 300.0
    """Seconds of traffic (from every replica) each comparison looks at."""
    min_samples: int = 100
    """Requests the canary (and production) must have answered in the window before the
    latency and error guards judge."""
    latency_ratio: float = 1.2
    """The canary's p95 latency above production's times this breaches (20% worse)."""
    max_error_rate: float = 0.001
    """The canary's error rate (server-side failures / requests) above this breaches."""
    max_accuracy_drop: float = 0.05
    """Production's online accuracy minus the canary's above this breaches (5 points)."""
    min_feedback: int = 30
    """Feedback answers each side needs in the window before the accuracy guard judges."""

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> GuardPolicy:
        """From a JSON mapping (unknown keys are refused)."""
        if not data:
            return cls()
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(
                f"unknown guard setting {unknown[0]!r}; known: {', '.join(sorted(known))}",
                param=f"guards.{unknown[0]}",
            )
        try:
            policy = cls(**{k: type(getattr(cls(), k))(v) for k, v in data.items()})
        except (TypeError, ValueError):
            raise InvalidInput("guard settings must be numbers", param="guards") from None
        if policy.window_s <= 0 or policy.min_samples < 1 or policy.min_feedback < 1:
            raise InvalidInput(
                "guards.window_s must be > 0, min_samples and min_feedback >= 1",
                param="guards",
            )
        return policy


@dataclass(frozen=True, slots=True)
class RampPlan:
    """A canary's weight schedule, stepped while every guard holds."""

    steps: tuple[float, ...]
    """Weights in percent, ascending (e.g. 1, 5, 25, 100)."""
    interval_s: float
    """Seconds each step must run healthy (with ``min_samples`` answered) before the next."""
    promote: bool = True
    """Promote the canary (through the promotion gates) once the last step ran healthy."""

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> RampPlan | None:
        """From ``{"steps": [...], "interval_s": ..., "promote": ...}``; None stays None."""
        if not data:
            return None
        try:
            steps = tuple(float(s) for s in data["steps"])
            plan = cls(steps, float(data["interval_s"]), bool(data.get("promote", True)))
        except (KeyError, TypeError, ValueError):
            raise InvalidInput(
                "ramp needs 'steps' (weights in percent) and 'interval_s' (seconds)",
                param="ramp",
            ) from None
        if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(steps):
            raise InvalidInput(
                "ramp.steps must be ascending weights in (0, 100], e.g. [1, 5, 25, 100]",
                param="ramp.steps",
            )
        if plan.interval_s <= 0:
            raise InvalidInput("ramp.interval_s must be > 0", param="ramp.interval_s")
        return plan


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """One model's traffic policy, as stored (detached from the database)."""

    model: str
    canary: str | None = None
    weight: float = 0.0
    """Percent of unpinned traffic the canary takes (0-100)."""
    shadows: tuple[str, ...] = ()
    sticky: Sticky = Sticky.PRINCIPAL
    ramp: RampPlan | None = None
    ramp_step: int = 0
    """Index in ``ramp.steps`` of the weight in force."""
    stepped_at: datetime | None = None
    """When the weight last changed (a ramp step waits ``interval_s`` from here)."""
    guards: GuardPolicy = field(default_factory=GuardPolicy)
    previous: tuple[str, ...] = ()
    """Former production versions, newest first: where a rollback goes."""
    state: RolloutState = RolloutState.STABLE
    reason: dict[str, Any] | None = None
    """Why the last automatic action happened (the guard, its numbers)."""
    revision: int = 0
    updated_at: datetime | None = None

    @property
    def splitting(self) -> bool:
        """Whether a canary takes any traffic now."""
        return self.canary is not None and self.weight > 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "model": self.model,
            "canary": self.canary,
            "weight": self.weight,
            "shadows": list(self.shadows),
            "sticky": self.sticky.value,
            "ramp": asdict(self.ramp) if self.ramp else None,
            "ramp_step": self.ramp_step if self.ramp else None,
            "stepped_at": self.stepped_at.isoformat() if self.stepped_at else None,
            "guards": asdict(self.guards),
            "previous": list(self.previous),
            "state": self.state.value,
            "reason": self.reason,
            "revision": self.revision,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(frozen=True, slots=True)
class DeployEvent:
    """One change of a deployment, for the history."""

    id: int
    at: datetime
    model: str
    action: str
    actor: str
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "model": self.model,
            "action": self.action,
            "actor": self.actor,
            "detail": self.detail,
        }


class DeploymentRow(Base):
    """A model's rollout state (absent: production only)."""

    __tablename__ = "mh_deployments"

    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    canary: Mapped[str | None] = mapped_column(String(64), nullable=True)
    weight: Mapped[float] = mapped_column(Float, default=0.0)
    shadows: Mapped[list[str]] = mapped_column(JSON, default=list)
    sticky: Mapped[str] = mapped_column(String(16), default=Sticky.PRINCIPAL.value)
    ramp: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    ramp_step: Mapped[int] = mapped_column(Integer, default=0)
    stepped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    guards: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    previous: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default=RolloutState.STABLE.value)
    reason: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeployEventRow(Base):
    """One change of a deployment: who, what, and the numbers behind it."""

    __tablename__ = "mh_deploy_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _spec(row: DeploymentRow) -> DeploymentSpec:
    return DeploymentSpec(
        model=row.model,
        canary=row.canary,
        weight=float(row.weight or 0.0),
        shadows=tuple(row.shadows or ()),
        sticky=Sticky(row.sticky),
        ramp=RampPlan.parse(row.ramp),
        ramp_step=row.ramp_step or 0,
        stepped_at=_aware(row.stepped_at),
        guards=GuardPolicy.parse(row.guards),
        previous=tuple(row.previous or ()),
        state=RolloutState(row.state),
        reason=row.reason,
        revision=row.revision or 0,
        updated_at=_aware(row.updated_at),
    )


def _columns(spec: DeploymentSpec) -> dict[str, Any]:
    return {
        "canary": spec.canary,
        "weight": spec.weight,
        "shadows": list(spec.shadows),
        "sticky": spec.sticky.value,
        "ramp": asdict(spec.ramp) if spec.ramp else None,
        "ramp_step": spec.ramp_step,
        "stepped_at": spec.stepped_at,
        "guards": asdict(spec.guards),
        "previous": list(spec.previous),
        "state": spec.state.value,
        "reason": spec.reason,
    }


class Deployments:
    """Reads and changes deployments; every change is one transaction with its history entry."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)

    def get(self, model: str) -> DeploymentSpec:
        """The deployment of ``model`` (production only when none was set)."""
        with self._session() as session:
            row = session.get(DeploymentRow, model)
            return _spec(row) if row is not None else DeploymentSpec(model=model)

    def all(self) -> dict[str, DeploymentSpec]:
        """Every stored deployment, by model."""
        with self._session() as session:
            return {row.model: _spec(row) for row in session.scalars(select(DeploymentRow))}

    def update(
        self,
        spec: DeploymentSpec,
        *,
        actor: str,
        action: str,
        detail: dict[str, Any] | None = None,
    ) -> DeploymentSpec | None:
        """Store ``spec`` if the stored revision is still ``spec.revision`` (the one the caller
        read and changed with :func:`dataclasses.replace`), and log ``action``.

        Returns:
            The stored spec (revision bumped), or None when another writer changed the
            deployment first (nothing was written).
        """
        now = utcnow()
        values = {**_columns(spec), "revision": spec.revision + 1, "updated_at": now}
        with self._session.begin() as session:
            row = session.get(DeploymentRow, spec.model)
            if row is None or float(row.weight or 0.0) != spec.weight:
                values["stepped_at"] = now
            if row is None and spec.revision == 0:
                session.add(DeploymentRow(model=spec.model, **values))
            else:
                moved = cast(
                    "CursorResult[Any]",
                    session.execute(
                        update(DeploymentRow)
                        .where(
                            DeploymentRow.model == spec.model,
                            DeploymentRow.revision == spec.revision,
                        )
                        .values(**values)
                    ),
                )
                if moved.rowcount != 1:
                    return None
            session.add(
                DeployEventRow(model=spec.model, action=action, actor=actor, detail=detail or {})
            )
        return self.get(spec.model)

    def change(
        self,
        model: str,
        *,
        actor: str,
        action: str,
        detail: dict[str, Any] | None = None,
        **changes: Any,
    ) -> DeploymentSpec:
        """Read, change fields and store, retrying when a concurrent writer moved first (an
        operator's change always lands)."""
        for _ in range(10):
            current = self.get(model)
            stored = self.update(
                replace(current, **changes), actor=actor, action=action, detail=detail
            )
            if stored is not None:
                return stored
        raise InvalidInput(f"the deployment of {model!r} keeps changing; try again")

    def record(
        self, model: str, action: str, *, actor: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Add a history entry without changing the deployment (a refused promotion, a
        forced one, a ramp held by a gate)."""
        with self._session.begin() as session:
            session.add(
                DeployEventRow(model=model, action=action, actor=actor, detail=detail or {})
            )

    def history(self, model: str | None = None, limit: int = 100) -> list[DeployEvent]:
        """The newest changes first."""
        with self._session() as session:
            query = select(DeployEventRow).order_by(DeployEventRow.id.desc()).limit(limit)
            if model is not None:
                query = query.where(DeployEventRow.model == model)
            return [
                DeployEvent(
                    id=row.id,
                    at=_aware(row.at) or utcnow(),
                    model=row.model,
                    action=row.action,
                    actor=row.actor,
                    detail=dict(row.detail or {}),
                )
                for row in session.scalars(query)
            ]

    def generation(self) -> int:
        """Grows with every change (the newest history id)."""
        with self._session() as session:
            return int(session.scalar(select(func.max(DeployEventRow.id))) or 0)
