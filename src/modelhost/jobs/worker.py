"""The job worker: asyncio tasks that claim queued jobs and run them through the data plane,
exactly as the synchronous path would.

Each task claims up to ``claim_batch`` runnable jobs of one model version at a time and hands
them to :meth:`DataPlane.infer_many`, which checks each on its own and feeds those that pass
to the runtime as one call. A job on a streaming model (an LLM) publishes its tokens on the
:class:`~modelhost.jobs.events.TokenBus` while it runs.

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
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelhost.errors import BudgetExceeded, ModelhostError, RateLimited, RequestError
from modelhost.inference import InferenceRequest, InferenceResponse
from modelhost.jobs.base import Backoff, Job, QueueBackend, Retry
from modelhost.jobs.events import MemoryBus, TokenBus
from modelhost.runtimes import StreamChunk
from modelhost.security.keys import Principal

log = logging.getLogger("modelhost.jobs")

#: Seconds between purges of expired jobs.
PURGE_INTERVAL_S = 60.0


class Plane(Protocol):
    """What the worker needs of the data plane: the one request path, several at once."""

    async def infer_many(
        self,
        requests: list[InferenceRequest],
        on_chunk: Callable[[int, StreamChunk], Awaitable[None]] | None = None,
    ) -> list[InferenceResponse | Exception]:
        """Run requests, each checked on its own; one outcome per request."""
        ...


class Sidecar(Protocol):
    """A loop the worker runs beside its tasks (the webhook deliverer)."""

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        """Work every ``interval`` seconds until ``stop`` is set."""
        ...


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker runs."""

    concurrency: int = 2
    """Claims run at once (one asyncio task each)."""
    claim_batch: int = 8
    """Most jobs of one model version a task claims and runs as one batch."""
    visibility_timeout: float = 60.0
    """Seconds a claim leases a job; heartbeats renew it every third of that."""
    poll_interval: float = 0.2
    """Seconds an idle task waits before looking for work again (a submit wakes it sooner)."""
    retention: float = 7 * 24 * 3600.0
    """Seconds finished jobs are kept (and queued jobs wait before they expire)."""
    drain_timeout: float = 30.0
    """On :meth:`Worker.stop`, how long running jobs may take before they are given back."""
    backoff: Backoff = field(default_factory=Backoff)


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


def request_of(job: Job) -> InferenceRequest:
    """The inference request a job makes, as its submitter."""
    return InferenceRequest(
        model=job.model,
        version=job.version,
        inputs=job.inputs,
        parameters=job.parameters,
        request_id=job.id,
        protocol="jobs",
        principal=principal_of_job(job),
        queued_s=max(0.0, (job.started_at or job.created_at) - job.created_at),
    )


class Worker:
    """Runs queued jobs in this process until stopped.

    Args:
        backend: the job queue.
        plane: the data plane every job goes through.
        options: concurrency, batching, lease, polling, retention, draining and backoff.
        bus: where running jobs publish their tokens.
        sidecars: loops to run beside the tasks (the webhook deliverer).
    """

    def __init__(
        self,
        backend: QueueBackend,
        plane: Plane,
        options: WorkerOptions | None = None,
        *,
        bus: TokenBus | None = None,
        sidecars: tuple[Sidecar, ...] = (),
    ) -> None:
        self.backend = backend
        self.plane = plane
        self.options = options or WorkerOptions()
        self.bus = bus if bus is not None else MemoryBus()
        self.sidecars = sidecars
        self.name = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._upkeep: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> int:
        """Claimed batches running now."""
        return len(self._running)

    def start(self) -> None:
        """Start the worker's tasks in the running loop (none when concurrency is 0)."""
        for n in range(self.options.concurrency):
            self._tasks.append(asyncio.create_task(self._loop(f"{self.name}/{n}")))
        if self._tasks:
            self._upkeep.append(asyncio.create_task(self._upkeep_forever()))
            for sidecar in self.sidecars:
                self._upkeep.append(
                    asyncio.create_task(sidecar.run(self._stop, self.options.poll_interval))
                )

    def notify(self) -> None:
        """A job was submitted: wake idle tasks now rather than at their next poll."""
        self._wake.set()

    async def stop(self, drain: float | None = None) -> None:
        """Stop claiming; let running jobs finish for up to ``drain`` seconds (the options'
        ``drain_timeout`` by default), then give the rest back to the queue unrun."""
        self._stop.set()
        self._wake.set()
        grace = self.options.drain_timeout if drain is None else drain
        if self._tasks and grace > 0:  # each task ends after the batch it is running
            log.info("draining %d running job batch(es), up to %.3gs", len(self._running), grace)
            await asyncio.wait(list(self._tasks), timeout=grace)
        unfinished = list(self._running)
        for run in unfinished:  # out of time: give these jobs back to the queue
            run.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await asyncio.gather(*self._upkeep, return_exceptions=True)
        self._upkeep.clear()

    async def _loop(self, name: str) -> None:
        while not self._stop.is_set():
            claim = asyncio.ensure_future(
                asyncio.to_thread(
                    self.backend.claim_many,
                    name,
                    self.options.visibility_timeout,
                    self.options.claim_batch,
                )
            )
            try:
                jobs = await asyncio.shield(claim)
            except asyncio.CancelledError:  # stopping mid-claim: give back what it won
                with contextlib.suppress(Exception):
                    await self._release(name, await claim, set())
                raise
            except Exception:  # a database hiccup must not stop the worker; it is logged
                log.exception("claiming jobs failed")
                jobs = []
            if jobs and self._stop.is_set():  # claimed while stopping: not ours to run
                await self._release(name, jobs, set())
                return
            if not jobs:
                await self._idle()
                continue
            run = asyncio.create_task(self._run(name, jobs))
            self._running.add(run)
            try:
                await asyncio.shield(run)
            finally:
                self._running.discard(run)

    async def _idle(self) -> None:
        self._wake.clear()
        if self._stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.options.poll_interval)

    async def _run(self, name: str, jobs: list[Job]) -> None:
        """Run claimed jobs as one batch; give them back unrun if the worker is cancelled."""
        lost: set[str] = set()

        async def publish(index: int, chunk: StreamChunk) -> None:
            event = {"text": chunk.text, "finish_reason": chunk.finish_reason}
            with contextlib.suppress(Exception):  # live tokens are best effort
                await self.bus.publish(jobs[index].id, event)

        attempt = asyncio.create_task(self.plane.infer_many([request_of(j) for j in jobs], publish))
        beating = asyncio.create_task(self._heartbeat(name, jobs, lost, attempt))
        try:
            outcomes = await attempt
        except asyncio.CancelledError:
            if not all(job.id in lost for job in jobs):  # the worker stops: give them back
                await asyncio.shield(self._release(name, jobs, lost))
                raise
            return
        finally:
            beating.cancel()
        succeeded: list[tuple[str, dict[str, Any]]] = []
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.id in lost:
                continue
            if isinstance(outcome, InferenceResponse):
                succeeded.append((job.id, outcome.as_v1()))
            else:
                await self._failed(name, job, outcome)
        if succeeded:
            await asyncio.to_thread(self.backend.complete_many, name, succeeded)

    async def _release(self, name: str, jobs: list[Job], lost: set[str]) -> None:
        for job in jobs:
            if job.id not in lost:
                await asyncio.to_thread(self.backend.release, job.id, name)

    async def _heartbeat(
        self, name: str, jobs: list[Job], lost: set[str], attempt: asyncio.Task[Any]
    ) -> None:
        interval = self.options.visibility_timeout / 3
        while True:
            await asyncio.sleep(interval)
            for job in jobs:
                if job.id in lost:
                    continue
                held = await asyncio.to_thread(
                    self.backend.heartbeat, job.id, name, self.options.visibility_timeout
                )
                if not held:  # cancelled or reclaimed: its outcome will be dropped
                    lost.add(job.id)
            if len(lost) == len(jobs):  # nobody waits for this batch: stop spending on it
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

    async def _upkeep_forever(self) -> None:
        """Backend upkeep every poll interval (due retries, reclaims) and purging."""
        since_purge = PURGE_INTERVAL_S
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.backend.tick)
                if since_purge >= PURGE_INTERVAL_S:
                    since_purge = 0.0
                    await asyncio.to_thread(self.backend.purge, self.options.retention)
            except Exception:  # a database hiccup must not stop upkeep; it is logged
                log.exception("job queue upkeep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.options.poll_interval)
            since_purge += self.options.poll_interval
