"""Queue backend contract tests, run against SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from modelhost.jobs import JobStatus, NewJob, QueueBackend, Retry, SqlQueue
from modelhost.registry import make_engine

VISIBILITY = 30.0


class Clock:
    """A clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(engine: Engine, clock: Clock) -> SqlQueue:
    return SqlQueue(engine, clock=clock)


def new(tenant: str = "acme", **kwargs: Any) -> NewJob:
    fields: dict[str, Any] = {
        "tenant": tenant,
        "model": "echo",
        "inputs": [{"text": "hi"}],
        "parameters": {"sleep": 0},
        "principal": {"subject": "alice", "scopes": ["predict", "jobs"]},
    }
    fields.update(kwargs)
    return NewJob(**fields)


def test_enqueue_stores_a_queued_job_as_json(queue: QueueBackend, clock: Clock) -> None:
    job, created = queue.enqueue(new(inputs=[{"text": "a", "n": 1}, {"text": "b"}]))
    assert created
    assert job.status is JobStatus.QUEUED
    assert job.id.startswith("job_")
    assert job.attempts == 0
    assert job.created_at == clock.now
    stored = queue.get("acme", job.id)
    assert stored is not None
    assert stored.inputs == [{"text": "a", "n": 1}, {"text": "b"}]
    assert stored.parameters == {"sleep": 0}
    assert stored.principal == {"subject": "alice", "scopes": ["predict", "jobs"]}


def test_claim_leases_the_job_and_complete_keeps_the_result(
    queue: QueueBackend, clock: Clock
) -> None:
    job, _ = queue.enqueue(new())
    claimed = queue.claim("w1", VISIBILITY)
    assert claimed is not None
    assert claimed.id == job.id
    assert claimed.status is JobStatus.RUNNING
    assert claimed.attempts == 1
    assert claimed.worker == "w1"
    assert claimed.lease_until == clock.now + VISIBILITY
    assert queue.claim("w2", VISIBILITY) is None  # leased: nobody else gets it
    clock.now += 2
    assert queue.complete(job.id, "w1", {"results": [{"echo": {"text": "hi"}}]})
    done = queue.get("acme", job.id)
    assert done is not None
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == {"results": [{"echo": {"text": "hi"}}]}
    assert done.started_at == clock.now - 2
    assert done.finished_at == clock.now
    assert queue.claim("w2", VISIBILITY) is None


def test_claim_takes_higher_priority_first_then_oldest(queue: QueueBackend, clock: Clock) -> None:
    first, _ = queue.enqueue(new())
    clock.now += 1
    second, _ = queue.enqueue(new())
    clock.now += 1
    urgent, _ = queue.enqueue(new(priority=5))
    order = [queue.claim("w", VISIBILITY) for _ in range(3)]
    assert [j.id for j in order if j is not None] == [urgent.id, first.id, second.id]


def test_concurrent_claims_never_hand_one_job_to_two_workers(queue: QueueBackend) -> None:
    ids = {queue.enqueue(new())[0].id for _ in range(8)}
    won: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (job := queue.claim(name, VISIBILITY)) is not None:
            with lock:
                won.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == sorted(ids)


def test_retry_requeues_after_the_defer_then_fails_on_the_last_attempt(
    queue: QueueBackend, clock: Clock
) -> None:
    job, _ = queue.enqueue(new(max_attempts=2))
    assert queue.claim("w", VISIBILITY) is not None
    error = {"type": "InferenceTimeout", "message": "slow", "param": None, "retryable": True}
    again = queue.fail(job.id, "w", error, Retry(defer=10))
    assert again is not None
    assert again.status is JobStatus.QUEUED
    assert again.run_at == clock.now + 10
    assert again.error == error
    assert queue.claim("w", VISIBILITY) is None  # still backing off
    clock.now += 10
    second = queue.claim("w", VISIBILITY)
    assert second is not None
    assert second.attempts == 2
    failed = queue.fail(job.id, "w", error, Retry(defer=10))
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.error == error
    assert failed.finished_at == clock.now


def test_fail_without_retry_fails_at_once(queue: QueueBackend) -> None:
    job, _ = queue.enqueue(new(max_attempts=5))
    assert queue.claim("w", VISIBILITY) is not None
    error = {"type": "ModelNotFound", "message": "no model", "param": None, "retryable": False}
    failed = queue.fail(job.id, "w", error)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.attempts == 1


def test_an_expired_lease_is_reclaimed_and_the_old_worker_loses_it(
    queue: QueueBackend, clock: Clock
) -> None:
    job, _ = queue.enqueue(new())
    assert queue.claim("crashed", VISIBILITY) is not None
    clock.now += VISIBILITY / 2
    assert queue.heartbeat(job.id, "crashed", VISIBILITY)  # renewed while alive
    clock.now += VISIBILITY - 1
    assert queue.claim("w2", VISIBILITY) is None  # the renewed lease still holds
    clock.now += 2
    reclaimed = queue.claim("w2", VISIBILITY)
    assert reclaimed is not None
    assert reclaimed.id == job.id
    assert reclaimed.worker == "w2"
    assert reclaimed.attempts == 2
    assert not queue.heartbeat(job.id, "crashed", VISIBILITY)
    assert not queue.complete(job.id, "crashed", {"results": []})
    assert queue.complete(job.id, "w2", {"results": [1]})


def test_a_lease_lost_on_the_last_attempt_fails_the_job(queue: QueueBackend, clock: Clock) -> None:
    job, _ = queue.enqueue(new(max_attempts=1))
    assert queue.claim("crashed", VISIBILITY) is not None
    clock.now += VISIBILITY + 1
    assert queue.claim("w2", VISIBILITY) is None
    lost = queue.get("acme", job.id)
    assert lost is not None
    assert lost.status is JobStatus.FAILED
    assert lost.error is not None
    assert lost.error["type"] == "WorkerLost"


def test_release_requeues_without_counting_the_attempt(queue: QueueBackend) -> None:
    job, _ = queue.enqueue(new())
    assert queue.claim("w", VISIBILITY) is not None
    assert queue.release(job.id, "w")
    again = queue.claim("w2", VISIBILITY)
    assert again is not None
    assert again.attempts == 1


def test_cancel_stops_queued_and_running_jobs_but_not_finished_ones(queue: QueueBackend) -> None:
    queued, _ = queue.enqueue(new())
    cancelled = queue.cancel("acme", queued.id)
    assert cancelled is not None
    assert cancelled.status is JobStatus.CANCELLED
    assert queue.claim("w", VISIBILITY) is None
    running, _ = queue.enqueue(new())
    assert queue.claim("w", VISIBILITY) is not None
    stopped = queue.cancel("acme", running.id)
    assert stopped is not None
    assert stopped.status is JobStatus.CANCELLED
    assert not queue.heartbeat(running.id, "w", VISIBILITY)
    assert not queue.complete(running.id, "w", {"results": []})
    done, _ = queue.enqueue(new())
    assert queue.claim("w", VISIBILITY) is not None
    assert queue.complete(done.id, "w", {"results": []})
    unchanged = queue.cancel("acme", done.id)
    assert unchanged is not None
    assert unchanged.status is JobStatus.SUCCEEDED


def test_the_same_idempotency_key_returns_the_same_job_per_tenant(queue: QueueBackend) -> None:
    first, created = queue.enqueue(new(idempotency_key="order-17"))
    again, created_again = queue.enqueue(new(idempotency_key="order-17", inputs=[{"text": "x"}]))
    assert created
    assert not created_again
    assert again.id == first.id
    assert again.inputs == [{"text": "hi"}]
    found = queue.find("acme", "order-17")
    assert found is not None
    assert found.id == first.id
    other, other_created = queue.enqueue(new("globex", idempotency_key="order-17"))
    assert other_created
    assert other.id != first.id
    assert queue.find("initech", "order-17") is None


def test_a_tenant_never_sees_or_cancels_another_tenants_job(queue: QueueBackend) -> None:
    job, _ = queue.enqueue(new("acme"))
    assert queue.get("globex", job.id) is None
    assert queue.cancel("globex", job.id) is None
    still = queue.get("acme", job.id)
    assert still is not None
    assert still.status is JobStatus.QUEUED


def test_purge_expires_stale_queued_jobs_and_deletes_old_finished_ones(
    queue: QueueBackend, clock: Clock
) -> None:
    stale, _ = queue.enqueue(new())
    finished, _ = queue.enqueue(new())
    assert queue.cancel("acme", finished.id) is not None
    clock.now += 100
    fresh, _ = queue.enqueue(new())
    assert queue.purge(retention=50) == 2
    expired = queue.get("acme", stale.id)
    assert expired is not None
    assert expired.status is JobStatus.EXPIRED
    assert queue.get("acme", finished.id) is None
    kept = queue.get("acme", fresh.id)
    assert kept is not None
    assert kept.status is JobStatus.QUEUED


def test_jobs_survive_a_new_engine(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    engine = make_engine(url)
    job, _ = SqlQueue(engine).enqueue(new())
    engine.dispose()
    engine = make_engine(url)
    try:
        claimed = SqlQueue(engine).claim("w", VISIBILITY)
    finally:
        engine.dispose()
    assert claimed is not None
    assert claimed.id == job.id
