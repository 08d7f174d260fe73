"""Callers' latency and throughput with a shadow version against without, at fixed concurrency.

Two homes hold the same registry: iris 1.0.0 (the demo's scikit-learn pipeline) in production
and an identical copy, 1.0.1, in staging (loaded in both, so both servers hold the same
models); only in the ``shadow`` home does the deployment name 1.0.1 as a shadow, so every
answered request is copied to a version costing exactly what production costs. Each server
is the composition root's app (``create_app``, auth on, defaults otherwise) with the shadow
runner (``build_shadow``) among its components, on uvicorn with uvloop and httptools. Each
is driven by a closed loop of ``--concurrency`` keep-alive clients (aiohttp) posting one iris
row to ``/v1/models/iris/predict`` for ``--seconds`` after a 2 s warm-up. With two or more
CPUs the servers are pinned to CPU 0 and the load generator to CPU 1, so the shadow's whole
cost is paid on the servers' core. Every round starts fresh processes.

Two ways to share that core (``--mode``), as in ``benchmarks/provenance.py``:

* ``side-by-side`` (default): both servers at once, each in its own session (so each gets
  half of CPU 0 when both want it) with its own clients. Whatever else the machine runs
  slows both alike, so their ratio holds on a shared, noisy machine.
* ``sequential``: one server at a time, ``off`` and ``shadow`` in ABBA order.

``--control`` names no shadow on either side (an A/A run: the spread of its ratios is the
noise to judge the others by). ``--no-gate`` runs every copy as soon as the runner's worker
is free, with neither the budget of shadow time (``RunnerOptions.max_share``) nor the wait
for the event loop to have slack (``max_lag_s``), to show what those limits save.

    .venv/bin/python benchmarks/shadow.py [--mode side-by-side|sequential] [--rounds 6]
        [--seconds 8] [--concurrency 16] [--no-gate] [--control] [--quick]

Prints each round with what the shadow did (copies agreed and dropped, from /metrics), then
the medians per mode and the shadow/off ratios of p50, p95, p99 and throughput (medians of
the per-round ratios). Target (issue 7): callers' latency unchanged within noise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import orjson
import yaml
from support import admin_key, bench_key, free_port, pin_to_cpu0, stop

FLOWER = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
BODY = orjson.dumps({"inputs": [FLOWER]})
WARM_S = 2.0
MODES = ("off", "shadow")


@dataclass
class Run:
    mode: str
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int


def serve(port: int, gate: bool) -> None:
    """The server process: the app with the shadow runner among its components (without its
    limits when ``gate`` is off: every copy runs as soon as a worker is free)."""
    import uvicorn

    from modelhost.app import create_app
    from modelhost.config import Settings
    from modelhost.rollouts.shadow import RunnerOptions, ShadowRunner, build_shadow
    from modelhost.rollouts.store import ShadowStore

    app = create_app(Settings())
    services = app.state.services
    services.components = [c for c in services.components if not isinstance(c, ShadowRunner)]
    runner = build_shadow(services)
    if not gate:
        rollouts = services.settings.rollouts
        store = ShadowStore(services.registry.engine, examples=rollouts.shadow_examples)
        options = RunnerOptions(max_share=1.0, max_lag_s=float("inf"))
        runner = ShadowRunner(services.plane, store, rollouts, options=options)
        services.plane.shadow = runner
    services.components.append(runner)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        access_log=False,
        log_level="warning",
        loop="uvloop",
        http="httptools",
    )


def prepare(root: Path, control: bool = False) -> dict[str, Path]:
    """The two homes: the same versions; the shadow home's deployment names 1.0.1 (unless
    ``control``: then the two are the same, an A/A run)."""
    from modelhost.config import Settings
    from modelhost.demo import build_iris
    from modelhost.registry import Stage, build_registry

    built = root / "built"
    (v100,) = build_iris(built)[:1]
    v101 = built / "iris-1.0.1"
    shutil.copytree(v100, v101)
    manifest = yaml.safe_load((v101 / "modelhost.yaml").read_text())
    manifest["version"] = "1.0.1"
    (v101 / "modelhost.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    homes = {}
    for mode in MODES:
        home = homes[mode] = root / mode
        registry = build_registry(Settings(home=home))
        registry.push(v100, actor="bench", stage=Stage.PRODUCTION)
        registry.push(v101, actor="bench", stage=Stage.STAGING)
        if mode == "shadow" and not control:
            registry.deployments.change("iris", actor="bench", action="shadow", shadows=("1.0.1",))
        registry.engine.dispose()
    return homes


def _start(home: Path, pin: list[str], gate: bool) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        **os.environ,
        "MODELHOST_HOME": str(home),
        "MODELHOST_DEMO__ENABLED": "false",
        "MODELHOST_SERVER__GRPC_PORT": "0",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    port = free_port()
    proc = subprocess.Popen(
        [*pin, sys.executable, __file__, "--serve", str(port), *([] if gate else ["--no-gate"])],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(proc, 60)
    raise RuntimeError("the server did not get ready")


async def _drive(url: str, mode: str, key: str, args: argparse.Namespace) -> Run:
    """Warm up, then measure for ``args.seconds``."""
    target = f"{url}/v1/models/iris/predict"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0

    async def worker(session: aiohttp.ClientSession, until: float, measure: bool) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            started = time.perf_counter()
            async with session.post(target, data=BODY, headers=headers) as response:
                await response.read()
                ok = response.status == 200
            if measure:
                latencies.append(time.perf_counter() - started)
                errors += not ok

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm_until = time.perf_counter() + WARM_S
        await asyncio.gather(*(worker(session, warm_until, False) for _ in range(args.concurrency)))
        until = time.perf_counter() + args.seconds
        await asyncio.gather(*(worker(session, until, True) for _ in range(args.concurrency)))
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e3

    return Run(mode, len(ordered) / args.seconds, pct(0.5), pct(0.95), pct(0.99), errors)


def _shadow_counts(url: str, key: str) -> dict[str, float]:
    """``modelhost_shadow_requests_total`` by outcome, from /metrics."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
    counts: dict[str, float] = {}
    for outcome, value in re.findall(
        r'modelhost_shadow_requests_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)', text
    ):
        counts[outcome] = counts.get(outcome, 0.0) + float(value)
    return counts


def _print(run: Run) -> None:
    print(
        f"{run.mode:6}: {run.rps:8.1f} req/s   p50 {run.p50_ms:6.2f} ms   "
        f"p95 {run.p95_ms:6.2f} ms   p99 {run.p99_ms:6.2f} ms   errors {run.errors}",
        flush=True,
    )


def _report_shadow(url: str, key: str, run: Run, args: argparse.Namespace) -> None:
    time.sleep(0.5)  # let the last copies finish
    counts = _shadow_counts(url, key)
    print(
        "        shadow copies: "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(counts.items()))
        + f" (warm-up included; {run.rps * args.seconds:.0f} measured requests)"
    )


async def _side_by_side(
    urls: dict[str, str], keys: dict[str, str], args: argparse.Namespace
) -> list[Run]:
    return list(
        await asyncio.gather(*(_drive(url, mode, keys[mode], args) for mode, url in urls.items()))
    )


def _round(
    homes: dict[str, Path], keys: dict[str, str], args: argparse.Namespace, index: int
) -> list[Run]:
    """One round: both servers at once (side by side) or one after the other, in ABBA
    order; fresh processes every round."""
    pin = pin_to_cpu0()
    order = MODES if index % 2 == 0 else MODES[::-1]
    if args.mode == "sequential":
        runs = []
        for mode in order:
            proc, url = _start(homes[mode], pin, args.gate)
            try:
                runs.append(asyncio.run(_drive(url, mode, keys[mode], args)))
                if mode == "shadow":
                    _report_shadow(url, keys["admin"], runs[-1], args)
            finally:
                stop(proc, 60)
        return runs
    started = {mode: _start(homes[mode], pin, args.gate) for mode in order}
    try:
        urls = {mode: url for mode, (_, url) in started.items()}
        runs = asyncio.run(_side_by_side(urls, keys, args))
        _report_shadow(urls["shadow"], keys["admin"], runs[order.index("shadow")], args)
        return runs
    finally:
        for proc, _ in started.values():
            stop(proc, 60)


def _rounds(homes: dict[str, Path], keys: dict[str, str], args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    for index in range(args.rounds):
        for run in _round(homes, keys, args, index):
            runs.append(run)
            _print(run)
    return runs


def _summary(runs: list[Run], args: argparse.Namespace) -> None:
    def median(mode: str, name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in runs if r.mode == mode))

    pairs = [(runs[i], runs[i + 1]) for i in range(0, len(runs) - 1, 2)]
    ordered = [(a, b) if a.mode == "off" else (b, a) for a, b in pairs]  # (off, shadow)

    def ratio(name: str) -> float:
        return float(statistics.median(getattr(s, name) / getattr(o, name) for o, s in ordered))

    print(
        f"iris predict, 1 row, concurrency {args.concurrency}, "
        f"{args.rounds} rounds x {args.seconds:g} s per mode, {args.mode}"
        f"{'' if args.gate else ', shadow calls without limits'}"
        f"{', CONTROL (no shadow on either side)' if args.control else ''}:"
    )
    for mode in MODES:
        print(
            f"  {mode:6}  {median(mode, 'rps'):8.1f} req/s   p50 {median(mode, 'p50_ms'):6.2f} ms"
            f"   p95 {median(mode, 'p95_ms'):6.2f} ms   p99 {median(mode, 'p99_ms'):6.2f} ms"
        )
    print(
        f"  shadow / off: p50 {ratio('p50_ms'):.3f}   p95 {ratio('p95_ms'):.3f}   "
        f"p99 {ratio('p99_ms'):.3f}   throughput {ratio('rps'):.3f}  (medians of per-round ratios)"
    )
    p50s = ", ".join(f"{s.p50_ms / o.p50_ms:.3f}" for o, s in ordered)
    print(f"  per round p50 ratio: {p50s}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["side-by-side", "sequential"], default="side-by-side")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s (a smoke run)")
    parser.add_argument(
        "--no-gate",
        dest="gate",
        action="store_false",
        help="run every copy at once: no budget, no wait for slack (to see what they save)",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="name no shadow in either home (an A/A run: its ratios show the noise)",
    )
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.gate)
        return
    if args.quick:
        args.rounds, args.seconds = 2, 3.0
    with tempfile.TemporaryDirectory() as tmp:
        homes = prepare(Path(tmp), args.control)
        keys = {mode: bench_key(home, "shadow") for mode, home in homes.items()}
        keys["admin"] = admin_key(homes["shadow"])
        runs = _rounds(homes, keys, args)
    _summary(runs, args)


if __name__ == "__main__":
    main()
