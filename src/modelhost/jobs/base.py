"""The job model and the queue backend contract.

A job is one inference request stored durably (JSON, never pickle) with the identity of the
principal that submitted it. A worker *claims* a job, which leases it for a visibility timeout;
the worker renews the lease with heartbeats while the model runs. A worker that dies stops
renewing, the lease runs out, and another worker claims the job again.
"""

from __future__ import annotations

import random
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"  #: waiting for a worker (new, or waiting out a retry's backoff)
    RUNNING = "running"  #: claimed by a worker that holds its lease
    SUCCEEDED = "succeeded"  #: done; the result is kept until retention runs out
    FAILED = "failed"  #: the last attempt failed, or the request itself is wrong; error kept
    CANCELLED = "cancelled"  #: cancelled by its tenant before it finished
    EXPIRED = "expired"  #: no worker took it within the retention period

    @property
    def terminal(self) -> bool:
        """True once the job will not change any more."""
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: attempt ``n`` waits a random time between half and all
    of ``min(cap, base * 2**(n-1))`` seconds, so retries of many jobs do not arrive together."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.cap, self.base * 2.0 ** min(max(0, attempt - 1), 64))
        return random.uniform(ceiling / 2, ceiling)


class Retry(Exception):
    """The typed signal that an attempt failed and the job should run again later.

    Args:
        defer: seconds to wait before the next attempt.
    """

    def __init__(self, defer: float) -> None:
        super().__init__(f"retry in {defer:.3g}s")
        self.defer = max(0.0, defer)


def new_job_id() -> str:
    """A random job id such as ``job_3f2a…``."""
    return f"job_{secrets.token_hex(12)}"


@dataclass(slots=True)
class NewJob:
    """What a submitter asks for; the backend adds the id, the status and the timings."""

    tenant: str
    model: str
    inputs: list[Any]
    parameters: dict[str, Any] = field(default_factory=dict)
    principal: dict[str, Any] = field(default_factory=dict)
    """The submitter's identity (subject, scopes, key id, limits), rebuilt by the worker."""
    version: str | None = None
    """Exact version, alias or stage; None for the production version."""
    priority: int = 0
    """Higher runs first; equal priorities run oldest first."""
    idempotency_key: str | None = None
    """A submitter's key: submitting again with it returns the first job."""
    max_attempts: int = 3
    callback_url: str | None = None
    """Where to POST the finished job (already checked by the webhook policy)."""
    batch_id: str | None = None
    """The batch this job is an item of (set by :meth:`QueueBackend.enqueue_batch`)."""
    item: int | None = None
    """The item's 0-based position in its batch's input."""
    custom_id: str | None = None
    """The submitter's own id of a batch item, echoed in results."""


@dataclass(slots=True)
class Job:
    """One stored job. Times are seconds since the epoch."""

    id: str
    tenant: str
    model: str
    inputs: list[Any]
    parameters: dict[str, Any]
    principal: dict[str, Any]
    version: str | None
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    created_at: float
    idempotency_key: str | None = None
    run_at: float = 0.0
    """Not claimed before this time (a retry's backoff)."""
    started_at: float | None = None
    finished_at: float | None = None
    lease_until: float | None = None
    worker: str | None = None
    """The worker holding the lease while running."""
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    """``{"type", "message", "param", "retryable"}`` of the last failed attempt."""
    callback_url: str | None = None
    webhook: dict[str, Any] | None = None
    """With a ``callback_url``: ``{"state": "waiting"|"pending"|"delivered"|"failed",
    "attempts": [{"at", "status_code", "error", "duration_ms"}, ...]}``."""
    batch_id: str | None = None
    item: int | None = None
    custom_id: str | None = None


class EventKind(StrEnum):
    """What a job event records."""

    QUEUED = "queued"
    RUNNING = "running"  #: an attempt started (``attempt``, ``worker``)
    RETRY = "retry"  #: an attempt failed and will run again (``error``, ``run_at``)
    RELEASED = "released"  #: a stopping worker gave the job back unrun
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    WEBHOOK = "webhook"  #: a callback delivery attempt (``status_code``, ``error``, ...)


@dataclass(slots=True)
class JobEvent:
    """One line of a job's history, in the order the store wrote them."""

    seq: int
    """Increasing over the whole store: read a job's events after the last ``seq`` seen."""
    job_id: str
    kind: EventKind
    at: float
    attempt: int
    detail: dict[str, Any] = field(default_factory=dict)


class BatchStatus(StrEnum):
    """Where a batch is: derived from its items."""

    QUEUED = "queued"  #: no item started yet
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"  #: every item finished (succeeded or failed)
    CANCELLED = "cancelled"  #: cancelled; items already finished keep their results


@dataclass(slots=True)
class NewBatch:
    """A batch submission; its items are :class:`NewJob` rows with ``batch_id`` set."""

    tenant: str
    model: str
    version: str | None = None
    priority: int = -50
    idempotency_key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Batch:
    """One stored batch with its progress, counted from its items."""

    id: str
    tenant: str
    model: str
    version: str | None
    priority: int
    total: int
    created_at: float
    cancelled_at: float | None = None
    idempotency_key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    """Items by :class:`JobStatus` value."""
    started_at: float | None = None
    """When the first item started."""
    finished_at: float | None = None
    """When the last item finished, once all have."""

    @property
    def completed(self) -> int:
        """Items that succeeded."""
        return self.counts.get(JobStatus.SUCCEEDED.value, 0)

    @property
    def failed(self) -> int:
        """Items that failed, were cancelled or expired."""
        return sum(
            self.counts.get(s.value, 0)
            for s in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED)
        )

    @property
    def status(self) -> BatchStatus:
        """Derived from the items and the cancel mark."""
        if self.cancelled_at is not None:
            return BatchStatus.CANCELLED
        if self.completed + self.failed >= self.total:
            return BatchStatus.COMPLETED
        if self.started_at is None:
            return BatchStatus.QUEUED
        return BatchStatus.IN_PROGRESS


def new_batch_id() -> str:
    """A random batch id such as ``batch_3f2a…``."""
    return f"batch_{secrets.token_hex(12)}"


class QueueBackend(ABC):
    """Durable storage of jobs with leases. Methods are synchronous (call them in a thread);
    every read a caller makes is scoped by tenant, so a tenant never sees another's jobs."""

    @abstractmethod
    def enqueue(self, new: NewJob) -> tuple[Job, bool]:
        """Store a queued job, or find the tenant's job with the same idempotency key.

        Returns:
            The job, and True if it was created now (False: an earlier job was returned).
        """

    def claim(self, worker: str, visibility_timeout: float) -> Job | None:
        """Lease the next runnable job to ``worker`` (highest priority, then oldest; a backend
        may group priorities into bands, as the Redis one does: above 0, 0, below 0): a queued
        job whose backoff is over, or a running one whose lease ran out. None when idle."""
        jobs = self.claim_many(worker, visibility_timeout, 1)
        return jobs[0] if jobs else None

    @abstractmethod
    def claim_many(self, worker: str, visibility_timeout: float, limit: int) -> list[Job]:
        """Lease up to ``limit`` runnable jobs to ``worker``: the next one (as :meth:`claim`)
        and more runnable jobs of the same model and version, so the worker can run them as
        one batch. Empty when idle."""

    @abstractmethod
    def heartbeat(self, job_id: str, worker: str, visibility_timeout: float) -> bool:
        """Extend ``worker``'s lease; False when it no longer holds it (cancelled, reclaimed)."""

    @abstractmethod
    def complete(self, job_id: str, worker: str, result: dict[str, Any]) -> bool:
        """Mark the leased job succeeded with ``result``; False when the lease was lost."""

    def complete_many(self, worker: str, results: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """Succeed several leased jobs (a batch's outcomes) at once; returns the ids whose
        lease still held. Backends override it to write them in one transaction."""
        return [job_id for job_id, result in results if self.complete(job_id, worker, result)]

    @abstractmethod
    def fail(
        self, job_id: str, worker: str, error: dict[str, Any], retry: Retry | None = None
    ) -> Job | None:
        """Record a failed attempt: queued again after ``retry.defer`` while attempts remain,
        failed otherwise (or when ``retry`` is None). None when the lease was lost."""

    @abstractmethod
    def release(self, job_id: str, worker: str) -> bool:
        """Give a leased job back unrun (the worker is stopping); the attempt is not counted."""

    @abstractmethod
    def cancel(self, tenant: str, job_id: str) -> Job | None:
        """Cancel a queued or running job of ``tenant``; a finished job is returned unchanged.
        None when the tenant has no such job."""

    @abstractmethod
    def get(self, tenant: str, job_id: str) -> Job | None:
        """The tenant's job, or None (also for another tenant's id)."""

    @abstractmethod
    def find(self, tenant: str, idempotency_key: str) -> Job | None:
        """The tenant's job submitted with ``idempotency_key``, or None."""

    @abstractmethod
    def list_jobs(
        self,
        tenant: str,
        *,
        status: JobStatus | None = None,
        model: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Job]:
        """The tenant's jobs (not batch items), newest first; ``before`` is the id of the last
        job of the previous page."""

    @abstractmethod
    def events(self, tenant: str, job_id: str, after: int = 0, limit: int = 100) -> list[JobEvent]:
        """The tenant's job's events with ``seq`` above ``after``, oldest first."""

    @abstractmethod
    def enqueue_batch(self, batch: NewBatch, items: list[NewJob]) -> tuple[Batch, bool]:
        """Store a batch and its items (queued jobs) in one transaction, or find the tenant's
        batch with the same idempotency key. Returns the batch and whether it was created."""

    @abstractmethod
    def get_batch(self, tenant: str, batch_id: str) -> Batch | None:
        """The tenant's batch with its progress, or None."""

    @abstractmethod
    def list_batches(self, tenant: str, limit: int = 50, before: str | None = None) -> list[Batch]:
        """The tenant's batches, newest first."""

    @abstractmethod
    def batch_items(
        self, tenant: str, batch_id: str, offset: int = 0, limit: int = 100
    ) -> list[Job]:
        """A page of the tenant's batch items, in input order."""

    @abstractmethod
    def cancel_batch(self, tenant: str, batch_id: str) -> Batch | None:
        """Mark the batch cancelled and cancel its unfinished items; None when unknown."""

    @abstractmethod
    def claim_webhooks(self, worker: str, lease: float, limit: int) -> list[Job]:
        """Lease finished jobs whose callback is due to ``worker`` for ``lease`` seconds."""

    @abstractmethod
    def record_webhook(
        self, job_id: str, attempt: dict[str, Any], *, delivered: bool, retry_at: float | None
    ) -> None:
        """Append a delivery attempt to the job's webhook log (and its events). ``delivered``
        ends it; otherwise it is due again at ``retry_at``, or given up when that is None."""

    def depth(self) -> dict[str, int]:
        """How many jobs are ``queued`` and ``running`` now, in every process sharing the
        queue (the ``modelhost_jobs`` gauge reads it at scrape time). A backend that cannot
        count cheaply answers an empty mapping."""
        return {}

    def tick(self) -> None:  # noqa: B027 - optional hook; the SQL queue needs none
        """Periodic upkeep the backend needs (the Redis one moves due retries to its stream);
        workers call it every poll interval."""

    def close(self) -> None:  # noqa: B027 - optional hook; the SQL queue holds nothing to close
        """Release what the backend holds (the Redis one closes its connection pool). The
        composition root calls it once at shutdown; the backend is not used afterwards."""

    @abstractmethod
    def purge(self, retention: float) -> int:
        """Expire jobs queued longer than ``retention`` seconds and delete finished jobs older
        than that. Returns how many rows changed."""
