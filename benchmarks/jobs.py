"""Async jobs end to end, per queue backend: jobs per second and the queue's added latency.

For each backend (``sql``: the embedded queue in SQLite; ``redis``: Redis Streams dispatch,
records in SQLite) it starts a real ``modelhost serve`` (iris demo model, auth on, the
in-process worker pool) and measures, over HTTP:

- the synchronous baseline: ``POST /v1/models/iris/predict`` one at a time, p50/p99;
- queue latency: jobs submitted one at a time at a steady pace (``--pace`` per second), the
  time from enqueue (``created_at``) to an attempt starting (``started_at``), p50/p99, read
  from the job records;
- throughput: ``--jobs`` jobs submitted by ``--submitters`` concurrent clients: submissions
  per second, and jobs per second from the first enqueue to the last finish (with the queue
  wait of those jobs: a backlog, so it grows with ``--jobs``).

    .venv/bin/python benchmarks/jobs.py [--backend sql|redis|both] [--jobs 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session
from support import free_port

from modelhost.jobs.tables import JobRow
from modelhost.registry import make_engine
from modelhost.security.keys import KeyStore, NewKey

FLOWER = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
REDIS_URL = "redis://127.0.0.1:6379/13"


def _key(home: Path) -> str:
    engine = make_engine(f"sqlite:///{home / 'modelhost.db'}")
    spec = NewKey(tenant="bench", principal="jobs", scopes=["predict", "jobs"], rpm=10**9)
    secret, _ = KeyStore(engine).create(spec, actor="bench")
    engine.dispose()
    return secret


def _serve(home: Path, port: int, backend: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "MODELHOST_HOME": str(home),
            "MODELHOST_DEMO__MODELS": '["iris"]',
            "MODELHOST_JOBS__BACKEND": backend,
            "MODELHOST_JOBS__POLL_INTERVAL_S": "0.2",
        }
    )
    if backend == "redis":
        env["MODELHOST_REDIS_URL"] = REDIS_URL
        env["MODELHOST_JOBS__REDIS_PREFIX"] = f"bench:{uuid.uuid4().hex[:8]}"
    log = (home / "server.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "modelhost.cli", "serve", "--port", str(port), "--grpc-port", "0"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _ready(url: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _records(home: Path, ids: list[str]) -> list[tuple[float, float | None, float | None]]:
    engine = make_engine(f"sqlite:///{home / 'modelhost.db'}")
    with Session(engine) as session:
        rows = session.execute(
            select(JobRow.created_at, JobRow.started_at, JobRow.finished_at).where(
                JobRow.id.in_(ids)
            )
        ).all()
    engine.dispose()
    return [(r.created_at, r.started_at, r.finished_at) for r in rows]


async def _wait_done(client: httpx.AsyncClient, ids: list[str]) -> None:
    pending = list(ids)
    while pending:
        still = []
        for job_id in pending:
            body = (await client.get(f"/v1/jobs/{job_id}")).json()
            if body["status"] in ("queued", "running"):
                still.append(job_id)
            elif body["status"] != "succeeded":
                raise SystemExit(f"job {job_id} ended {body['status']}: {body['error']}")
        pending = still
        if pending:
            await asyncio.sleep(0.25)


async def _measure(url: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    job = {"model": "iris", "inputs": [FLOWER]}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        sync: list[float] = []
        for _ in range(args.sync):
            started = time.perf_counter()
            answer = await client.post("/v1/models/iris/predict", json={"inputs": [FLOWER]})
            sync.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
        paced: list[str] = []
        for _ in range(args.paced):
            answer = await client.post("/v1/jobs", json=job)
            answer.raise_for_status()
            paced.append(answer.json()["job_id"])
            await asyncio.sleep(1 / args.pace)
        await _wait_done(client, paced)

        burst: list[str] = []

        async def submitter(count: int) -> None:
            for _ in range(count):
                answer = await client.post("/v1/jobs", json=job)
                answer.raise_for_status()
                burst.append(answer.json()["job_id"])

        share = args.jobs // args.submitters
        started = time.time()
        await asyncio.gather(*(submitter(share) for _ in range(args.submitters)))
        submitted = time.time() - started
        await _wait_done(client, burst)
    return {"sync": sync, "paced": paced, "burst": burst, "submit_s": submitted}


def run(backend: str, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-jobs-{backend}-") as tmp:
        home = Path(tmp)
        port = free_port()
        server = _serve(home, port, backend)
        try:
            url = f"http://127.0.0.1:{port}"
            _ready(url)
            measured = asyncio.run(_measure(url, _key(home), args))
        finally:
            server.terminate()
            server.wait(timeout=60)
        paced = _records(home, measured["paced"])
        waits = [(s - c) * 1000 for c, s, _ in paced if s is not None]
        burst = _records(home, measured["burst"])
        first = min(c for c, _, _ in burst)
        last = max(f for _, _, f in burst if f is not None)
        burst_waits = [(s - c) * 1000 for c, s, _ in burst if s is not None]
        return {
            "sync_p50_ms": statistics.median(measured["sync"]),
            "sync_p99_ms": _pct(measured["sync"], 0.99),
            "queue_p50_ms": statistics.median(waits),
            "queue_p99_ms": _pct(waits, 0.99),
            "jobs_per_s": len(burst) / (last - first),
            "submits_per_s": len(burst) / measured["submit_s"],
            "burst_queue_p50_ms": statistics.median(burst_waits),
            "burst_queue_p99_ms": _pct(burst_waits, 0.99),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sql", "redis", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs in the throughput burst")
    parser.add_argument("--submitters", type=int, default=8, help="concurrent submitters")
    parser.add_argument("--sync", type=int, default=300, help="synchronous baseline calls")
    parser.add_argument("--paced", type=int, default=200, help="jobs for the latency run")
    parser.add_argument("--pace", type=float, default=20.0, help="paced jobs per second")
    args = parser.parse_args()
    backends = ["sql", "redis"] if args.backend == "both" else [args.backend]
    print(
        f"{'backend':8} {'sync p50':>9} {'sync p99':>9} {'queue p50':>10} {'queue p99':>10} "
        f"{'submit/s':>9} {'jobs/s':>8} {'burst q p50':>12} {'burst q p99':>12}"
    )
    for backend in backends:
        r = run(backend, args)
        print(
            f"{backend:8} {r['sync_p50_ms']:8.2f}ms {r['sync_p99_ms']:8.2f}ms "
            f"{r['queue_p50_ms']:9.2f}ms {r['queue_p99_ms']:9.2f}ms {r['submits_per_s']:9.1f} "
            f"{r['jobs_per_s']:8.1f} "
            f"{r['burst_queue_p50_ms']:11.1f}ms {r['burst_queue_p99_ms']:11.1f}ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
