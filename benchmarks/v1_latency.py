"""Start-up time and single-request latency of REST v1 against the floor (in-process).

Prints: time to ready (first start, which builds the iris demo, and a warm restart), and p50/p99
of one iris predict over HTTP (keep-alive, one connection) beside the same predict called
in-process on the runtime, and through the DataPlane in-process.

    .venv/bin/python benchmarks/v1_latency.py [--requests 3000] [--server granian|uvicorn]

For throughput at concurrency against peer servers, see benchmarks/peers.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from support import bench_key, free_port

FLOWER = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}


def _start(home: Path, port: int, server: str) -> tuple[subprocess.Popen[bytes], float]:
    env = {**os.environ, "MODELHOST_HOME": str(home), "MODELHOST_DEMO__MODELS": '["iris"]'}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "modelhost.cli", "serve", "--port", str(port)),
            *("--grpc-port", "0", "--server", server),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"modelhost serve exited with {proc.returncode}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


def _pcts(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1e3
    p99 = ordered[int(len(ordered) * 0.99)] * 1e3
    return f"p50 {p50:7.3f} ms   p99 {p99:7.3f} ms"


def _http(port: int, n: int, key: str) -> list[float]:
    out = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
        for i in range(n + 200):
            t0 = time.perf_counter()
            response = client.post("/v1/models/iris/predict", json={"inputs": [FLOWER]})
            elapsed = time.perf_counter() - t0
            assert response.status_code == 200
            if i >= 200:
                out.append(elapsed)
    return out


def _in_process(home: Path, n: int) -> tuple[list[float], list[float]]:
    from modelhost.app import build_services
    from modelhost.config import Settings
    from modelhost.inference import InferenceRequest

    settings = Settings(home=home)
    services = build_services(settings)

    async def run() -> tuple[list[float], list[float]]:
        await services.manager.refresh()
        await services.manager.wait_loaded()
        info = await services.manager.resolve("iris", None)
        runtime: Any = services.manager.ready_runtime(info).runtime
        raw, plane = [], []
        for i in range(n + 200):
            t0 = time.perf_counter()
            runtime.predict([FLOWER], {})
            if i >= 200:
                raw.append(time.perf_counter() - t0)
        for i in range(n + 200):
            t0 = time.perf_counter()
            await services.plane.infer(InferenceRequest(model="iris", inputs=[FLOWER]))
            if i >= 200:
                plane.append(time.perf_counter() - t0)
        await services.manager.close()
        services.plane.close()
        return raw, plane

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--server", choices=["granian", "uvicorn"], default="uvicorn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        port = free_port()
        proc, first = _start(home, port, args.server)
        _stop(proc)
        proc, warm = _start(home, port, args.server)
        try:
            http = _http(port, args.requests, bench_key(home, "latency"))
        finally:
            _stop(proc)
        raw, plane = _in_process(home, args.requests)
    print(f"start to ready: first start (builds iris) {first:.2f} s, warm restart {warm:.2f} s")
    print(f"iris predict, 1 row, {args.requests} sequential requests ({args.server}):")
    print(f"  runtime.predict in-process   {_pcts(raw)}")
    print(f"  DataPlane.infer in-process   {_pcts(plane)}")
    print(f"  HTTP POST /v1/.../predict    {_pcts(http)}")
    print(
        f"  HTTP minus in-process p50:   "
        f"{(statistics.median(http) - statistics.median(raw)) * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    main()
