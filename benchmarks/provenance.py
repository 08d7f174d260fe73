"""Throughput with provenance recording on against off, at concurrency 64.

Runs real ``modelhost serve`` processes (iris demo model, auth on, SQLite), one with recording
off (``MODELHOST_PROVENANCE__ENABLED=false``) and one with recording on (the defaults: every
inference recorded with its payload), and drives each with a closed loop of 64 concurrent
keep-alive clients (aiohttp) posting one iris row to ``/v1/models/iris/predict``, for
``--rounds`` windows of ``--seconds`` after a 2 s warm-up. With two or more CPUs the servers are
pinned to CPU 0 and the load generator to CPU 1, so a server's whole cost (the recorder's writer
thread included) is paid on one core.

Two ways to share that core (``--mode``):

* ``side-by-side`` (default): both servers run at once, each in its own session (so the
  scheduler gives each half of CPU 0), each with its own 64 clients. Whatever else the machine
  runs slows both alike, so their ratio holds up on a shared, noisy machine, where one server
  after the other drifts by ±20 % from run to run. The figure to read is the ratio of server
  CPU per request (each server's own CPU time over its requests): the throughput one core
  sustains with recording on, against off.
* ``sequential``: one server at a time, off and on alternating in ABBA order; the ratio of
  throughputs.

Every round starts fresh processes: two identical servers side by side differ by up to ±3 %
per process pair (memory layout, hash seeds), so a benchmark that kept one pair would carry
that bias into every round.

    .venv/bin/python benchmarks/provenance.py [--mode side-by-side|sequential] [--rounds 6]
        [--seconds 10] [--concurrency 64]

Target (issue 6): recording on keeps at least 95 % of the throughput of recording off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
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
from support import admin_key, bench_key, free_port, pin_to_cpu0, stop

FLOWER = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
BODY = orjson.dumps({"inputs": [FLOWER]})
WARM_S = 2.0


@dataclass
class Server:
    mode: str
    home: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Run:
    mode: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float
    """Server CPU (user + system) per request in the measured window."""
    errors: int


def _start(home: Path, mode: str, pin: list[str]) -> Server:
    env = {
        **os.environ,
        "MODELHOST_HOME": str(home),
        "MODELHOST_DEMO__MODELS": '["iris"]',
        "MODELHOST_PROVENANCE__ENABLED": "true" if mode == "on" else "false",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    port = free_port()
    command = [sys.executable, "-m", "modelhost.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(
        [*pin, *command, "--grpc-port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own session: its own scheduling group side by side
    )
    server = Server(mode, home, port, proc)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(server.proc, 60)
    raise RuntimeError("modelhost serve did not get ready")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(
    session: aiohttp.ClientSession, server: Server, key: str, args: argparse.Namespace
) -> Run:
    """Warm up, then measure one server for ``args.seconds``."""
    url = f"{server.url}/v1/models/iris/predict"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0

    async def worker(until: float, measure: bool) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            started = time.perf_counter()
            async with session.post(url, data=BODY, headers=headers) as response:
                await response.read()
                ok = response.status == 200
            if measure:
                latencies.append(time.perf_counter() - started)
                errors += not ok

    warm_until = time.perf_counter() + WARM_S
    await asyncio.gather(*(worker(warm_until, False) for _ in range(args.concurrency)))
    cpu = _cpu_s(server.proc.pid)
    until = time.perf_counter() + args.seconds
    await asyncio.gather(*(worker(until, True) for _ in range(args.concurrency)))
    cpu = _cpu_s(server.proc.pid) - cpu
    ordered = sorted(latencies)
    return Run(
        mode=server.mode,
        rps=len(ordered) / args.seconds,
        p50_ms=statistics.median(ordered) * 1e3,
        p99_ms=ordered[int(len(ordered) * 0.99)] * 1e3,
        cpu_ms=cpu / len(ordered) * 1e3,
        errors=errors,
    )


async def _measure(
    servers: list[Server], keys: dict[str, str], args: argparse.Namespace
) -> list[Run]:
    """Load every server at once (one connection pool each); one run per server."""
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency))
        for _ in servers
    ]
    try:
        return list(
            await asyncio.gather(
                *(
                    _drive(s, srv, keys[srv.mode], args)
                    for s, srv in zip(sessions, servers, strict=True)
                )
            )
        )
    finally:
        for session in sessions:
            await session.close()


def _recorder_counts(server: Server, admin: str) -> tuple[float, float]:
    """Records written and dropped, from /metrics, once the last flush is done."""
    time.sleep(1.5)  # one flush interval and a little
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    counts = dict.fromkeys(("written", "dropped"), 0.0)
    for outcome, value in re.findall(
        r'modelhost_provenance_records_total\{outcome="(\w+)"\} (\S+)', text
    ):
        if outcome in counts:
            counts[outcome] = float(value)
    return counts["written"], counts["dropped"]


def _print(run: Run) -> None:
    print(
        f"recording {run.mode:3}: {run.rps:8.1f} req/s   p50 {run.p50_ms:6.2f} ms   "
        f"p99 {run.p99_ms:7.2f} ms   CPU {run.cpu_ms:.3f} ms/req   errors {run.errors}",
        flush=True,
    )


def _rounds(homes: dict[str, Path], keys: dict[str, str], args: argparse.Namespace) -> list[Run]:
    """Fresh server processes every round (a process's own memory layout moves its speed by a
    few per cent, so one long-lived pair would carry one fixed bias), started in alternating
    order."""
    pin = pin_to_cpu0()
    runs: list[Run] = []
    for index in range(args.rounds):
        order = ("off", "on") if index % 2 == 0 else ("on", "off")
        if args.mode == "side-by-side":
            servers = [_start(homes[mode], mode, pin) for mode in order]
            try:
                measured = asyncio.run(_measure(servers, keys, args))
                if index == args.rounds - 1:
                    on = next(s for s in servers if s.mode == "on")
                    written, dropped = _recorder_counts(on, keys["admin"])
                    print(f"recorder, last round: {written:.0f} written, {dropped:.0f} dropped")
            finally:
                for server in servers:
                    stop(server.proc, 60)
        else:
            measured = []
            for mode in order:
                server = _start(homes[mode], mode, pin)
                try:
                    measured += asyncio.run(_measure([server], keys, args))
                finally:
                    stop(server.proc, 60)
        for run in measured:
            runs.append(run)
            _print(run)
    return runs


def _summary(runs: list[Run], args: argparse.Namespace) -> None:
    def median(mode: str, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in runs if r.mode == mode))

    pairs = [(runs[i], runs[i + 1]) for i in range(0, len(runs), 2)]
    on_first = [(b, a) if a.mode == "on" else (a, b) for a, b in pairs]  # (off, on)
    rps_ratios = [on.rps / off.rps for off, on in on_first]
    cpu_ratios = [off.cpu_ms / on.cpu_ms for off, on in on_first]
    print(
        f"iris predict, 1 row, concurrency {args.concurrency}, {args.rounds} x {args.seconds:g} s, "
        f"{args.mode}:"
    )
    for mode in ("off", "on"):
        print(
            f"  recording {mode:3}  median {median(mode, 'rps'):8.1f} req/s   "
            f"server CPU {median(mode, 'cpu_ms'):.3f} ms/req"
        )
    print(
        f"  on / off: throughput {statistics.median(rps_ratios) * 100:.1f} %, "
        f"throughput per CPU second {statistics.median(cpu_ratios) * 100:.1f} %  "
        "(medians of the rounds; target >= 95 %)"
    )
    print("  per round (per CPU second): " + ", ".join(f"{r * 100:.1f}" for r in cpu_ratios))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["side-by-side", "sequential"], default="side-by-side")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        homes = {mode: Path(tmp) / mode for mode in ("off", "on")}
        keys: dict[str, str] = {}
        for mode, home in homes.items():
            home.mkdir()
            stop(_start(home, "off", []).proc, 60)  # the first start builds the iris demo
            keys[mode] = bench_key(home, "provenance")
        keys["admin"] = admin_key(homes["on"])
        runs = _rounds(homes, keys, args)
    _summary(runs, args)


if __name__ == "__main__":
    main()
