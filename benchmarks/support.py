"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_key(home: Path, principal: str) -> str:
    """A real API key in ``home``'s database (auth stays on), with a rate limit out of reach."""
    from modelhost.registry import make_engine
    from modelhost.security.keys import KeyStore, NewKey

    engine = make_engine(f"sqlite:///{home / 'modelhost.db'}")
    spec = NewKey(tenant="bench", principal=principal, scopes=["predict"], rpm=10**9)
    secret, _ = KeyStore(engine).create(spec, actor="bench")
    engine.dispose()
    return secret
