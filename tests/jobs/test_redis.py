"""What the Redis Streams queue adds to the backend contract (``tests/jobs/test_base.py``):
dispatch through consumer groups, reclaiming, the delayed set, recovery from lost Redis data,
and failing cleanly when Redis is down. Idle times are Redis's own, so leases here run out in
real time."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy.engine import Engine

from modelhost.errors import ServiceError
from modelhost.jobs import Job, NewBatch, Retry
from modelhost.jobs.redis import RedisQueue
from tests.conftest import free_port
from tests.jobs.test_base import ERROR, REDIS_URL, VISIBILITY, Clock, drop_keys, new

SHORT = 0.3


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"mhtest:{uuid.uuid4().hex}"
    yield name
    drop_keys(name)


@pytest.fixture
def queue(engine: Engine, clock: Clock, prefix: str) -> Iterator[RedisQueue]:
    backend = RedisQueue(engine, REDIS_URL, prefix=prefix, clock=clock)
    yield backend
    backend.close()


@pytest.fixture
def doomed_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis server of the test's own, which the test may stop."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url, process
    finally:
        client.close()
        process.terminate()
        process.wait(10)


def pending(queue: RedisQueue, band: str = "normal") -> list[str]:
    """Consumers holding the band's pending entries, oldest entry first."""
    stream = f"{queue.prefix}:{band}"
    # typed Any: redis-py's annotations of these replies differ between its versions
    entries: Any = queue.redis.xpending_range(stream, queue.group, "-", "+", 100)
    return [str(p["consumer"]) for p in entries]


def length(queue: RedisQueue, band: str = "normal") -> int:
    count: Any = queue.redis.xlen(f"{queue.prefix}:{band}")
    return int(count)


def delayed(queue: RedisQueue) -> int:
    count: Any = queue.redis.zcard(queue.delayed)
    return int(count)


def ids(jobs: list[Job]) -> list[str]:
    return [job.id for job in jobs]


def test_jobs_go_to_the_stream_of_their_priority_band(queue: RedisQueue) -> None:
    queue.enqueue(new(priority=7))
    queue.enqueue(new())
    queue.enqueue(new(priority=-1))
    queue.enqueue(new(priority=-100))
    assert [length(queue, band) for band in ("high", "normal", "low")] == [1, 1, 2]


def test_a_dead_consumers_entry_is_reclaimed_after_the_visibility_timeout(
    queue: RedisQueue, clock: Clock
) -> None:
    job, _ = queue.enqueue(new())
    assert queue.claim("dead", SHORT) is not None
    assert queue.claim("alive", SHORT) is None
    assert pending(queue) == ["dead"]
    time.sleep(SHORT + 0.1)
    clock.now += SHORT + 0.1
    reclaimed = queue.claim("alive", SHORT)
    assert reclaimed is not None
    assert reclaimed.id == job.id
    assert reclaimed.attempts == 2
    assert pending(queue) == ["alive"]
    assert queue.complete(job.id, "alive", {"results": []})
    assert pending(queue) == []


def test_heartbeats_keep_the_entry_from_being_reclaimed(queue: RedisQueue, clock: Clock) -> None:
    job, _ = queue.enqueue(new())
    assert queue.claim("w1", SHORT) is not None
    for _ in range(3):
        time.sleep(SHORT / 2)
        clock.now += SHORT / 2
        assert queue.heartbeat(job.id, "w1", SHORT)
    assert queue.claim("w2", SHORT) is None
    assert pending(queue) == ["w1"]


def test_a_retry_waits_in_the_delayed_set_until_it_is_due(queue: RedisQueue, clock: Clock) -> None:
    job, _ = queue.enqueue(new())
    assert queue.claim("w", VISIBILITY) is not None
    assert queue.fail(job.id, "w", ERROR, Retry(defer=5)) is not None
    assert pending(queue) == []
    assert delayed(queue) == 1
    queue.tick()
    assert (delayed(queue), length(queue)) == (1, 1)  # not due yet
    clock.now += 5
    queue.tick()
    assert (delayed(queue), length(queue)) == (0, 2)
    again = queue.claim("w", VISIBILITY)
    assert again is not None
    assert again.attempts == 2


def test_release_publishes_the_job_again_at_once(queue: RedisQueue) -> None:
    job, _ = queue.enqueue(new())
    assert queue.claim("w1", VISIBILITY) is not None
    assert queue.release(job.id, "w1")
    assert pending(queue) == []
    assert length(queue) == 2
    again = queue.claim("w2", VISIBILITY)
    assert again is not None
    assert again.id == job.id


def test_every_unfinished_job_is_republished_after_redis_lost_its_data(
    queue: RedisQueue, clock: Clock, prefix: str
) -> None:
    running, _ = queue.enqueue(new())
    retrying, _ = queue.enqueue(new())
    assert ids(queue.claim_many("w1", VISIBILITY, 2)) == [running.id, retrying.id]
    queue.fail(retrying.id, "w1", ERROR, Retry(defer=50))
    done, _ = queue.enqueue(new())
    assert queue.claim("w1", VISIBILITY) is not None
    assert queue.complete(done.id, "w1", {"results": []})
    clock.now += 1
    low, _ = queue.enqueue(new(priority=-3))
    normal, _ = queue.enqueue(new())
    high, _ = queue.enqueue(new(priority=3))
    drop_keys(prefix)  # Redis restarted empty
    queue.tick()
    assert delayed(queue) == 2  # the running job (until its lease ends) and the retry
    assert [ids(queue.claim_many("w2", VISIBILITY, 5)) for _ in range(4)] == [
        [high.id],
        [normal.id],
        [low.id],
        [],
    ]
    clock.now += 50
    assert sorted(ids(queue.claim_many("w2", VISIBILITY, 5))) == sorted([running.id, retrying.id])


def test_a_claim_after_redis_lost_its_data_sets_the_groups_up_again(
    queue: RedisQueue, prefix: str
) -> None:
    job, _ = queue.enqueue(new())
    drop_keys(prefix)
    claimed = queue.claim("w", VISIBILITY)
    assert claimed is not None
    assert claimed.id == job.id


def test_an_idempotent_repeat_publishes_nothing(queue: RedisQueue) -> None:
    queue.enqueue(new(idempotency_key="k"))
    queue.enqueue(new(idempotency_key="k"))
    assert length(queue) == 1
    batch = NewBatch(tenant="acme", model="echo", idempotency_key="b")
    queue.enqueue_batch(batch, [new(), new(), new()])
    queue.enqueue_batch(batch, [new(), new(), new()])
    assert length(queue, "low") == 3


def test_duplicate_entries_are_harmless(queue: RedisQueue, clock: Clock) -> None:
    job, _ = queue.enqueue(new())
    for _ in range(3):  # as a republish would
        queue.redis.xadd(f"{queue.prefix}:normal", {"job": job.id, "model": "echo"})
    won: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (claimed := queue.claim(name, VISIBILITY)) is not None:
            with lock:
                won.append(name)
            assert claimed.id == job.id

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert pending(queue) == won  # the duplicates were acknowledged
    assert delayed(queue) == 1  # looked at again when the winner's lease ends
    assert queue.complete(job.id, won[0], {"results": []})
    clock.now += VISIBILITY
    assert queue.claim("w", VISIBILITY) is None
    assert (delayed(queue), pending(queue)) == (0, [])


def test_entries_of_other_models_are_handed_back_in_their_place(queue: RedisQueue) -> None:
    a, _ = queue.enqueue(new())
    b, _ = queue.enqueue(new(model="other"))
    c, _ = queue.enqueue(new())
    assert ids(queue.claim_many("w1", VISIBILITY, 3)) == [a.id, c.id]
    d, _ = queue.enqueue(new(model="other"))
    assert ids(queue.claim_many("w2", VISIBILITY, 5)) == [b.id, d.id]
    assert pending(queue) == ["w1", "w2", "w1", "w2"]


def test_purge_trims_acknowledged_entries(queue: RedisQueue) -> None:
    jobs = [queue.enqueue(new())[0] for _ in range(5)]
    for _ in range(4):
        assert queue.claim("w", VISIBILITY) is not None
    for job in jobs[:3]:
        assert queue.complete(job.id, "w", {"results": []})
    queue.purge(retention=3600)
    assert length(queue) == 2  # the running job's entry and the unread one
    assert ids(queue.claim_many("w", VISIBILITY, 5)) == [jobs[4].id]


def test_a_second_queue_object_shares_the_streams(
    queue: RedisQueue, engine: Engine, clock: Clock, prefix: str
) -> None:
    job, _ = queue.enqueue(new())
    other = RedisQueue(engine, REDIS_URL, prefix=prefix, clock=clock)
    try:
        assert length(other) == 1  # the groups existed: nothing republished
        claimed = other.claim("w", VISIBILITY)
        assert claimed is not None
        assert claimed.id == job.id
        assert other.complete(job.id, "w", {"results": []})
    finally:
        other.close()
    assert pending(queue) == []


def test_enqueue_fails_cleanly_with_503_when_redis_is_down(
    engine: Engine, clock: Clock, doomed_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, server = doomed_redis
    queue = RedisQueue(engine, url, clock=clock)
    try:
        kept, _ = queue.enqueue(new())
        server.terminate()
        server.wait(10)
        with pytest.raises(ServiceError):
            queue.enqueue(new(idempotency_key="k"))
        with pytest.raises(ServiceError):
            queue.enqueue_batch(NewBatch(tenant="acme", model="echo"), [new(), new()])
        with pytest.raises(ServiceError):
            queue.claim("w", VISIBILITY)
        assert [j.id for j in queue.list_jobs("acme")] == [kept.id]  # nothing half-stored
        assert queue.find("acme", "k") is None
        assert queue.list_batches("acme") == []
    finally:
        queue.close()


def test_a_queue_on_an_unreachable_redis_refuses_to_start(engine: Engine) -> None:
    with pytest.raises(ServiceError, match="unavailable"):
        RedisQueue(engine, f"redis://127.0.0.1:{free_port()}/0")
