"""What the SQL queue adds to the backend contract (``tests/jobs/test_base.py``): exact claims
by id for an outside dispatcher, and jobs kept across restarts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from modelhost.jobs import JobStatus, Retry, SqlQueue
from modelhost.registry import make_engine
from tests.jobs.test_base import ERROR, VISIBILITY, Clock, new


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(engine: Engine, clock: Clock) -> Iterator[SqlQueue]:
    backend = SqlQueue(engine, clock=clock)
    yield backend
    backend.close()


def test_claim_ids_leases_only_the_named_jobs_that_can_run(queue: SqlQueue, clock: Clock) -> None:
    runnable, _ = queue.enqueue(new())
    cancelled, _ = queue.enqueue(new())
    queue.cancel("acme", cancelled.id)
    backing_off, _ = queue.enqueue(new())
    held, _ = queue.enqueue(new())
    lost, _ = queue.enqueue(new(max_attempts=1))
    assert [j.id for j in queue.claim_ids("w0", VISIBILITY, [backing_off.id])] == [backing_off.id]
    queue.fail(backing_off.id, "w0", ERROR, Retry(defer=100))
    assert [j.id for j in queue.claim_ids("w0", 5, [lost.id])] == [lost.id]
    clock.now += 10  # the lease on lost's only attempt ran out
    assert [j.id for j in queue.claim_ids("other", VISIBILITY, [held.id])] == [held.id]
    named = [cancelled.id, backing_off.id, held.id, lost.id, "job_unknown", runnable.id]
    won = queue.claim_ids("w", VISIBILITY, named)
    assert [j.id for j in won] == [runnable.id]
    assert won[0].worker == "w"
    assert queue.claim_ids("w", VISIBILITY, []) == []
    failed = queue.get("acme", lost.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error["type"] == "WorkerLost"
    still = queue.get("acme", held.id)
    assert still is not None
    assert still.worker == "other"


def test_claim_ids_takes_over_an_expired_lease(queue: SqlQueue, clock: Clock) -> None:
    job, _ = queue.enqueue(new())
    assert queue.claim_ids("crashed", VISIBILITY, [job.id])
    clock.now += VISIBILITY + 1
    taken = queue.claim_ids("w", VISIBILITY, [job.id])
    assert [j.attempts for j in taken] == [2]
    assert not queue.heartbeat(job.id, "crashed", VISIBILITY)


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
