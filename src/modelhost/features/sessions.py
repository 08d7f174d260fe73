"""Conversation state of features that keep a session.

One row of ``mh_feature_sessions`` per tenant, feature and session id: the running summary
and the kept turns (:class:`~modelhost.features.context.ConversationState`, bounded by the
feature's token budget, so a row never grows without bound), and when it expires. Every
replica reads and writes the same rows; two calls of one session at the same moment both see
the history before them, and the later write wins.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, DateTime, String, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from modelhost.features.context import ConversationState
from modelhost.registry.db import Base, utcnow


class SessionRow(Base):
    """The conversation state of one session of one feature."""

    __tablename__ = "mh_feature_sessions"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    feature: Mapped[str] = mapped_column(String(64), primary_key=True)
    session: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


_TABLE = Base.metadata.tables[SessionRow.__tablename__]


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=utcnow().tzinfo)


class SessionStore:
    """Loads and saves conversation states (async: the database work runs in a thread)."""

    def __init__(self, engine: Engine, ttl_s: float = 7 * 86_400) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        try:
            Base.metadata.create_all(engine, tables=[_TABLE])
        except SQLAlchemyError:  # another process created it at the same moment
            Base.metadata.create_all(engine, tables=[_TABLE])

    async def load(self, tenant: str, feature: str, session: str) -> ConversationState:
        """The state of a session; an empty one when it is new or expired."""
        return await asyncio.to_thread(self._load, tenant, feature, session)

    async def save(
        self,
        tenant: str,
        feature: str,
        session: str,
        state: ConversationState,
        ttl_s: float | None = None,
    ) -> None:
        """Store the state of a session (replacing the former one)."""
        await asyncio.to_thread(self._save, tenant, feature, session, state, ttl_s or self.ttl_s)

    async def delete(self, tenant: str, feature: str, session: str) -> bool:
        """Forget a session; False when there was none."""
        return await asyncio.to_thread(self._delete, tenant, feature, session)

    def purge(self) -> int:
        """Delete expired sessions; returns how many."""
        with Session(self.engine) as db, db.begin():
            result = db.execute(delete(SessionRow).where(SessionRow.expires_at < utcnow()))
            return int(getattr(result, "rowcount", 0) or 0)

    def _load(self, tenant: str, feature: str, session: str) -> ConversationState:
        with Session(self.engine) as db:
            row = db.get(SessionRow, (tenant, feature, session))
            if row is None or _aware(row.expires_at) < utcnow():
                return ConversationState()
            return ConversationState.from_dict(row.state)

    def _save(
        self, tenant: str, feature: str, session: str, state: ConversationState, ttl_s: float
    ) -> None:
        values = {
            "tenant": tenant,
            "feature": feature,
            "session": session,
            "state": state.as_dict(),
            "expires_at": utcnow() + timedelta(seconds=ttl_s),
        }
        dialect = self.engine.dialect.name
        with Session(self.engine) as db, db.begin():
            if dialect in ("sqlite", "postgresql"):
                insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_TABLE)
                db.execute(
                    insert.values(**values).on_conflict_do_update(
                        index_elements=["tenant", "feature", "session"],
                        set_={"state": values["state"], "expires_at": values["expires_at"]},
                    )
                )
                return
            db.merge(SessionRow(**values))

    def _delete(self, tenant: str, feature: str, session: str) -> bool:
        with Session(self.engine) as db, db.begin():
            result = db.execute(
                delete(SessionRow).where(
                    SessionRow.tenant == tenant,
                    SessionRow.feature == feature,
                    SessionRow.session == session,
                )
            )
            return bool(getattr(result, "rowcount", 0))
