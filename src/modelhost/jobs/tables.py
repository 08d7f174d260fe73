"""The job tables of the modelhost database: jobs, their history, batches; and the
conversions between rows and :mod:`modelhost.jobs.base` objects."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from modelhost.jobs.base import Job, JobStatus, NewBatch, NewJob, new_job_id
from modelhost.registry.db import Base

_QUEUED = JobStatus.QUEUED.value


class JobRow(Base):
    """One job: the request, who sent it, its state, its lease, its outcome."""

    __tablename__ = "mh_jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_mh_jobs_tenant_idempotency"),
        Index("ix_mh_jobs_runnable", "status", "priority", "created_at"),
        Index("ix_mh_jobs_tenant_created", "tenant", "created_at"),
        Index("ix_mh_jobs_batch_item", "batch_id", "item"),
        Index("ix_mh_jobs_webhook", "webhook_state", "webhook_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    inputs: Mapped[list[Any]] = mapped_column(JSON)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    principal: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    run_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    callback_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    webhook_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """None (no callback), ``waiting`` (job unfinished), ``pending``, ``delivered``, ``failed``."""
    webhook_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """When the next delivery attempt is due (or the current one's lease ends)."""
    webhook_attempts: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    batch_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    item: Mapped[int | None] = mapped_column(Integer, nullable=True)
    custom_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class EventRow(Base):
    """One line of a job's history."""

    __tablename__ = "mh_job_events"
    __table_args__ = (Index("ix_mh_job_events_job", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40))
    tenant: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    at: Mapped[float] = mapped_column(Float)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class BatchRow(Base):
    """One batch; its items are job rows carrying its id."""

    __tablename__ = "mh_batches"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_mh_batches_tenant_idempotency"),
        Index("ix_mh_batches_tenant_created", "tenant", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    priority: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    cancelled_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)


TABLES = (JobRow.__tablename__, EventRow.__tablename__, BatchRow.__tablename__)


def job_of(row: JobRow) -> Job:
    webhook = None
    if row.webhook_state is not None:
        webhook = {"state": row.webhook_state, "attempts": list(row.webhook_attempts or [])}
    return Job(
        id=row.id,
        tenant=row.tenant,
        model=row.model,
        inputs=row.inputs,
        parameters=row.parameters,
        principal=row.principal,
        version=row.version,
        status=JobStatus(row.status),
        priority=row.priority,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        created_at=row.created_at,
        idempotency_key=row.idempotency_key,
        run_at=row.run_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        lease_until=row.lease_until,
        worker=row.worker,
        result=row.result,
        error=row.error,
        callback_url=row.callback_url,
        webhook=webhook,
        batch_id=row.batch_id,
        item=row.item,
        custom_id=row.custom_id,
    )


def job_values(new: NewJob, now: float) -> dict[str, Any]:
    """Column values of a new queued job."""
    return {
        "id": new_job_id(),
        "tenant": new.tenant,
        "model": new.model,
        "version": new.version,
        "inputs": new.inputs,
        "parameters": new.parameters,
        "principal": new.principal,
        "status": _QUEUED,
        "priority": new.priority,
        "attempts": 0,
        "max_attempts": max(1, new.max_attempts),
        "idempotency_key": new.idempotency_key,
        "created_at": now,
        "run_at": now,
        "callback_url": new.callback_url,
        "webhook_state": "waiting" if new.callback_url else None,
        "webhook_attempts": [] if new.callback_url else None,
        "batch_id": new.batch_id,
        "item": new.item,
        "custom_id": new.custom_id,
    }


def item_values(
    batch: NewBatch, batch_id: str, position: int, item: NewJob, now: float
) -> dict[str, Any]:
    """Column values of a new batch item."""
    values = job_values(item, now)
    values.update(
        tenant=batch.tenant,
        priority=batch.priority,
        batch_id=batch_id,
        item=position if item.item is None else item.item,
    )
    return values
