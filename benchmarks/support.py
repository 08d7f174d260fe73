"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_key(home: Path, principal: str, scopes: list[str] | None = None) -> str:
    """A real API key in ``home``'s database (auth stays on), with a rate limit out of reach;
    ``scopes`` default to ``predict``."""
    from modelhost.registry import make_engine
    from modelhost.security.keys import KeyStore, NewKey

    engine = make_engine(f"sqlite:///{home / 'modelhost.db'}")
    spec = NewKey(tenant="bench", principal=principal, scopes=scopes or ["predict"], rpm=10**9)
    secret, _ = KeyStore(engine).create(spec, actor="bench")
    engine.dispose()
    return secret


def serve(
    env: dict[str, str], port: int, prefix: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """``modelhost serve`` on ``port`` with ``env`` (``prefix``: e.g. :func:`pin_to_cpu0`), once
    it is ready (its own process group: :func:`stop` ends it)."""
    proc = subprocess.Popen(
        [
            *(prefix or []),
            *(sys.executable, "-m", "modelhost.cli", "serve"),
            *("--port", str(port), "--grpc-port", "0"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("modelhost serve exited")


def serve_gemma(home: Path, port: int) -> subprocess.Popen[bytes]:
    """``modelhost serve`` in ``home`` with only the ``gemma-270m`` demo model and 2
    inference threads, once it is ready."""
    env = {
        **os.environ,
        "MODELHOST_HOME": str(home),
        "MODELHOST_DEMO__MODELS": '["gemma-270m"]',
        "MODELHOST_INFERENCE__THREADS": "2",
    }
    return serve(env, port)


def stop(proc: subprocess.Popen[bytes], grace_s: float = 20) -> None:
    """SIGTERM the server's process group (if it still runs); SIGKILL after ``grace_s``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def pin_to_cpu0() -> list[str]:
    """``taskset -c 0`` for servers when there are two CPUs (this process then takes CPU 1),
    so client and server do not share a core; empty elsewhere."""
    if (os.cpu_count() or 1) < 2 or not Path("/usr/bin/taskset").exists():
        return []
    os.sched_setaffinity(0, {1})
    return ["taskset", "-c", "0"]


def admin_key(home: Path) -> str:
    """An admin key in ``home``'s database (to read metrics and reports)."""
    return bench_key(home, "metrics", ["admin"])
