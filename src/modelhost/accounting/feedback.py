"""Feedback on answered predictions (true labels or scores), joined to the version that
answered through its provenance record: online accuracy per version.

A caller that learns the truth later (the customer did churn, the ticket was a refund
request) posts it to ``POST /v1/predictions/{request_id}/feedback``; the endpoint finds the
request's provenance record, so the feedback is stored against the model version that really
answered (production, canary or a pinned one). Every replica writes to and reads from the
``mh_feedback`` table, so the canary guard (:meth:`FeedbackStore.accuracy`) and ``deploy
status`` (:meth:`FeedbackStore.summary`) see the feedback given through any of them.

A row is keyed by tenant and request id: request ids may come from the caller
(``X-Request-ID``), so two tenants may use the same one, and neither may overwrite the
other's verdict. A second verdict on the same request replaces the first (a correction), so
one request never counts twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Index, String, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelhost.registry.db import Base


@dataclass(frozen=True, slots=True)
class Feedback:
    """One caller's verdict on one answered request."""

    request_id: str
    tenant: str
    model: str
    version: str
    correct: float
    """How right the answer was, in [0, 1] (the share of items whose label matched, or the
    caller's score)."""
    label: Any = None
    """The true label(s) the caller sent, if any."""
    score: float | None = None
    """The score the caller sent, if any."""
    principal: str | None = None
    at: datetime | None = None
    """When it was given (now when None)."""
    comment: str | None = None
    """Free text the caller added (why the answer was wrong, say)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (what the feedback endpoint answers)."""
        return {
            "object": "feedback",
            "request_id": self.request_id,
            "tenant": self.tenant,
            "model": self.model,
            "version": self.version,
            "correct": self.correct,
            "label": self.label,
            "score": self.score,
            "principal": self.principal,
            "comment": self.comment,
            "at": self.at.isoformat() if self.at is not None else None,
        }


class FeedbackRow(Base):
    """One verdict, stored against the version that answered the request."""

    __tablename__ = "mh_feedback"
    __table_args__ = (Index("ix_mh_feedback_version", "model", "version", "at"),)

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    principal: Mapped[str | None] = mapped_column(String(260), nullable=True)
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    correct: Mapped[float] = mapped_column(Float)
    """In [0, 1]."""
    label: Mapped[Any] = mapped_column(JSON, nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    comment: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    """When the verdict was given (UTC)."""


_TABLE = Base.metadata.tables[FeedbackRow.__tablename__]
_UPDATED = ("principal", "model", "version", "correct", "label", "score", "comment", "at")


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC (a naive one is taken to be UTC already): SQLite stores datetimes
    as text without their zone, so every one written or compared must be in the same zone."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _row(feedback: Feedback) -> dict[str, Any]:
    if not 0.0 <= feedback.correct <= 1.0:
        raise ValueError(f"correct must be in [0, 1], not {feedback.correct}")
    return {
        "tenant": feedback.tenant,
        "request_id": feedback.request_id,
        "principal": feedback.principal,
        "model": feedback.model,
        "version": feedback.version,
        "correct": float(feedback.correct),
        "label": feedback.label,
        "score": feedback.score,
        "comment": feedback.comment,
        "at": _utc(feedback.at or datetime.now(UTC)),
    }


def _feedback(row: FeedbackRow) -> Feedback:
    return Feedback(
        request_id=row.request_id,
        tenant=row.tenant,
        model=row.model,
        version=row.version,
        correct=float(row.correct),
        label=row.label,
        score=row.score,
        principal=row.principal,
        at=_utc(row.at),
        comment=row.comment,
    )


class FeedbackStore:
    """Stores feedback and answers online accuracy per version, from every replica.

    Its methods block on the database: call them from a thread (``asyncio.to_thread``) on an
    event loop.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            Base.metadata.create_all(engine, tables=[_TABLE])
        except SQLAlchemyError:  # another process created it at the same moment
            Base.metadata.create_all(engine, tables=[_TABLE])

    def record(self, feedback: Feedback) -> None:
        """Store ``feedback`` (a second verdict on the same request replaces the first).

        Raises:
            ValueError: ``correct`` is outside [0, 1].
        """
        row = _row(feedback)
        dialect = self.engine.dialect.name
        with Session(self.engine) as session, session.begin():
            if dialect in ("sqlite", "postgresql"):
                insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_TABLE)
                statement = insert.on_conflict_do_update(
                    index_elements=["tenant", "request_id"],
                    set_={name: insert.excluded[name] for name in _UPDATED},
                )
                session.execute(statement, [row])
            else:  # databases without ON CONFLICT: read, then insert or update
                session.merge(FeedbackRow(**row))

    def get(self, request_id: str, tenant: str) -> Feedback | None:
        """The verdict ``tenant`` gave on ``request_id``, or None."""
        with Session(self.engine) as session:
            row = session.get(FeedbackRow, (tenant, request_id))
            return _feedback(row) if row is not None else None

    def accuracy(self, model: str, version: str, since: datetime) -> tuple[int, float | None]:
        """``(answers, mean correctness in [0, 1])`` of the feedback given since ``since`` on
        requests ``model@version`` answered (None when there is none)."""
        statement = select(func.count(), func.avg(FeedbackRow.correct)).where(
            FeedbackRow.model == model,
            FeedbackRow.version == version,
            FeedbackRow.at >= _utc(since),
        )
        with Session(self.engine) as session:
            count, mean = session.execute(statement).one()
        count = int(count or 0)
        return count, (float(mean) if count and mean is not None else None)

    def summary(self, model: str, since: datetime) -> dict[str, dict[str, Any]]:
        """Online accuracy of every version of ``model`` that got feedback since ``since``:
        ``{version: {"n": answers, "accuracy": mean correctness}}`` (for ``deploy
        status``)."""
        statement = (
            select(FeedbackRow.version, func.count(), func.avg(FeedbackRow.correct))
            .where(FeedbackRow.model == model, FeedbackRow.at >= _utc(since))
            .group_by(FeedbackRow.version)
            .order_by(FeedbackRow.version)
        )
        with Session(self.engine) as session:
            found = session.execute(statement).all()
        return {
            str(version): {"n": int(count), "accuracy": float(mean)}
            for version, count, mean in found
        }
