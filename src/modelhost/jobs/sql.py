"""The embedded queue backend: job rows in the SQL database (SQLite or PostgreSQL).

A claim is a compare-and-set: pick the next runnable rows (PostgreSQL skips rows another
transaction has locked), then ``UPDATE … WHERE id IN (…) AND <still runnable> RETURNING id``,
so two workers (threads, processes or machines sharing the database) never both win the same
job. Every change of a job's state writes a row of its history (``mh_job_events``) in the same
transaction, which is what ``GET /v1/jobs/{id}/events`` follows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import (
    Select,
    and_,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from modelhost.jobs.base import (
    Batch,
    EventKind,
    Job,
    JobEvent,
    JobStatus,
    NewBatch,
    NewJob,
    QueueBackend,
    Retry,
    new_batch_id,
)
from modelhost.jobs.tables import (
    TABLES,
    BatchRow,
    EventRow,
    JobRow,
    item_values,
    job_of,
    job_values,
)
from modelhost.registry.db import Base

_QUEUED = JobStatus.QUEUED.value
_RUNNING = JobStatus.RUNNING.value
_UNFINISHED = (_QUEUED, _RUNNING)
#: How many times one claim retries when other workers won every candidate it picked.
_CLAIM_TRIES = 5


#: A job or batch row: both have ``id``, ``tenant`` and ``created_at``.
_RowT = TypeVar("_RowT", "JobRow", "BatchRow")


def _newest_first(
    session: Session,
    table: type[_RowT],
    query: Select[_RowT],
    tenant: str,
    before: str | None,
    limit: int,
) -> Sequence[_RowT]:
    """A page of ``query``'s rows (a job or batch table), newest first, after the row
    ``before`` (the last of the previous page); empty when that row is not the tenant's."""
    if before is not None:
        anchor = session.get(table, before)
        if anchor is None or anchor.tenant != tenant:
            return []
        query = query.where(
            or_(
                table.created_at < anchor.created_at,
                and_(table.created_at == anchor.created_at, table.id < anchor.id),
            )
        )
    return session.scalars(
        query.order_by(table.created_at.desc(), table.id.desc()).limit(limit)
    ).all()


def _runnable(now: float) -> ColumnElement[bool]:
    """Queued with its backoff over, or running on a lease that ran out (attempts left)."""
    return or_(
        and_(JobRow.status == _QUEUED, JobRow.run_at <= now),
        and_(
            JobRow.status == _RUNNING,
            JobRow.lease_until < now,
            JobRow.attempts < JobRow.max_attempts,
        ),
    )


#: The order jobs are claimed in: priority, then age, then a batch's input order.
_QUEUE_ORDER = (JobRow.priority.desc(), JobRow.created_at, JobRow.item, JobRow.id)


def _leased(job_id: str, worker: str) -> ColumnElement[bool]:
    return and_(JobRow.id == job_id, JobRow.status == _RUNNING, JobRow.worker == worker)


def _finished(now: float, status: JobStatus, **values: Any) -> dict[str, Any]:
    """Values that end a job: its status, no lease, and its callback (if any) due now."""
    return {
        "status": status.value,
        "finished_at": now,
        "lease_until": None,
        "worker": None,
        "webhook_state": case((JobRow.callback_url.is_not(None), "pending"), else_=None),
        "webhook_at": case((JobRow.callback_url.is_not(None), now), else_=None),
        **values,
    }


def _changed(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


_LOST = {
    "type": "WorkerLost",
    "message": "the worker running the last attempt stopped answering",
    "param": None,
    "retryable": True,
}


class SqlQueue(QueueBackend):
    """Jobs in the ``mh_jobs`` table of the modelhost database, with their history in
    ``mh_job_events`` and batches in ``mh_batches``.

    Args:
        engine: the database (the registry's engine); the tables are created if missing.
        clock: seconds since the epoch; tests pass a fake one to move time.
    """

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        Base.metadata.create_all(engine, tables=[Base.metadata.tables[t] for t in TABLES])

    # -- writing, with history -------------------------------------------------------------

    def _transition(
        self,
        session: Session,
        where: ColumnElement[bool],
        values: dict[str, Any],
        kind: EventKind,
        detail: dict[str, Any] | None = None,
    ) -> list[str]:
        """Update the rows ``where`` selects and log ``kind`` for each one that changed."""
        changed = session.execute(
            update(JobRow)
            .where(where)
            .values(**values)
            .returning(JobRow.id, JobRow.tenant, JobRow.attempts)
            .execution_options(synchronize_session=False)
        ).all()
        self._log(session, [(r.id, r.tenant, r.attempts) for r in changed], kind, detail)
        return [r.id for r in changed]

    def _log(
        self,
        session: Session,
        jobs: Iterable[tuple[str, str, int]],
        kind: EventKind,
        detail: dict[str, Any] | None = None,
    ) -> None:
        now = self.clock()
        rows = [
            {
                "job_id": job_id,
                "tenant": tenant,
                "kind": kind.value,
                "at": now,
                "attempt": attempt,
                "detail": detail or {},
            }
            for job_id, tenant, attempt in jobs
        ]
        if rows:
            session.execute(insert(EventRow), rows)

    def _change(
        self,
        where: ColumnElement[bool],
        values: dict[str, Any],
        kind: EventKind,
        detail: dict[str, Any] | None = None,
    ) -> list[str]:
        with Session(self.engine) as session, session.begin():
            return self._transition(session, where, values, kind, detail)

    # -- submitting --------------------------------------------------------------------------

    def enqueue(self, new: NewJob) -> tuple[Job, bool]:
        """Store a queued job, or return the tenant's job with the same idempotency key."""
        if new.idempotency_key is not None:
            found = self.find(new.tenant, new.idempotency_key)
            if found is not None:
                return found, False
        values = job_values(new, self.clock())
        try:
            with Session(self.engine) as session, session.begin():
                session.execute(insert(JobRow), [values])
                self._log(session, [(values["id"], new.tenant, 0)], EventKind.QUEUED)
        except IntegrityError:  # a concurrent submit with the same key won the insert
            if new.idempotency_key is None:
                raise
            found = self.find(new.tenant, new.idempotency_key)
            if found is None:
                raise
            return found, False
        return job_of(JobRow(**values)), True  # what was written; no need to read it back

    def enqueue_batch(self, batch: NewBatch, items: list[NewJob]) -> tuple[Batch, bool]:
        """Store the batch and all its items at once (no item without its batch). Items take
        the batch's tenant, priority and id, and their position as ``item`` unless they carry
        one; each gets its ``queued`` event."""
        if batch.idempotency_key is not None:
            found = self._find_batch(batch.tenant, batch.idempotency_key)
            if found is not None:
                return found, False
        now = self.clock()
        batch_id = new_batch_id()
        try:
            with Session(self.engine) as session, session.begin():
                session.add(
                    BatchRow(
                        id=batch_id,
                        tenant=batch.tenant,
                        model=batch.model,
                        version=batch.version,
                        priority=batch.priority,
                        total=len(items),
                        created_at=now,
                        idempotency_key=batch.idempotency_key,
                        meta=batch.metadata,
                    )
                )
                session.flush()
                rows = [item_values(batch, batch_id, n, item, now) for n, item in enumerate(items)]
                for start in range(0, len(rows), 1000):
                    chunk = rows[start : start + 1000]
                    session.execute(insert(JobRow), chunk)
                    self._log(
                        session, [(r["id"], batch.tenant, 0) for r in chunk], EventKind.QUEUED
                    )
        except IntegrityError:
            if batch.idempotency_key is None:
                raise
            found = self._find_batch(batch.tenant, batch.idempotency_key)
            if found is None:
                raise
            return found, False
        created = self.get_batch(batch.tenant, batch_id)
        assert created is not None
        return created, True

    # -- working -----------------------------------------------------------------------------

    def claim_many(self, worker: str, visibility_timeout: float, limit: int) -> list[Job]:
        """Lease the next runnable job and up to ``limit - 1`` more of its model and version.

        A running job whose lease ran out on its last attempt is failed (``WorkerLost``)
        instead of run again.
        """
        for _ in range(_CLAIM_TRIES):
            now = self.clock()
            with Session(self.engine) as session, session.begin():
                self._fail_lost(session, now)
                first = session.execute(
                    select(JobRow.model, JobRow.version)
                    .where(_runnable(now))
                    .order_by(*_QUEUE_ORDER)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if first is None:
                    return []
                same_version = (
                    JobRow.version.is_(None)
                    if first.version is None
                    else JobRow.version == first.version
                )
                ids = session.scalars(
                    select(JobRow.id)
                    .where(_runnable(now), JobRow.model == first.model, same_version)
                    .order_by(*_QUEUE_ORDER)
                    .limit(max(1, limit))
                    .with_for_update(skip_locked=True)
                ).all()
                won = self._claim_rows(session, ids, worker, visibility_timeout, now)
            if won:
                return self._get_many(won)
        return []

    def claim_ids(self, worker: str, visibility_timeout: float, ids: Sequence[str]) -> list[Job]:
        """Lease exactly the jobs ``ids`` that are still runnable (a dispatcher such as Redis
        picked them); the others are skipped."""
        if not ids:
            return []
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            self._fail_lost(session, now, ids)
            won = self._claim_rows(session, ids, worker, visibility_timeout, now)
        return self._get_many(won)

    def _claim_rows(
        self, session: Session, ids: Sequence[str], worker: str, lease: float, now: float
    ) -> list[str]:
        if not ids:
            return []
        values = {
            "status": _RUNNING,
            "worker": worker,
            "lease_until": now + lease,
            "attempts": JobRow.attempts + 1,
            "started_at": now,
        }
        where = and_(JobRow.id.in_(list(ids)), _runnable(now))
        return self._transition(session, where, values, EventKind.RUNNING, {"worker": worker})

    def _fail_lost(self, session: Session, now: float, ids: Sequence[str] | None = None) -> None:
        """Fail running jobs whose lease ran out on their last attempt (skipping rows another
        claim has locked: it will fail them itself)."""
        where = and_(
            JobRow.status == _RUNNING,
            JobRow.lease_until < now,
            JobRow.attempts >= JobRow.max_attempts,
        )
        if ids is not None:
            where = and_(where, JobRow.id.in_(list(ids)))
        lost = session.scalars(select(JobRow.id).where(where).with_for_update(skip_locked=True))
        found = list(lost)
        if found:
            values = _finished(now, JobStatus.FAILED, error=_LOST)
            where = and_(where, JobRow.id.in_(found))
            self._transition(session, where, values, EventKind.FAILED, {"error": _LOST})

    def heartbeat(self, job_id: str, worker: str, visibility_timeout: float) -> bool:
        """Extend the lease while ``worker`` still holds it."""
        until = self.clock() + visibility_timeout
        with Session(self.engine) as session, session.begin():
            changed = session.execute(
                update(JobRow).where(_leased(job_id, worker)).values(lease_until=until)
            )
            return _changed(changed) == 1

    def complete(self, job_id: str, worker: str, result: dict[str, Any]) -> bool:
        """Succeed the leased job with ``result``."""
        values = _finished(self.clock(), JobStatus.SUCCEEDED, result=result, error=None)
        return bool(self._change(_leased(job_id, worker), values, EventKind.SUCCEEDED))

    def complete_many(self, worker: str, results: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """Succeed the leased jobs in one transaction (one commit, not one per job)."""
        done: list[str] = []
        with Session(self.engine) as session, session.begin():
            for job_id, result in results:
                values = _finished(self.clock(), JobStatus.SUCCEEDED, result=result, error=None)
                where = _leased(job_id, worker)
                done += self._transition(session, where, values, EventKind.SUCCEEDED)
        return done

    def fail(
        self, job_id: str, worker: str, error: dict[str, Any], retry: Retry | None = None
    ) -> Job | None:
        """Queue the job again after ``retry.defer`` while attempts remain, else fail it."""
        now = self.clock()
        job = self._get(job_id)
        if job is None or job.status is not JobStatus.RUNNING or job.worker != worker:
            return None
        if retry is not None and job.attempts < job.max_attempts:
            values: dict[str, Any] = {
                "error": error,
                "lease_until": None,
                "worker": None,
                "status": _QUEUED,
                "run_at": now + retry.defer,
            }
            detail = {"error": error, "run_at": now + retry.defer}
            done = self._change(_leased(job_id, worker), values, EventKind.RETRY, detail)
        else:
            values = _finished(now, JobStatus.FAILED, error=error)
            done = self._change(_leased(job_id, worker), values, EventKind.FAILED, {"error": error})
        return self._get(job_id) if done else None

    def release(self, job_id: str, worker: str) -> bool:
        """Queue the leased job again at once, without counting the attempt."""
        values = {
            "status": _QUEUED,
            "attempts": JobRow.attempts - 1,
            "run_at": self.clock(),
            "lease_until": None,
            "worker": None,
        }
        return bool(self._change(_leased(job_id, worker), values, EventKind.RELEASED))

    def cancel(self, tenant: str, job_id: str) -> Job | None:
        """Cancel the tenant's job unless it has finished."""
        where = and_(JobRow.id == job_id, JobRow.tenant == tenant, JobRow.status.in_(_UNFINISHED))
        self._change(where, _finished(self.clock(), JobStatus.CANCELLED), EventKind.CANCELLED)
        return self.get(tenant, job_id)

    # -- reading -----------------------------------------------------------------------------

    def _get(self, job_id: str) -> Job | None:
        with Session(self.engine) as session:
            row = session.get(JobRow, job_id)
            return job_of(row) if row is not None else None

    def _get_many(self, ids: Sequence[str]) -> list[Job]:
        """The jobs ``ids``, in the queue's order (priority, then age)."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(JobRow).where(JobRow.id.in_(list(ids))).order_by(*_QUEUE_ORDER)
            ).all()
            return [job_of(row) for row in rows]

    def get(self, tenant: str, job_id: str) -> Job | None:
        """The tenant's job, or None."""
        with Session(self.engine) as session:
            row = session.scalars(
                select(JobRow).where(JobRow.id == job_id, JobRow.tenant == tenant)
            ).first()
            return job_of(row) if row is not None else None

    def find(self, tenant: str, idempotency_key: str) -> Job | None:
        """The tenant's job with ``idempotency_key``, or None."""
        with Session(self.engine) as session:
            row = session.scalars(
                select(JobRow).where(
                    JobRow.tenant == tenant, JobRow.idempotency_key == idempotency_key
                )
            ).first()
            return job_of(row) if row is not None else None

    def list_jobs(
        self,
        tenant: str,
        *,
        status: JobStatus | None = None,
        model: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Job]:
        """The tenant's jobs (not batch items), newest first, paged by ``before``."""
        query = select(JobRow).where(JobRow.tenant == tenant, JobRow.batch_id.is_(None))
        if status is not None:
            query = query.where(JobRow.status == status.value)
        if model is not None:
            query = query.where(JobRow.model == model)
        with Session(self.engine) as session:
            rows = _newest_first(session, JobRow, query, tenant, before, limit)
            return [job_of(row) for row in rows]

    def events(self, tenant: str, job_id: str, after: int = 0, limit: int = 100) -> list[JobEvent]:
        """The tenant's job's history after ``seq`` ``after``, oldest first."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(EventRow)
                .where(EventRow.job_id == job_id, EventRow.tenant == tenant, EventRow.seq > after)
                .order_by(EventRow.seq)
                .limit(limit)
            ).all()
            return [
                JobEvent(
                    seq=row.seq,
                    job_id=row.job_id,
                    kind=EventKind(row.kind),
                    at=row.at,
                    attempt=row.attempt,
                    detail=row.detail,
                )
                for row in rows
            ]

    # -- batches -----------------------------------------------------------------------------

    def _batch(self, session: Session, row: BatchRow) -> Batch:
        counts = {
            status: int(count)
            for status, count in session.execute(
                select(JobRow.status, func.count())
                .where(JobRow.batch_id == row.id)
                .group_by(JobRow.status)
            ).all()
        }
        started, finished = session.execute(
            select(func.min(JobRow.started_at), func.max(JobRow.finished_at)).where(
                JobRow.batch_id == row.id
            )
        ).one()
        batch = Batch(
            id=row.id,
            tenant=row.tenant,
            model=row.model,
            version=row.version,
            priority=row.priority,
            total=row.total,
            created_at=row.created_at,
            cancelled_at=row.cancelled_at,
            idempotency_key=row.idempotency_key,
            metadata=row.meta,
            counts=counts,
            started_at=started,
        )
        if not any(counts.get(s, 0) for s in _UNFINISHED):
            batch.finished_at = finished
        return batch

    def _find_batch(self, tenant: str, idempotency_key: str) -> Batch | None:
        with Session(self.engine) as session:
            row = session.scalars(
                select(BatchRow).where(
                    BatchRow.tenant == tenant, BatchRow.idempotency_key == idempotency_key
                )
            ).first()
            return self._batch(session, row) if row is not None else None

    def get_batch(self, tenant: str, batch_id: str) -> Batch | None:
        """The tenant's batch with its progress."""
        with Session(self.engine) as session:
            row = session.get(BatchRow, batch_id)
            if row is None or row.tenant != tenant:
                return None
            return self._batch(session, row)

    def list_batches(self, tenant: str, limit: int = 50, before: str | None = None) -> list[Batch]:
        """The tenant's batches, newest first."""
        query = select(BatchRow).where(BatchRow.tenant == tenant)
        with Session(self.engine) as session:
            rows = _newest_first(session, BatchRow, query, tenant, before, limit)
            return [self._batch(session, row) for row in rows]

    def batch_items(
        self, tenant: str, batch_id: str, offset: int = 0, limit: int = 100
    ) -> list[Job]:
        """A page of the batch's items in input order. Items are numbered 0… in input order,
        so the page starts at ``item >= offset`` on the (batch, item) index: a deep page costs
        what the first does (``OFFSET`` would read and skip every row before it)."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(JobRow)
                .where(JobRow.batch_id == batch_id, JobRow.tenant == tenant, JobRow.item >= offset)
                .order_by(JobRow.item)
                .limit(limit)
            ).all()
            return [job_of(row) for row in rows]

    def cancel_batch(self, tenant: str, batch_id: str) -> Batch | None:
        """Mark the batch cancelled and cancel the items not finished yet; a batch whose items
        have all finished is returned unchanged (like :meth:`cancel` of a finished job)."""
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            row = session.get(BatchRow, batch_id, with_for_update=True)
            if row is None or row.tenant != tenant:
                return None
            where = and_(JobRow.batch_id == batch_id, JobRow.status.in_(_UNFINISHED))
            values = _finished(now, JobStatus.CANCELLED)
            if self._transition(session, where, values, EventKind.CANCELLED):
                row.cancelled_at = row.cancelled_at or now
        return self.get_batch(tenant, batch_id)

    # -- webhooks ----------------------------------------------------------------------------

    def claim_webhooks(self, worker: str, lease: float, limit: int) -> list[Job]:
        """Lease due callbacks: each goes to one deliverer at a time."""
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            ids = session.scalars(
                select(JobRow.id)
                .where(JobRow.webhook_state == "pending", JobRow.webhook_at <= now)
                .order_by(JobRow.webhook_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if not ids:
                return []
            won = session.scalars(
                update(JobRow)
                .where(
                    JobRow.id.in_(list(ids)),
                    JobRow.webhook_state == "pending",
                    JobRow.webhook_at <= now,
                )
                .values(webhook_at=now + lease)
                .returning(JobRow.id)
                .execution_options(synchronize_session=False)
            ).all()
        return self._get_many(won)

    def record_webhook(
        self, job_id: str, attempt: dict[str, Any], *, delivered: bool, retry_at: float | None
    ) -> None:
        """Append a delivery attempt; delivered, due again at ``retry_at``, or given up."""
        with Session(self.engine) as session, session.begin():
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None or row.webhook_state != "pending":
                return
            row.webhook_attempts = [*(row.webhook_attempts or []), attempt]
            if delivered:
                row.webhook_state, row.webhook_at = "delivered", None
            elif retry_at is None:
                row.webhook_state, row.webhook_at = "failed", None
            else:
                row.webhook_at = retry_at
            detail = {**attempt, "state": row.webhook_state}
            self._log(session, [(row.id, row.tenant, row.attempts)], EventKind.WEBHOOK, detail)

    # -- upkeep ------------------------------------------------------------------------------

    def depth(self) -> dict[str, int]:
        """Queued and running jobs, counted on the runnable index (status first)."""
        with Session(self.engine) as session:
            rows = session.execute(
                select(JobRow.status, func.count())
                .where(JobRow.status.in_(_UNFINISHED))
                .group_by(JobRow.status)
            ).all()
        return {str(status): int(count) for status, count in rows}

    def purge(self, retention: float) -> int:
        """Expire stale queued jobs and delete finished ones older than ``retention`` (with
        their history), and batches left without items."""
        now = self.clock()
        cutoff = now - retention
        finished = [s.value for s in JobStatus if s.terminal]
        with Session(self.engine) as session, session.begin():
            expired = self._transition(
                session,
                and_(JobRow.status == _QUEUED, JobRow.created_at < cutoff),
                _finished(now, JobStatus.EXPIRED),
                EventKind.EXPIRED,
            )
            old = select(JobRow.id).where(
                JobRow.status.in_(finished),
                JobRow.finished_at < cutoff,
                or_(JobRow.webhook_state.is_(None), JobRow.webhook_state != "pending"),
            )
            session.execute(delete(EventRow).where(EventRow.job_id.in_(old)))
            deleted = _changed(
                session.execute(
                    delete(JobRow)
                    .where(JobRow.id.in_(old))
                    .execution_options(synchronize_session=False)
                )
            )
            session.execute(
                delete(BatchRow).where(
                    BatchRow.created_at < cutoff,
                    ~select(JobRow.id).where(JobRow.batch_id == BatchRow.id).exists(),
                )
            )
            return len(expired) + deleted
