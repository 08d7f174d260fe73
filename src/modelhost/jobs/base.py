"""The job model and the queue backend contract.

A job is one inference request stored durably (JSON, never pickle) with the identity of the
principal that submitted it. A worker *claims* a job, which leases it for a visibility timeout;
the worker renews the lease with heartbeats while the model runs. A worker that dies stops
renewing, the lease runs out, and another worker claims the job again.
"""

from __future__ import annotations

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


class QueueBackend(ABC):
    """Durable storage of jobs with leases. Methods are synchronous (call them in a thread);
    every read a caller makes is scoped by tenant, so a tenant never sees another's jobs."""

    @abstractmethod
    def enqueue(self, new: NewJob) -> tuple[Job, bool]:
        """Store a queued job, or find the tenant's job with the same idempotency key.

        Returns:
            The job, and True if it was created now (False: an earlier job was returned).
        """

    @abstractmethod
    def claim(self, worker: str, visibility_timeout: float) -> Job | None:
        """Lease the next runnable job to ``worker`` (highest priority, then oldest): a queued
        job whose backoff is over, or a running one whose lease ran out. None when idle."""

    @abstractmethod
    def heartbeat(self, job_id: str, worker: str, visibility_timeout: float) -> bool:
        """Extend ``worker``'s lease; False when it no longer holds it (cancelled, reclaimed)."""

    @abstractmethod
    def complete(self, job_id: str, worker: str, result: dict[str, Any]) -> bool:
        """Mark the leased job succeeded with ``result``; False when the lease was lost."""

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
    def purge(self, retention: float) -> int:
        """Expire jobs queued longer than ``retention`` seconds and delete finished jobs older
        than that. Returns how many rows changed."""
