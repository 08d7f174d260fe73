"""Async jobs: a durable queue of inference requests and the workers that run them.

The queue is a :class:`QueueBackend`; the embedded one keeps job rows in the SQL database
(:class:`SqlQueue`). The worker calls the same ``DataPlane`` as the synchronous path.
"""

from __future__ import annotations

from modelhost.jobs.base import (
    Backoff,
    Batch,
    BatchStatus,
    EventKind,
    Job,
    JobEvent,
    JobStatus,
    NewBatch,
    NewJob,
    QueueBackend,
    Retry,
)
from modelhost.jobs.sql import SqlQueue
from modelhost.jobs.worker import Worker

__all__ = [
    "Backoff",
    "Batch",
    "BatchStatus",
    "EventKind",
    "Job",
    "JobEvent",
    "JobStatus",
    "NewBatch",
    "NewJob",
    "QueueBackend",
    "Retry",
    "SqlQueue",
    "Worker",
]
