"""``modelhost worker`` processes over both queue backends: a worker killed with SIGKILL
mid-run, SIGTERM draining, and jobs surviving a restart of every worker."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelhost.jobs import EventKind, JobStatus, NewJob, QueueBackend, SqlQueue
from modelhost.jobs.tables import JobRow
from modelhost.registry import make_engine
from tests.conftest import modelhost_env, run_cli, write_python_model

REDIS_URL = "redis://127.0.0.1:6379/14"
TENANT = "acme"


@dataclass
class Setup:
    """A modelhost home with the echo model, the queue seen from the test, and the
    environment worker processes run with."""

    home: Path
    queue: QueueBackend
    env: dict[str, str]


@pytest.fixture(params=["sql", "redis"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    home = tmp_path / "home"
    model = write_python_model(tmp_path / "models", "echo")
    pushed = run_cli(home, "models", "push", str(model), "--stage", "production")
    assert pushed.returncode == 0, pushed.stderr
    env = modelhost_env(home)
    env.update(
        {
            "MODELHOST_DEMO__ENABLED": "false",
            "MODELHOST_JOBS__WORKERS": "2",
            "MODELHOST_JOBS__CLAIM_BATCH": "4",
            "MODELHOST_JOBS__VISIBILITY_TIMEOUT_S": "2",
            "MODELHOST_JOBS__POLL_INTERVAL_S": "0.05",
            "MODELHOST_JOBS__RETRY_BASE_S": "0.05",
            "MODELHOST_JOBS__BACKEND": request.param,
        }
    )
    engine = make_engine(f"sqlite:///{home / 'modelhost.db'}")
    queue: QueueBackend
    if request.param == "redis":
        from modelhost.jobs.redis import RedisQueue

        prefix = f"test:{uuid.uuid4().hex[:8]}"
        env["MODELHOST_REDIS_URL"] = REDIS_URL
        env["MODELHOST_JOBS__REDIS_PREFIX"] = prefix
        queue = RedisQueue(engine, REDIS_URL, prefix=prefix)
    else:
        queue = SqlQueue(engine)
    yield Setup(home, queue, env)
    if request.param == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{env['MODELHOST_JOBS__REDIS_PREFIX']}*"):
            client.delete(key)
        client.close()
    queue.close()
    engine.dispose()


def start_worker(setup: Setup, name: str) -> subprocess.Popen[bytes]:
    """A real ``modelhost worker`` process, once it says it is ready."""
    log = setup.home / f"{name}.log"
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "modelhost.cli", "worker"],
        env=setup.env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    deadline = time.monotonic() + 60
    while "ready" not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    """Signal a worker and wait for it to exit; its exit code."""
    if process.poll() is None:
        process.send_signal(signum)
    return process.wait(timeout=60)


def submit(queue: QueueBackend, count: int, sleep: float) -> list[str]:
    ids = []
    for n in range(count):
        job, _ = queue.enqueue(
            NewJob(
                tenant=TENANT,
                model="echo",
                inputs=[{"text": f"job-{n}"}],
                parameters={"sleep": sleep},
                principal={"subject": "tester", "scopes": ["predict", "jobs"]},
            )
        )
        ids.append(job.id)
    return ids


def wait_all(queue: QueueBackend, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} of {len(ids)} jobs unfinished"
        for job_id in list(pending):
            job = queue.get(TENANT, job_id)
            assert job is not None
            if job.status.terminal:
                pending.discard(job_id)
        time.sleep(0.1)


def running_on(queue: SqlQueue, pid: int) -> int:
    """Jobs leased right now by the worker process ``pid``."""
    with Session(queue.engine) as session:
        workers = session.scalars(
            select(JobRow.worker).where(JobRow.status == JobStatus.RUNNING.value)
        ).all()
    return sum(1 for worker in workers if worker and f":{pid}:" in worker)


def assert_each_done_once(queue: QueueBackend, ids: list[str]) -> list[int]:
    """Every job succeeded with its own result, recorded by exactly one completion; returns
    the attempts each took."""
    attempts = []
    for n, job_id in enumerate(ids):
        job = queue.get(TENANT, job_id)
        assert job is not None
        assert job.status is JobStatus.SUCCEEDED, (job_id, job.status, job.error)
        assert job.result is not None
        assert job.result["results"] == [{"echo": {"text": f"job-{n}"}}]
        kinds = [event.kind for event in queue.events(TENANT, job_id)]
        assert kinds.count(EventKind.SUCCEEDED) == 1, kinds
        attempts.append(job.attempts)
    return attempts


def test_a_worker_killed_mid_run_loses_no_job_and_none_completes_twice(setup: Setup) -> None:
    assert isinstance(setup.queue, SqlQueue)
    first = start_worker(setup, "first")
    second = start_worker(setup, "second")
    try:
        ids = submit(setup.queue, 200, sleep=0.1)
        deadline = time.monotonic() + 60
        while running_on(setup.queue, first.pid) == 0:  # kill it while it holds jobs
            assert time.monotonic() < deadline, "the first worker never ran a job"
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        wait_all(setup.queue, ids, timeout=120)
    finally:
        stop(first, signal.SIGKILL)
        assert stop(second) == 0
    attempts = assert_each_done_once(setup.queue, ids)
    # the killed worker's jobs ran again on the survivor once their lease ran out
    assert max(attempts) >= 2


def test_sigterm_finishes_running_jobs_and_a_restart_runs_the_queued_rest(setup: Setup) -> None:
    ids = submit(setup.queue, 60, sleep=0.1)  # queued while no worker runs
    worker = start_worker(setup, "draining")
    deadline = time.monotonic() + 30
    while not any(
        (job := setup.queue.get(TENANT, job_id)) is not None and job.status.terminal
        for job_id in ids
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert stop(worker) == 0
    after_stop = [setup.queue.get(TENANT, job_id) for job_id in ids]
    assert all(job is not None for job in after_stop)
    statuses = {job.status for job in after_stop if job is not None}
    assert JobStatus.RUNNING not in statuses  # drained: nothing left half-done
    assert statuses <= {JobStatus.SUCCEEDED, JobStatus.QUEUED}
    assert JobStatus.QUEUED in statuses  # it stopped taking new work
    restarted = start_worker(setup, "restarted")
    try:
        wait_all(setup.queue, ids, timeout=60)
    finally:
        assert stop(restarted) == 0
    assert set(assert_each_done_once(setup.queue, ids)) == {1}


def test_the_worker_refuses_the_redis_backend_without_a_redis_url(tmp_path: Path) -> None:
    env = modelhost_env(tmp_path / "home")
    env.update({"MODELHOST_JOBS__BACKEND": "redis", "MODELHOST_DEMO__ENABLED": "false"})
    env.pop("MODELHOST_REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "modelhost.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "MODELHOST_REDIS_URL" in result.stderr
