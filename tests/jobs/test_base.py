"""Queue backend contract tests (``modelhost.jobs.base``), run against every backend: the SQL
queue and the Redis Streams queue, each over SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy.engine import Engine

from modelhost.jobs import (
    BatchStatus,
    EventKind,
    Job,
    JobStatus,
    NewBatch,
    NewJob,
    QueueBackend,
    Retry,
    SqlQueue,
)
from modelhost.jobs.redis import RedisQueue

VISIBILITY = 30.0
#: A lease short enough to run out for real: Redis measures an entry's idle time with its own
#: clock, which the fake clock cannot move.
SHORT = 0.5
REDIS_URL = "redis://127.0.0.1:6379/15"
ERROR = {"type": "InferenceTimeout", "message": "slow", "param": None, "retryable": True}


class Clock:
    """A clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Lapse:
    """Lets time pass: the fake clock always, the real one too when the backend needs it."""

    def __init__(self, clock: Clock, real: bool) -> None:
        self.clock = clock
        self.real = real

    def __call__(self, seconds: float) -> None:
        self.clock.now += seconds
        if self.real:
            time.sleep(seconds)


def drop_keys(prefix: str) -> None:
    """Delete every Redis key a test queue under ``prefix`` made."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sql", "redis"])
def queue(request: pytest.FixtureRequest, engine: Engine, clock: Clock) -> Iterator[SqlQueue]:
    """Each backend over the ``engine`` fixture's databases; the Redis one under a prefix of
    its own in db 15, deleted afterwards."""
    if request.param == "sql":
        backend = SqlQueue(engine, clock=clock)
        yield backend
        backend.close()
        return
    prefix = f"mhtest:{uuid.uuid4().hex}"
    backend = RedisQueue(engine, REDIS_URL, prefix=prefix, clock=clock)
    try:
        yield backend
    finally:
        backend.close()
        drop_keys(prefix)


@pytest.fixture
def lapse(queue: QueueBackend, clock: Clock) -> Lapse:
    return Lapse(clock, real=isinstance(queue, RedisQueue))


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


def drain(queue: QueueBackend, limit: int = 10) -> list[list[Job]]:
    """Every ``claim_many`` answer until the queue is idle."""
    claims = []
    while jobs := queue.claim_many("w", VISIBILITY, limit):
        claims.append(jobs)
    return claims


def kinds(queue: QueueBackend, job_id: str, tenant: str = "acme") -> list[EventKind]:
    return [event.kind for event in queue.events(tenant, job_id)]


# -- submitting and claiming -----------------------------------------------------------------


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
    clock.now += 1
    background, _ = queue.enqueue(new(priority=-5))
    order = [queue.claim("w", VISIBILITY) for _ in range(4)]
    assert [j.id for j in order if j is not None] == [urgent.id, first.id, second.id, background.id]


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


def test_claim_many_takes_more_jobs_of_the_first_jobs_model_and_version_only(
    queue: QueueBackend, clock: Clock
) -> None:
    submitted = []
    for model, version in [
        ("echo", None),
        ("other", None),
        ("echo", None),
        ("echo", "2.0.0"),
        ("echo", None),
    ]:
        submitted.append(queue.enqueue(new(model=model, version=version))[0])
        clock.now += 1
    a, b, c, d, e = (job.id for job in submitted)
    claims = drain(queue)
    assert [[job.id for job in jobs] for jobs in claims] == [[a, c, e], [b], [d]]
    assert all(job.status is JobStatus.RUNNING and job.worker == "w" for job in claims[0])


def test_complete_many_succeeds_the_jobs_still_leased_once_each(queue: QueueBackend) -> None:
    ids = [queue.enqueue(new(inputs=[{"text": f"{n}"}]))[0].id for n in range(3)]
    claimed = queue.claim_many("w1", VISIBILITY, 3)
    assert sorted(job.id for job in claimed) == sorted(ids)
    assert queue.cancel("acme", ids[1]) is not None  # its lease is gone
    results = [(job_id, {"results": [n]}) for n, job_id in enumerate(ids)]
    assert queue.complete_many("w1", results) == [ids[0], ids[2]]
    assert queue.complete_many("w1", results) == []  # a second write changes nothing
    for n, job_id in enumerate(ids):
        job = queue.get("acme", job_id)
        assert job is not None
        expected = JobStatus.CANCELLED if n == 1 else JobStatus.SUCCEEDED
        assert job.status is expected
        kinds = [event.kind for event in queue.events("acme", job_id)]
        assert kinds.count(EventKind.SUCCEEDED) == (0 if n == 1 else 1)
    assert queue.claim_many("w2", VISIBILITY, 3) == []  # nothing left to hand out


def test_claim_many_respects_the_limit_and_priority(queue: QueueBackend, clock: Clock) -> None:
    low, _ = queue.enqueue(new(priority=-1))
    clock.now += 1
    plain = [queue.enqueue(new())[0] for _ in range(3)]
    clock.now += 1
    other, _ = queue.enqueue(new(model="other"))
    clock.now += 1
    urgent, _ = queue.enqueue(new(priority=3))
    claims = drain(queue, limit=2)
    assert all(len(jobs) <= 2 for jobs in claims)
    for jobs in claims:
        assert len({(job.model, job.version) for job in jobs}) == 1
    flat = [job.id for jobs in claims for job in jobs]
    assert flat[0] == urgent.id
    assert sorted(flat) == sorted([low.id, other.id, urgent.id, *(j.id for j in plain)])
    assert flat.index(other.id) > flat.index(plain[0].id)  # older jobs of the band first
    assert flat[-1] == low.id


def test_concurrent_claim_many_never_hands_one_job_to_two_workers(queue: QueueBackend) -> None:
    models = itertools.cycle(["echo", "other", "echo"])
    ids = {queue.enqueue(new(model=next(models)))[0].id for _ in range(24)}
    won: list[str] = []
    batches: list[set[str]] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while jobs := queue.claim_many(name, VISIBILITY, 3):
            with lock:
                won.extend(job.id for job in jobs)
                batches.append({job.model for job in jobs})

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == sorted(ids)
    assert all(len(models) == 1 for models in batches)


# -- attempts, leases, retries ---------------------------------------------------------------


def test_retry_requeues_after_the_defer_then_fails_on_the_last_attempt(
    queue: QueueBackend, clock: Clock
) -> None:
    job, _ = queue.enqueue(new(max_attempts=2))
    assert queue.claim("w", VISIBILITY) is not None
    again = queue.fail(job.id, "w", ERROR, Retry(defer=10))
    assert again is not None
    assert again.status is JobStatus.QUEUED
    assert again.run_at == clock.now + 10
    assert again.error == ERROR
    assert queue.claim("w", VISIBILITY) is None  # still backing off
    clock.now += 10
    second = queue.claim("w", VISIBILITY)
    assert second is not None
    assert second.attempts == 2
    failed = queue.fail(job.id, "w", ERROR, Retry(defer=10))
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.error == ERROR
    assert failed.finished_at == clock.now
    assert queue.claim("w", VISIBILITY) is None


def test_fail_without_retry_fails_at_once(queue: QueueBackend) -> None:
    job, _ = queue.enqueue(new(max_attempts=5))
    assert queue.claim("w", VISIBILITY) is not None
    error = {"type": "ModelNotFound", "message": "no model", "param": None, "retryable": False}
    failed = queue.fail(job.id, "w", error)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.attempts == 1
    assert queue.fail(job.id, "w", error) is None  # no lease any more


def test_an_expired_lease_is_reclaimed_and_the_old_worker_loses_it(
    queue: QueueBackend, lapse: Lapse
) -> None:
    job, _ = queue.enqueue(new())
    assert queue.claim("crashed", SHORT) is not None
    lapse(SHORT / 2)
    assert queue.heartbeat(job.id, "crashed", SHORT)  # renewed while alive
    lapse(SHORT / 2)
    assert queue.claim("w2", SHORT) is None  # the renewed lease still holds
    lapse(SHORT * 0.7)
    reclaimed = queue.claim("w2", SHORT)
    assert reclaimed is not None
    assert reclaimed.id == job.id
    assert reclaimed.worker == "w2"
    assert reclaimed.attempts == 2
    assert not queue.heartbeat(job.id, "crashed", SHORT)
    assert not queue.complete(job.id, "crashed", {"results": []})
    assert queue.complete(job.id, "w2", {"results": [1]})


def test_a_lease_lost_on_the_last_attempt_fails_the_job(queue: QueueBackend, lapse: Lapse) -> None:
    job, _ = queue.enqueue(new(max_attempts=1))
    assert queue.claim("crashed", SHORT) is not None
    lapse(SHORT * 1.4)
    assert queue.claim("w2", SHORT) is None
    lost = queue.get("acme", job.id)
    assert lost is not None
    assert lost.status is JobStatus.FAILED
    assert lost.error is not None
    assert lost.error["type"] == "WorkerLost"


def test_release_requeues_without_counting_the_attempt(queue: QueueBackend) -> None:
    job, _ = queue.enqueue(new())
    assert queue.claim("w", VISIBILITY) is not None
    assert queue.release(job.id, "w")
    assert not queue.release(job.id, "w")
    again = queue.claim("w2", VISIBILITY)
    assert again is not None
    assert again.id == job.id
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
    claimed = [job.id for jobs in drain(queue, limit=1) for job in jobs]
    assert sorted(claimed) == sorted([first.id, other.id])  # each job dispatched once


def test_a_tenant_never_sees_or_cancels_another_tenants_job(queue: QueueBackend) -> None:
    job, _ = queue.enqueue(new("acme"))
    assert queue.get("globex", job.id) is None
    assert queue.cancel("globex", job.id) is None
    assert queue.events("globex", job.id) == []
    assert queue.list_jobs("globex") == []
    still = queue.get("acme", job.id)
    assert still is not None
    assert still.status is JobStatus.QUEUED


# -- history and listing ---------------------------------------------------------------------


def test_events_record_every_change_in_order(queue: QueueBackend, clock: Clock) -> None:
    job, _ = queue.enqueue(new(max_attempts=3))
    assert queue.claim("w1", VISIBILITY) is not None
    queue.fail(job.id, "w1", ERROR, Retry(defer=5))
    clock.now += 5
    assert queue.claim("w2", VISIBILITY) is not None
    assert queue.release(job.id, "w2")
    assert queue.claim("w3", VISIBILITY) is not None
    assert queue.complete(job.id, "w3", {"results": []})
    events = queue.events("acme", job.id)
    assert [e.kind for e in events] == [
        EventKind.QUEUED,
        EventKind.RUNNING,
        EventKind.RETRY,
        EventKind.RUNNING,
        EventKind.RELEASED,
        EventKind.RUNNING,
        EventKind.SUCCEEDED,
    ]
    assert [e.attempt for e in events] == [0, 1, 1, 2, 1, 2, 2]
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    assert all(e.job_id == job.id for e in events)
    assert events[1].detail == {"worker": "w1"}
    assert events[2].detail == {"error": ERROR, "run_at": clock.now}
    assert queue.events("acme", job.id, after=events[3].seq) == events[4:]
    assert queue.events("acme", job.id, after=events[0].seq, limit=2) == events[1:3]
    assert queue.events("globex", job.id) == []


def test_events_of_failed_cancelled_and_expired_jobs(queue: QueueBackend, clock: Clock) -> None:
    stale, _ = queue.enqueue(new(priority=-1))
    clock.now += 100
    failed, _ = queue.enqueue(new(max_attempts=1))
    assert queue.claim("w", VISIBILITY) is not None
    queue.fail(failed.id, "w", ERROR, Retry(defer=1))  # no attempts left: fails
    cancelled, _ = queue.enqueue(new())
    queue.cancel("acme", cancelled.id)
    assert queue.purge(retention=50) == 1
    assert kinds(queue, failed.id) == [EventKind.QUEUED, EventKind.RUNNING, EventKind.FAILED]
    assert queue.events("acme", failed.id)[-1].detail == {"error": ERROR}
    assert kinds(queue, cancelled.id) == [EventKind.QUEUED, EventKind.CANCELLED]
    assert kinds(queue, stale.id) == [EventKind.QUEUED, EventKind.EXPIRED]


def test_list_jobs_pages_the_tenants_own_jobs_newest_first(
    queue: QueueBackend, clock: Clock
) -> None:
    jobs = []
    for n in range(5):
        jobs.append(queue.enqueue(new(model="echo" if n % 2 == 0 else "other"))[0])
        clock.now += 1
    queue.enqueue(new("globex"))
    queue.enqueue_batch(NewBatch(tenant="acme", model="echo"), [new(), new()])
    assert queue.cancel("acme", jobs[1].id) is not None
    newest_first = [j.id for j in reversed(jobs)]
    assert [j.id for j in queue.list_jobs("acme")] == newest_first
    page = queue.list_jobs("acme", limit=2)
    assert [j.id for j in page] == newest_first[:2]
    rest = queue.list_jobs("acme", limit=10, before=page[-1].id)
    assert [j.id for j in rest] == newest_first[2:]
    assert [j.id for j in queue.list_jobs("acme", model="other")] == [jobs[3].id, jobs[1].id]
    cancelled = queue.list_jobs("acme", status=JobStatus.CANCELLED)
    assert [j.id for j in cancelled] == [jobs[1].id]
    queued = queue.list_jobs("acme", status=JobStatus.QUEUED, model="echo")
    assert [j.id for j in queued] == [jobs[4].id, jobs[2].id, jobs[0].id]
    assert queue.list_jobs("acme", before=queue.list_jobs("globex")[0].id) == []


# -- batches ---------------------------------------------------------------------------------


def items(count: int, tenant: str = "acme") -> list[NewJob]:
    return [new(tenant, inputs=[{"text": str(n)}], custom_id=f"row-{n}") for n in range(count)]


def test_a_batch_counts_its_items_as_they_run(queue: QueueBackend, clock: Clock) -> None:
    batch, created = queue.enqueue_batch(
        NewBatch(tenant="acme", model="echo", metadata={"source": "upload.jsonl"}), items(3)
    )
    assert created
    assert batch.id.startswith("batch_")
    assert batch.total == 3
    assert batch.counts == {"queued": 3}
    assert batch.status is BatchStatus.QUEUED
    assert batch.started_at is None
    assert batch.metadata == {"source": "upload.jsonl"}
    listed = queue.batch_items("acme", batch.id)
    assert [j.item for j in listed] == [0, 1, 2]
    assert [j.custom_id for j in listed] == ["row-0", "row-1", "row-2"]
    assert [j.inputs for j in listed] == [[{"text": "0"}], [{"text": "1"}], [{"text": "2"}]]
    assert all(j.batch_id == batch.id and j.priority == batch.priority for j in listed)
    assert kinds(queue, listed[0].id) == [EventKind.QUEUED]
    first = queue.claim("w", VISIBILITY)
    assert first is not None
    assert first.id == listed[0].id  # items run in input order
    clock.now += 1
    progress = queue.get_batch("acme", batch.id)
    assert progress is not None
    assert progress.status is BatchStatus.IN_PROGRESS
    assert progress.started_at == clock.now - 1
    assert queue.complete(first.id, "w", {"results": [1]})
    for _ in range(2):
        job = queue.claim("w", VISIBILITY)
        assert job is not None
        clock.now += 1
        queue.fail(job.id, "w", ERROR)
    done = queue.get_batch("acme", batch.id)
    assert done is not None
    assert done.counts == {"succeeded": 1, "failed": 2}
    assert (done.completed, done.failed) == (1, 2)
    assert done.status is BatchStatus.COMPLETED
    assert done.finished_at == clock.now
    assert [j.item for j in queue.batch_items("acme", batch.id, offset=1, limit=1)] == [1]
    assert queue.get_batch("globex", batch.id) is None
    assert queue.batch_items("globex", batch.id) == []


def test_cancel_batch_cancels_unfinished_items_and_keeps_finished_results(
    queue: QueueBackend,
) -> None:
    batch, _ = queue.enqueue_batch(NewBatch(tenant="acme", model="echo"), items(3))
    first = queue.claim("w", VISIBILITY)
    second = queue.claim("w", VISIBILITY)
    assert first is not None
    assert second is not None
    assert queue.complete(first.id, "w", {"results": ["kept"]})
    assert queue.cancel_batch("globex", batch.id) is None
    cancelled = queue.cancel_batch("acme", batch.id)
    assert cancelled is not None
    assert cancelled.status is BatchStatus.CANCELLED
    assert cancelled.counts == {"succeeded": 1, "cancelled": 2}
    assert cancelled.cancelled_at is not None
    assert cancelled.finished_at is not None
    by_item = {j.item: j for j in queue.batch_items("acme", batch.id)}
    assert by_item[0].result == {"results": ["kept"]}
    assert not queue.heartbeat(second.id, "w", VISIBILITY)  # the running item stops
    assert queue.claim("w", VISIBILITY) is None
    assert queue.cancel_batch("acme", "batch_unknown") is None


def test_cancelling_a_completed_batch_changes_nothing(queue: QueueBackend) -> None:
    batch, _ = queue.enqueue_batch(NewBatch(tenant="acme", model="echo"), items(1))
    job = queue.claim("w", VISIBILITY)
    assert job is not None
    assert queue.complete(job.id, "w", {"results": []})
    unchanged = queue.cancel_batch("acme", batch.id)
    assert unchanged is not None
    assert unchanged.status is BatchStatus.COMPLETED
    assert unchanged.cancelled_at is None


def test_a_batch_idempotency_key_returns_the_first_batch(queue: QueueBackend, clock: Clock) -> None:
    first, created = queue.enqueue_batch(
        NewBatch(tenant="acme", model="echo", idempotency_key="upload-1"), items(2)
    )
    clock.now += 1
    again, created_again = queue.enqueue_batch(
        NewBatch(tenant="acme", model="echo", idempotency_key="upload-1"), items(5)
    )
    other, other_created = queue.enqueue_batch(
        NewBatch(tenant="globex", model="echo", idempotency_key="upload-1"), items(1, "globex")
    )
    assert created
    assert not created_again
    assert other_created
    assert again.id == first.id
    assert again.total == 2
    assert other.id != first.id
    assert [b.id for b in queue.list_batches("acme")] == [first.id]
    assert [b.id for b in queue.list_batches("globex")] == [other.id]
    claimed = [job.id for jobs in drain(queue, limit=1) for job in jobs]
    assert len(claimed) == 3  # the repeat added no items


def test_list_batches_newest_first_with_paging(queue: QueueBackend, clock: Clock) -> None:
    made = []
    for _ in range(3):
        made.append(queue.enqueue_batch(NewBatch(tenant="acme", model="echo"), items(1))[0])
        clock.now += 1
    newest_first = [b.id for b in reversed(made)]
    assert [b.id for b in queue.list_batches("acme")] == newest_first
    page = queue.list_batches("acme", limit=1)
    assert [b.id for b in queue.list_batches("acme", before=page[0].id)] == newest_first[1:]


# -- webhooks --------------------------------------------------------------------------------


def attempt(at: float, status_code: int | None, error: str | None = None) -> dict[str, Any]:
    return {"at": at, "status_code": status_code, "error": error, "duration_ms": 3}


def finish(queue: QueueBackend) -> Job:
    """A job run to success (the next one the queue hands out)."""
    job = queue.claim("w", VISIBILITY)
    assert job is not None
    assert queue.complete(job.id, "w", {"results": []})
    return job


def test_a_webhook_is_due_once_the_job_finishes_and_leased_to_one_deliverer(
    queue: QueueBackend, clock: Clock
) -> None:
    plain, _ = queue.enqueue(new())  # no callback_url: never due
    finish(queue)
    job, _ = queue.enqueue(new(callback_url="https://hooks.example/done"))
    claimed = queue.claim("w", VISIBILITY)
    assert claimed is not None
    assert claimed.webhook == {"state": "waiting", "attempts": []}
    assert queue.claim_webhooks("d", 10, 10) == []  # not due before the job finishes
    assert queue.complete(job.id, "w", {"results": []})
    plain_done = queue.get("acme", plain.id)
    assert plain_done is not None
    assert plain_done.webhook is None
    due = queue.claim_webhooks("d1", 10, 10)
    assert [j.id for j in due] == [job.id]
    assert due[0].webhook == {"state": "pending", "attempts": []}
    assert queue.claim_webhooks("d2", 10, 10) == []  # leased to d1
    clock.now += 10
    retaken = queue.claim_webhooks("d2", 10, 10)  # d1's lease ran out
    assert [j.id for j in retaken] == [job.id]
    first = attempt(clock.now, 500, "server error")
    queue.record_webhook(job.id, first, delivered=False, retry_at=clock.now + 30)
    assert queue.claim_webhooks("d2", 10, 10) == []  # backing off
    clock.now += 30
    assert [j.id for j in queue.claim_webhooks("d2", 10, 10)] == [job.id]
    second = attempt(clock.now, 204)
    queue.record_webhook(job.id, second, delivered=True, retry_at=None)
    delivered = queue.get("acme", job.id)
    assert delivered is not None
    assert delivered.webhook == {"state": "delivered", "attempts": [first, second]}
    clock.now += 1000
    assert queue.claim_webhooks("d2", 10, 10) == []
    webhook_events = [e for e in queue.events("acme", job.id) if e.kind is EventKind.WEBHOOK]
    assert [e.detail["state"] for e in webhook_events] == ["pending", "delivered"]
    assert webhook_events[0].detail["status_code"] == 500


def test_a_webhook_given_up_is_failed_and_never_due_again(
    queue: QueueBackend, clock: Clock
) -> None:
    queue.enqueue(new(callback_url="https://hooks.example/done"))
    job = finish(queue)
    assert [j.id for j in queue.claim_webhooks("d", 10, 10)] == [job.id]
    last = attempt(clock.now, None, "connection refused")
    queue.record_webhook(job.id, last, delivered=False, retry_at=None)
    given_up = queue.get("acme", job.id)
    assert given_up is not None
    assert given_up.webhook == {"state": "failed", "attempts": [last]}
    clock.now += 1000
    assert queue.claim_webhooks("d", 10, 10) == []
    queue.record_webhook(job.id, last, delivered=True, retry_at=None)  # too late: ignored
    still = queue.get("acme", job.id)
    assert still is not None
    assert still.webhook == {"state": "failed", "attempts": [last]}


def test_cancelled_and_failed_jobs_call_back_too(queue: QueueBackend) -> None:
    cancelled, _ = queue.enqueue(new(callback_url="https://hooks.example/done"))
    queue.cancel("acme", cancelled.id)
    failed, _ = queue.enqueue(new(callback_url="https://hooks.example/done", max_attempts=1))
    assert queue.claim("w", VISIBILITY) is not None
    queue.fail(failed.id, "w", ERROR, Retry(defer=1))
    due = {j.id: j.status for j in queue.claim_webhooks("d", 10, 10)}
    assert due == {cancelled.id: JobStatus.CANCELLED, failed.id: JobStatus.FAILED}


# -- upkeep ----------------------------------------------------------------------------------


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
    assert kinds(queue, stale.id)[-1] is EventKind.EXPIRED
    assert queue.get("acme", finished.id) is None
    assert queue.events("acme", finished.id) == []
    kept = queue.get("acme", fresh.id)
    assert kept is not None
    assert kept.status is JobStatus.QUEUED
    claimed = queue.claim("w", VISIBILITY)
    assert claimed is not None
    assert claimed.id == fresh.id


def test_purge_keeps_finished_jobs_whose_webhook_is_still_pending(
    queue: QueueBackend, clock: Clock
) -> None:
    queue.enqueue(new(callback_url="https://hooks.example/done"))
    pending = finish(queue)
    queue.enqueue(new(callback_url="https://hooks.example/done"))
    delivered = finish(queue)
    assert {j.id for j in queue.claim_webhooks("d", 10, 10)} == {pending.id, delivered.id}
    queue.record_webhook(delivered.id, attempt(clock.now, 200), delivered=True, retry_at=None)
    batch, _ = queue.enqueue_batch(NewBatch(tenant="acme", model="echo"), items(1))
    item = queue.claim("w", VISIBILITY)
    assert item is not None
    assert queue.complete(item.id, "w", {"results": []})
    clock.now += 100
    assert queue.purge(retention=50) == 2
    assert queue.get("acme", delivered.id) is None
    assert queue.get("acme", item.id) is None
    assert queue.get_batch("acme", batch.id) is None  # no items left: gone too
    kept = queue.get("acme", pending.id)
    assert kept is not None
    assert kept.webhook is not None
    assert kept.webhook["state"] == "pending"
    assert kinds(queue, pending.id)[0] is EventKind.QUEUED
