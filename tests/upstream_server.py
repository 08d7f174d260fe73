"""A real OpenAI-compatible upstream for tests: llama-cpp-python's own server on loopback.

``start_llama_server(model_path)`` runs ``python -m llama_cpp.server`` on a GGUF file (the
demo Gemma one) and returns once ``GET /v1/models`` answers; ``stop()`` (or leaving the
``with`` block) ends it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from tests.conftest import free_port

#: The model name the server answers to, unless told otherwise.
DEFAULT_ALIAS = "gemma-upstream"


class UpstreamServer:
    """One running ``llama_cpp.server`` process."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        port: int,
        model: str,
        log: Path,
        api_key: str | None,
    ) -> None:
        self.process = process
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        """The OpenAI API root, what a manifest's ``options.base_url`` names."""
        self.model = model
        """The served model alias, what a manifest's ``options.model`` names."""
        self.log = log
        """The server's stdout and stderr."""
        self.api_key = api_key
        """The key every request must carry; None when the server wants none."""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; a stopped server is left alone."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def __enter__(self) -> UpstreamServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_llama_server(
    model_path: Path,
    *,
    alias: str = DEFAULT_ALIAS,
    api_key: str | None = None,
    chat_format: str = "gemma",
    n_ctx: int = 2048,
    threads: int = 2,
    ready_timeout: float = 120.0,
    log: Path | None = None,
) -> UpstreamServer:
    """Start llama-cpp-python's server on a free loopback port and wait until it answers.

    ``chat_format`` is needed because the Gemma 3 GGUF carries no chat template (the server
    would otherwise fall back to Llama 2's). ``log`` defaults to a file next to the model.

    Raises:
        RuntimeError: the server exited or did not answer within ``ready_timeout`` (with the
            end of its log).
    """
    port = free_port()
    log = log or model_path.with_name(f"llama-server-{port}.log")
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--model_alias",
        alias,
        "--chat_format",
        chat_format,
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
    ]
    if api_key is not None:
        command += ["--api_key", api_key]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = UpstreamServer(process, port, alias, log, api_key)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.base_url}/models", headers=headers, timeout=2).is_success:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"llama_cpp.server not ready: {log.read_text()[-3000:]}")
