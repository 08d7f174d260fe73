"""The embedded queue backend: job rows in the SQL database (SQLite or PostgreSQL).

A claim is a compare-and-set: pick the next runnable row, then ``UPDATE … WHERE id = :id AND
<still runnable>`` and check that exactly one row changed, so two workers (threads, processes
or machines sharing the database) never both win the same job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    Index,
    Integer,
    String,
    UniqueConstraint,
    and_,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from modelhost.jobs.base import Job, JobStatus, NewJob, QueueBackend, Retry, new_job_id
from modelhost.registry.db import Base

_QUEUED = JobStatus.QUEUED.value
_RUNNING = JobStatus.RUNNING.value
#: How many candidates one claim tries before reporting idle (others won the rest).
_CLAIM_TRIES = 5


class JobRow(Base):
    """One job: the request, who sent it, its state, its lease, its outcome."""

    __tablename__ = "mh_jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_mh_jobs_tenant_idempotency"),
        Index("ix_mh_jobs_runnable", "status", "priority", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
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


def _job(row: JobRow) -> Job:
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
    )


def _runnable(now: float) -> ColumnElement[bool]:
    return or_(
        and_(JobRow.status == _QUEUED, JobRow.run_at <= now),
        and_(JobRow.status == _RUNNING, JobRow.lease_until < now),
    )


def _leased(job_id: str, worker: str) -> ColumnElement[bool]:
    return and_(JobRow.id == job_id, JobRow.status == _RUNNING, JobRow.worker == worker)


def _changed(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


class SqlQueue(QueueBackend):
    """Jobs in the ``mh_jobs`` table of the modelhost database.

    Args:
        engine: the database (the registry's engine); the table is created if missing.
        clock: seconds since the epoch; tests pass a fake one to move time.
    """

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        Base.metadata.create_all(engine, tables=[Base.metadata.tables[JobRow.__tablename__]])

    def enqueue(self, new: NewJob) -> tuple[Job, bool]:
        """Store a queued job, or return the tenant's job with the same idempotency key."""
        if new.idempotency_key is not None:
            found = self.find(new.tenant, new.idempotency_key)
            if found is not None:
                return found, False
        now = self.clock()
        row = JobRow(
            id=new_job_id(),
            tenant=new.tenant,
            model=new.model,
            version=new.version,
            inputs=new.inputs,
            parameters=new.parameters,
            principal=new.principal,
            status=_QUEUED,
            priority=new.priority,
            attempts=0,
            max_attempts=max(1, new.max_attempts),
            idempotency_key=new.idempotency_key,
            created_at=now,
            run_at=now,
        )
        try:
            with Session(self.engine) as session, session.begin():
                session.add(row)
                session.flush()
                job = _job(row)
        except IntegrityError:  # a concurrent submit with the same key won the insert
            if new.idempotency_key is None:
                raise
            found = self.find(new.tenant, new.idempotency_key)
            if found is None:
                raise
            return found, False
        return job, True

    def claim(self, worker: str, visibility_timeout: float) -> Job | None:
        """Lease the next runnable job to ``worker``; a running job whose lease ran out on its
        last attempt is failed instead of run again."""
        for _ in range(_CLAIM_TRIES):
            now = self.clock()
            with Session(self.engine) as session, session.begin():
                candidate = session.scalars(
                    select(JobRow)
                    .where(_runnable(now))
                    .order_by(JobRow.priority.desc(), JobRow.created_at, JobRow.id)
                    .limit(1)
                ).first()
                if candidate is None:
                    return None
                job_id, attempts = candidate.id, candidate.attempts
                lost = candidate.status == _RUNNING and attempts >= candidate.max_attempts
                guard = and_(JobRow.id == job_id, JobRow.attempts == attempts, _runnable(now))
                values: dict[str, Any] = (
                    self._lost_values(now)
                    if lost
                    else {
                        "status": _RUNNING,
                        "worker": worker,
                        "lease_until": now + visibility_timeout,
                        "attempts": attempts + 1,
                        "started_at": now,
                    }
                )
                won = _changed(session.execute(update(JobRow).where(guard).values(**values)))
                session.expire_all()
            if won == 1 and not lost:
                return self._get(job_id)
        return None

    @staticmethod
    def _lost_values(now: float) -> dict[str, Any]:
        return {
            "status": JobStatus.FAILED.value,
            "worker": None,
            "lease_until": None,
            "finished_at": now,
            "error": {
                "type": "WorkerLost",
                "message": "the worker running the last attempt stopped answering",
                "param": None,
                "retryable": True,
            },
        }

    def _update(self, where: ColumnElement[bool], **values: Any) -> int:
        with Session(self.engine) as session, session.begin():
            return _changed(session.execute(update(JobRow).where(where).values(**values)))

    def heartbeat(self, job_id: str, worker: str, visibility_timeout: float) -> bool:
        """Extend the lease while ``worker`` still holds it."""
        until = self.clock() + visibility_timeout
        return self._update(_leased(job_id, worker), lease_until=until) == 1

    def complete(self, job_id: str, worker: str, result: dict[str, Any]) -> bool:
        """Succeed the leased job with ``result``."""
        return (
            self._update(
                _leased(job_id, worker),
                status=JobStatus.SUCCEEDED.value,
                result=result,
                error=None,
                finished_at=self.clock(),
                lease_until=None,
                worker=None,
            )
            == 1
        )

    def fail(
        self, job_id: str, worker: str, error: dict[str, Any], retry: Retry | None = None
    ) -> Job | None:
        """Queue the job again after ``retry.defer`` while attempts remain, else fail it."""
        now = self.clock()
        job = self._get(job_id)
        if job is None or job.status is not JobStatus.RUNNING or job.worker != worker:
            return None
        again = retry is not None and job.attempts < job.max_attempts
        values: dict[str, Any] = {"error": error, "lease_until": None, "worker": None}
        if again:
            assert retry is not None
            values.update(status=_QUEUED, run_at=now + retry.defer)
        else:
            values.update(status=JobStatus.FAILED.value, finished_at=now)
        if self._update(_leased(job_id, worker), **values) != 1:
            return None
        return self._get(job_id)

    def release(self, job_id: str, worker: str) -> bool:
        """Queue the leased job again at once, without counting the attempt."""
        return (
            self._update(
                _leased(job_id, worker),
                status=_QUEUED,
                attempts=JobRow.attempts - 1,
                run_at=self.clock(),
                lease_until=None,
                worker=None,
            )
            == 1
        )

    def cancel(self, tenant: str, job_id: str) -> Job | None:
        """Cancel the tenant's job unless it has finished."""
        where = and_(
            JobRow.id == job_id,
            JobRow.tenant == tenant,
            JobRow.status.in_([_QUEUED, _RUNNING]),
        )
        self._update(
            where,
            status=JobStatus.CANCELLED.value,
            finished_at=self.clock(),
            lease_until=None,
            worker=None,
        )
        return self.get(tenant, job_id)

    def _get(self, job_id: str) -> Job | None:
        with Session(self.engine) as session:
            row = session.get(JobRow, job_id)
            return _job(row) if row is not None else None

    def get(self, tenant: str, job_id: str) -> Job | None:
        """The tenant's job, or None."""
        with Session(self.engine) as session:
            row = session.scalars(
                select(JobRow).where(JobRow.id == job_id, JobRow.tenant == tenant)
            ).first()
            return _job(row) if row is not None else None

    def find(self, tenant: str, idempotency_key: str) -> Job | None:
        """The tenant's job with ``idempotency_key``, or None."""
        with Session(self.engine) as session:
            row = session.scalars(
                select(JobRow).where(
                    JobRow.tenant == tenant, JobRow.idempotency_key == idempotency_key
                )
            ).first()
            return _job(row) if row is not None else None

    def purge(self, retention: float) -> int:
        """Expire stale queued jobs and delete finished ones older than ``retention``."""
        now = self.clock()
        cutoff = now - retention
        finished = [s.value for s in JobStatus if s.terminal]
        with Session(self.engine) as session, session.begin():
            expired = session.execute(
                update(JobRow)
                .where(JobRow.status == _QUEUED, JobRow.created_at < cutoff)
                .values(status=JobStatus.EXPIRED.value, finished_at=now)
            )
            deleted = session.execute(
                delete(JobRow).where(
                    JobRow.status.in_(finished),
                    JobRow.finished_at < cutoff,
                )
            )
            return _changed(expired) + _changed(deleted)
