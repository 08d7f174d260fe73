"""Shared fixtures: a real server on loopback with the real demo models, real databases."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.engine import Engine
from tritonclient._plugin import InferenceServerClientPlugin

from modelhost.registry import ArtifactStore, Registry, Stage, make_engine
from modelhost.registry.db import Base
from modelhost.security.keys import KeyStore, NewKey

POSTGRES_URL = os.environ.get(
    "MODELHOST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

ECHO_MODULE = textwrap.dedent(
    '''
    import time


    class Echo:
        """Returns its inputs; sleeps when asked, so timeouts can be tested."""

        def __init__(self, path):
            self.path = path

        def predict(self, inputs, parameters):
            time.sleep(float(parameters.get("sleep", 0)))
            return [{"echo": item} for item in inputs]


    class Chatty(Echo):
        """Echo that also streams its text word by word."""

        def stream(self, item, parameters):
            for word in item["text"].split():
                yield word + " "


    class Broken:
        """Fails to load, like a model whose files are wrong."""

        def __init__(self, path):
            raise RuntimeError("weights are corrupt")

        def predict(self, inputs, parameters):
            return inputs
    '''
)


def write_python_model(
    root: Path, name: str, version: str = "1.0.0", cls: str = "Echo", **extra: Any
) -> Path:
    """A python-runtime model version directory whose code ships inside it."""
    directory = root / f"{name}-{version}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "echo_model.py").write_text(ECHO_MODULE)
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "runtime": "python",
        "entrypoint": f"echo_model:{cls}",
        "input_schema": {
            "type": "object",
            "properties": {
                "text": {"type": "string", "maxLength": 20},
                "n": {"type": "integer", "minimum": 0, "maximum": 5},
                "tags": {"type": "array", "maxItems": 2},
                "kind": {"type": "string", "enum": ["a", "b"]},
            },
            "required": ["text"],
            "additionalProperties": False,
        },
        "parameters_schema": {
            "type": "object",
            "properties": {"sleep": {"type": "number", "minimum": 0, "maximum": 5}},
        },
        "limits": {"max_request_bytes": 2048, "max_batch_items": 4, "timeout_ms": 300},
        **extra,
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return directory


_HANDED_OUT: set[int] = set()


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports nobody listens on right now.

    The sockets stay bound until all are chosen, so the kernel cannot hand the same port twice
    (two ``bind(0)`` calls in a row may, which once gave a server's HTTP and gRPC listeners one
    port); a port this process already handed out is never handed out again.
    """
    sockets: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < count:
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                ports.append(port)
        _HANDED_OUT.update(ports)
        return ports
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A TCP port nobody listens on right now (see :func:`free_ports`)."""
    return free_ports(1)[0]


def modelhost_env(home: Path) -> dict[str, str]:
    """Environment of a modelhost process using ``home``."""
    env = dict(os.environ)
    env["MODELHOST_HOME"] = str(home)
    env.pop("MODELHOST_DATABASE_URL", None)
    return env


def run_cli(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``modelhost`` command (``env`` adds environment variables)."""
    return subprocess.run(
        [sys.executable, "-m", "modelhost.cli", *args],
        env={**modelhost_env(home), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


class BearerAuth(InferenceServerClientPlugin):  # type: ignore[misc]  # untyped base class
    """tritonclient plugin sending ``Authorization: Bearer <key>`` (HTTP and gRPC)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, request: Any) -> None:
        request.headers["authorization"] = f"Bearer {self.key}"


def create_key(
    home: Path, *scopes: str, tenant: str = "system", principal: str = "tests", **limits: Any
) -> str:
    """A real API key in the registry database under ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{home / 'modelhost.db'}")
    try:
        secret, _ = KeyStore(engine).create(
            NewKey(tenant=tenant, principal=principal, scopes=list(scopes or ["admin"]), **limits),
            actor="tests",
        )
    finally:
        engine.dispose()
    return secret


class Server:
    """A ``modelhost serve`` process on loopback, with an admin key for the tests."""

    def __init__(
        self,
        home: Path,
        port: int,
        process: subprocess.Popen[bytes],
        log: Path,
        grpc_port: int = 0,
        api_key: str = "",
    ):
        self.home = home
        self.port = port
        self.grpc_port = grpc_port
        """Port of the OIP v2 gRPC service (0: off)."""
        self.url = f"http://127.0.0.1:{port}"
        self.process = process
        self.log = log
        self.api_key = api_key
        """An admin key of tenant ``system``."""

    @property
    def headers(self) -> dict[str, str]:
        """The admin key as an Authorization header."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def triton_auth(self) -> BearerAuth:
        """A tritonclient plugin carrying the admin key."""
        return BearerAuth(self.api_key)

    def client(self, timeout: float = 120.0) -> httpx.Client:
        """An HTTP client for this server, sending the admin key."""
        return httpx.Client(base_url=self.url, timeout=timeout, headers=self.headers)

    def wait_state(self, model: str, version: str, state: str, timeout: float = 60) -> None:
        """Poll metadata until ``model@version`` reaches ``state``."""
        deadline = time.monotonic() + timeout
        seen = None
        with self.client() as client:
            while time.monotonic() < deadline:
                response = client.get(f"/v1/models/{model}@{version}")
                if response.status_code == 200:
                    versions = {v["version"]: v for v in response.json()["versions"]}
                    seen = versions.get(version, {}).get("state")
                    if seen == state:
                        return
                time.sleep(0.2)
        raise AssertionError(f"{model}@{version} stayed {seen}, not {state}")


def start_server(
    home: Path,
    log: Path,
    *extra: str,
    ready_timeout: float = 600,
    env: dict[str, str] | None = None,
    api_key: str | None = None,
) -> Server:
    """Start ``modelhost serve`` and wait for /readyz (``env`` adds environment variables)."""
    port, grpc_port = free_ports(2)
    api_key = api_key or create_key(home, "admin")
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelhost.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--grpc-port",
                str(grpc_port),
                *extra,
            ],
            env={**modelhost_env(home), **(env or {})},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(home, port, process, log, grpc_port, api_key)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_server(server)
    raise RuntimeError(f"server not ready: {log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(5)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database engine for backend contract tests: a SQLite file, then PostgreSQL (its
    modelhost tables dropped before and after, so every test starts empty)."""
    if request.param == "sqlite":
        built = make_engine(f"sqlite:///{tmp_path / 'contract.db'}")
        yield built
        built.dispose()
        return
    stale = make_engine(POSTGRES_URL)
    Base.metadata.drop_all(stale)
    stale.dispose()
    built = make_engine(POSTGRES_URL)
    yield built
    Base.metadata.drop_all(built)
    built.dispose()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server for the session, with the demo models built on its first start, plus
    test models (echo, slow, broken) pushed through the CLI before it starts."""
    home = tmp_path_factory.mktemp("home")
    models = tmp_path_factory.mktemp("models")
    result = run_cli(
        home, "models", "push", str(write_python_model(models, "echo")), "--stage", "production"
    )
    assert result.returncode == 0, result.stderr
    # A version whose files broke after it reached production: the gates (rightly) refuse to
    # promote a version that cannot load, so it is put there by the registry's own stage move.
    broken = write_python_model(models, "broken", cls="Broken")
    refused = run_cli(home, "models", "push", str(broken), "--stage", "production", "--force")
    assert refused.returncode == 1
    assert "does not load" in refused.stderr or "failed to load" in refused.stderr, refused.stderr
    engine = make_engine(f"sqlite:///{home / 'modelhost.db'}")
    Registry(engine, ArtifactStore(home / "artifacts")).set_stage(
        "broken", "1.0.0", Stage.PRODUCTION, actor="tests"
    )
    engine.dispose()
    started = start_server(home, home / "server.log")
    yield started
    stop_server(started)


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    """HTTP client bound to the session server."""
    with server.client() as http:
        yield http


@pytest.fixture(scope="session")
def iris_data() -> tuple[Any, Any]:
    """scikit-learn's bundled iris data."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x, y


@pytest.fixture(scope="session")
def expected_labels(iris_data: tuple[Any, Any]) -> list[str]:
    """What the demo's iris pipeline, trained the same way in this process, predicts for every
    bundled iris row."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from modelhost.demo import IRIS_LABELS

    x, y = iris_data
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    pipe = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])
    pipe.fit(x_train, y_train)
    return [IRIS_LABELS[int(i)] for i in pipe.predict(x)]
