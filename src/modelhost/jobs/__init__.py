"""Async jobs: a durable queue of inference requests and the in-process worker that runs them.

The queue is a :class:`QueueBackend`; the embedded one keeps job rows in the SQL database
(:class:`SqlQueue`). The worker calls the same ``DataPlane`` as the synchronous path.
"""

from __future__ import annotations

from modelhost.jobs.base import Job, JobStatus, NewJob, QueueBackend, Retry
from modelhost.jobs.sql import SqlQueue
from modelhost.jobs.worker import Backoff, Worker

__all__ = ["Backoff", "Job", "JobStatus", "NewJob", "QueueBackend", "Retry", "SqlQueue", "Worker"]
