"""The in-process job worker: asyncio tasks that claim jobs and run them through the data
plane, exactly as the synchronous path would.

An attempt that fails with a :class:`~modelhost.errors.RequestError` (unknown model, invalid
input, missing scope) fails the job at once: running it again cannot help. Anything else
(the model not ready, a timeout, a rate limit, a runtime failure) is signalled with
:class:`~modelhost.jobs.base.Retry` and runs again after an exponential backoff with jitter,
until the job's attempts are spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from modelhost.errors import BudgetExceeded, ModelhostError, RateLimited, RequestError
from modelhost.jobs.base import Job, QueueBackend, Retry
from modelhost.security.keys import Principal
from modelhost.serving.dataplane import InferenceRequest, InferenceResponse

log = logging.getLogger("modelhost.jobs")


class Plane(Protocol):
    """What the worker needs of the data plane: the one request path."""

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Run one request through the whole path."""
        ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: attempt ``n`` waits a random time between half and all
    of ``min(cap, base * 2**(n-1))`` seconds, so retries of many jobs do not arrive together."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker runs."""

    concurrency: int = 2
    """Jobs run at once (one asyncio task each)."""
    visibility_timeout: float = 60.0
    """Seconds a claim leases a job; heartbeats renew it every third of that."""
    poll_interval: float = 0.2
    """Seconds an idle task waits before looking for work again (a submit wakes it sooner)."""
    retention: float = 7 * 24 * 3600.0
    """Seconds finished jobs are kept (and queued jobs wait before they expire)."""
    backoff: Backoff = Backoff()


def principal_of_job(job: Job) -> Principal:
    """The submitter's principal, rebuilt from what the job stored."""
    stored = job.principal
    return Principal(
        tenant=job.tenant,
        subject=str(stored.get("subject", "unknown")),
        scopes=frozenset(str(s) for s in stored.get("scopes", [])),
        key_id=stored.get("key_id"),
        via="job",
        rpm=stored.get("rpm"),
        tpm=stored.get("tpm"),
        budget=stored.get("budget"),
    )


def describe(exc: BaseException, retryable: bool) -> dict[str, Any]:
    """The JSON error kept on a job for a failed attempt."""
    if isinstance(exc, ModelhostError):
        return {
            "type": type(exc).__name__,
            "message": exc.message,
            "param": exc.param,
            "retryable": retryable,
        }
    return {"type": "InternalError", "message": repr(exc), "param": None, "retryable": retryable}


class Worker:
    """Runs queued jobs in this process until stopped.

    Args:
        backend: the job queue.
        plane: the data plane every job goes through.
        options: concurrency, lease, polling, retention and backoff.
    """

    def __init__(
        self, backend: QueueBackend, plane: Plane, options: WorkerOptions | None = None
    ) -> None:
        self.backend = backend
        self.plane = plane
        self.options = options or WorkerOptions()
        self.name = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        """Start the worker's tasks in the running loop (none when concurrency is 0)."""
        for n in range(self.options.concurrency):
            self._tasks.append(asyncio.create_task(self._loop(f"{self.name}/{n}")))
        if self._tasks:
            self._tasks.append(asyncio.create_task(self._purge_forever()))

    def notify(self) -> None:
        """A job was submitted: wake idle tasks now rather than at their next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming; a job still running is given back to the queue unrun."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _loop(self, name: str) -> None:
        while not self._stopping:
            try:
                job = await asyncio.to_thread(
                    self.backend.claim, name, self.options.visibility_timeout
                )
            except Exception:  # a database hiccup must not stop the worker; it is logged
                log.exception("claiming a job failed")
                job = None
            if job is None:
                await self._idle()
                continue
            await self._run(name, job)

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.options.poll_interval)

    async def _run(self, name: str, job: Job) -> None:
        request = InferenceRequest(
            model=job.model,
            version=job.version,
            inputs=job.inputs,
            parameters=job.parameters,
            request_id=job.id,
            protocol="jobs",
            principal=principal_of_job(job),
        )
        attempt = asyncio.create_task(self.plane.infer(request))
        beating = asyncio.create_task(self._heartbeat(name, job.id, attempt))
        try:
            response = await attempt
        except asyncio.CancelledError:
            await self._cancelled(name, job.id)
            return
        except Exception as exc:
            await self._failed(name, job, exc)
            return
        finally:
            beating.cancel()
        await asyncio.to_thread(self.backend.complete, job.id, name, response.as_v1())

    async def _cancelled(self, name: str, job_id: str) -> None:
        """The attempt was cancelled: by the heartbeat (lease lost) or by :meth:`stop`."""
        if self._stopping:
            await asyncio.shield(asyncio.to_thread(self.backend.release, job_id, name))
            raise asyncio.CancelledError

    async def _heartbeat(self, name: str, job_id: str, attempt: asyncio.Task[Any]) -> None:
        interval = self.options.visibility_timeout / 3
        while True:
            await asyncio.sleep(interval)
            held = await asyncio.to_thread(
                self.backend.heartbeat, job_id, name, self.options.visibility_timeout
            )
            if not held:  # cancelled or reclaimed: stop spending the model's time on it
                attempt.cancel()
                return

    async def _failed(self, name: str, job: Job, exc: Exception) -> None:
        retry = self.retry_for(job, exc)
        error = describe(exc, retry is not None)
        updated = await asyncio.to_thread(self.backend.fail, job.id, name, error, retry)
        if updated is not None:
            log.info(
                "job %s attempt %d failed (%s): %s",
                job.id,
                job.attempts,
                error["type"],
                updated.status.value,
            )

    def retry_for(self, job: Job, exc: Exception) -> Retry | None:
        """The retry signal for a failed attempt, or None when retrying cannot help."""
        delay = self.options.backoff.delay(job.attempts)
        if isinstance(exc, Retry):
            return exc
        if isinstance(exc, RateLimited) and not isinstance(exc, BudgetExceeded):
            return Retry(defer=max(delay, exc.retry_after))
        if isinstance(exc, RequestError):
            return None
        hint = getattr(exc, "retry_after", None)
        return Retry(defer=max(delay, float(hint or 0.0)))

    async def _purge_forever(self) -> None:
        while not self._stopping:
            try:
                await asyncio.to_thread(self.backend.purge, self.options.retention)
            except Exception:  # a database hiccup must not stop purging; it is logged
                log.exception("purging old jobs failed")
            await asyncio.sleep(60)
