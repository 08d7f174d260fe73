"""The in-process worker over a real SQLite queue and a scripted data plane."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from modelhost.errors import InferenceTimeout, ModelNotFound, RateLimited
from modelhost.inference import InferenceRequest, InferenceResponse, Usage
from modelhost.jobs import Backoff, Job, JobStatus, NewJob, SqlQueue, Worker
from modelhost.jobs.events import MemoryBus
from modelhost.jobs.worker import WorkerOptions
from modelhost.registry import make_engine
from modelhost.runtimes import StreamChunk


class ScriptedPlane:
    """Answers each request with the next scripted outcome: an exception, or a delay after
    which it echoes the inputs. Records every ``infer_many`` call's size."""

    def __init__(self, *outcomes: Exception | float, tokens: list[str] | None = None) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[InferenceRequest] = []
        self.calls: list[int] = []
        self.tokens = tokens or []

    async def _one(
        self,
        index: int,
        request: InferenceRequest,
        on_chunk: Callable[[int, StreamChunk], Awaitable[None]] | None,
    ) -> InferenceResponse | Exception:
        self.requests.append(request)
        outcome = self.outcomes.pop(0) if self.outcomes else 0.0
        if isinstance(outcome, Exception):
            return outcome
        for token in self.tokens:
            if on_chunk is not None:
                await on_chunk(index, StreamChunk(text=token))
            await asyncio.sleep(0.01)
        await asyncio.sleep(outcome)
        return InferenceResponse(
            id="pred_1",
            model=request.model,
            version="1.0.0",
            created=0,
            results=[{"echo": item} for item in request.inputs],
            usage=Usage(),
        )

    async def infer_many(
        self,
        requests: list[InferenceRequest],
        on_chunk: Callable[[int, StreamChunk], Awaitable[None]] | None = None,
    ) -> list[InferenceResponse | Exception]:
        self.calls.append(len(requests))
        return list(
            await asyncio.gather(*(self._one(i, r, on_chunk) for i, r in enumerate(requests)))
        )


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[SqlQueue]:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield SqlQueue(engine)
    engine.dispose()


FAST = WorkerOptions(
    concurrency=1,
    visibility_timeout=0.3,
    poll_interval=0.02,
    drain_timeout=0,
    backoff=Backoff(0.01, 0.02),
)


def submit(queue: SqlQueue, max_attempts: int = 3, model: str = "echo") -> Job:
    job, _ = queue.enqueue(
        NewJob(
            tenant="acme",
            model=model,
            inputs=[{"text": "hi"}],
            principal={"subject": "alice", "scopes": ["predict", "jobs"], "key_id": "k1"},
            max_attempts=max_attempts,
        )
    )
    return job


async def status(queue: SqlQueue, job_id: str) -> JobStatus:
    """The job's current status."""
    job = await asyncio.to_thread(queue.get, "acme", job_id)
    assert job is not None
    return job.status


async def settled(queue: SqlQueue, job_id: str, timeout: float = 5) -> Job:
    """The job once it is no longer queued or running (polled, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await asyncio.to_thread(queue.get, "acme", job_id)
        assert job is not None
        if job.status.terminal:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


async def run_to_end(queue: SqlQueue, plane: ScriptedPlane, job_id: str) -> Job:
    """Run a worker until the job settles, then stop it."""
    worker = Worker(queue, plane, FAST)
    worker.start()
    try:
        return await settled(queue, job_id)
    finally:
        await worker.stop()


@pytest.mark.asyncio
async def test_a_job_runs_as_its_submitter_and_keeps_the_result(queue: SqlQueue) -> None:
    plane = ScriptedPlane()
    job = submit(queue)
    done = await run_to_end(queue, plane, job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.result is not None
    assert done.result["results"] == [{"echo": {"text": "hi"}}]
    principal = plane.requests[0].principal
    assert principal is not None
    assert principal.id == "acme/alice"
    assert principal.scopes == frozenset({"predict", "jobs"})
    assert principal.key_id == "k1"
    assert plane.requests[0].protocol == "jobs"


@pytest.mark.asyncio
async def test_service_errors_retry_with_backoff_until_one_succeeds(queue: SqlQueue) -> None:
    plane = ScriptedPlane(InferenceTimeout("slow"), InferenceTimeout("slow"))
    job = submit(queue, max_attempts=3)
    done = await run_to_end(queue, plane, job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.attempts == 3
    assert len(plane.requests) == 3


@pytest.mark.asyncio
async def test_request_errors_fail_at_once_with_the_error_kept(queue: SqlQueue) -> None:
    plane = ScriptedPlane(ModelNotFound("no model 'echo'", param="model"))
    job = submit(queue, max_attempts=3)
    done = await run_to_end(queue, plane, job.id)
    assert done.status is JobStatus.FAILED
    assert done.attempts == 1
    assert done.error == {
        "type": "ModelNotFound",
        "message": "no model 'echo'",
        "param": "model",
        "retryable": False,
    }


def test_a_rate_limit_retries_no_sooner_than_it_says(queue: SqlQueue) -> None:
    worker = Worker(queue, ScriptedPlane(), FAST)
    job = submit(queue)
    retry = worker.retry_for(job, RateLimited("slow down", retry_after=7.0, limit=1))
    assert retry is not None
    assert retry.defer == 7.0
    assert worker.retry_for(job, ModelNotFound("gone")) is None


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


@pytest.mark.asyncio
async def test_stopping_gives_a_running_job_back_unrun(queue: SqlQueue) -> None:
    worker = Worker(queue, ScriptedPlane(30.0), FAST)
    job = submit(queue)
    worker.start()
    deadline = time.monotonic() + 5
    while await status(queue, job.id) is not JobStatus.RUNNING:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.wait_for(worker.stop(), 5)
    back = queue.get("acme", job.id)
    assert back is not None
    assert back.status is JobStatus.QUEUED
    assert back.attempts == 0


@pytest.mark.asyncio
async def test_heartbeats_keep_the_lease_and_a_cancel_stops_the_attempt(queue: SqlQueue) -> None:
    plane = ScriptedPlane(1.0)  # longer than the 0.3 s lease: only heartbeats keep it
    worker = Worker(queue, plane, FAST)
    job = submit(queue)
    worker.start()
    try:
        done = await settled(queue, job.id)
        assert done.status is JobStatus.SUCCEEDED
        assert done.attempts == 1
        assert len(plane.requests) == 1
        plane.outcomes.append(30.0)
        slow = submit(queue)
        worker.notify()
        deadline = time.monotonic() + 5
        while await status(queue, slow.id) is not JobStatus.RUNNING:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert queue.cancel("acme", slow.id) is not None
        quick = submit(queue)
        worker.notify()
        # the worker notices the lost lease at its next heartbeat and moves on
        assert (await settled(queue, quick.id)).status is JobStatus.SUCCEEDED
    finally:
        await worker.stop()
    final = queue.get("acme", slow.id)
    assert final is not None
    assert final.status is JobStatus.CANCELLED


@pytest.mark.asyncio
async def test_queued_jobs_of_one_model_run_as_one_batch(queue: SqlQueue) -> None:
    plane = ScriptedPlane()
    jobs = [submit(queue) for _ in range(5)] + [submit(queue, model="other")]
    options = WorkerOptions(concurrency=1, claim_batch=4, poll_interval=0.02)
    worker = Worker(queue, plane, options)
    worker.start()
    try:
        done = [await settled(queue, job.id) for job in jobs]
    finally:
        await worker.stop()
    assert all(job.status is JobStatus.SUCCEEDED for job in done)
    # four echo jobs in one call, then the fifth, then the other model's job
    assert plane.calls == [4, 1, 1]
    assert [r.model for r in plane.requests[-1:]] == ["other"]


@pytest.mark.asyncio
async def test_stopping_lets_running_jobs_finish_within_the_drain_time(queue: SqlQueue) -> None:
    worker = Worker(queue, ScriptedPlane(0.3), FAST)
    job = submit(queue)
    worker.start()
    deadline = time.monotonic() + 5
    while await status(queue, job.id) is not JobStatus.RUNNING:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    waiting = submit(queue)
    await asyncio.wait_for(worker.stop(drain=5), 10)
    finished = queue.get("acme", job.id)
    assert finished is not None
    assert finished.status is JobStatus.SUCCEEDED
    untouched = queue.get("acme", waiting.id)  # submitted after stop began: never claimed
    assert untouched is not None
    assert untouched.status is JobStatus.QUEUED
    assert untouched.attempts == 0


@pytest.mark.asyncio
async def test_a_running_job_publishes_its_tokens_on_the_bus(queue: SqlQueue) -> None:
    bus = MemoryBus()
    plane = ScriptedPlane(0.2, tokens=["Hel", "lo"])
    worker = Worker(queue, plane, FAST, bus=bus)
    job = submit(queue)
    async with bus.subscribe(job.id) as events:
        worker.start()
        try:
            first = await asyncio.wait_for(events.get(), 5)
            second = await asyncio.wait_for(events.get(), 5)
            await settled(queue, job.id)
        finally:
            await worker.stop()
    assert [first["text"], second["text"]] == ["Hel", "lo"]
