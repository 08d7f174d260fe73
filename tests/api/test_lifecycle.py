"""Loading, unloading, pushing and promoting while the server keeps serving."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, run_cli, start_server, stop_server, write_python_model

ITEM = {"inputs": [{"text": "hi"}]}


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server without the demo models, serving one python model."""
    home = tmp_path_factory.mktemp("lifecycle")
    directory = write_python_model(home / "src", "svc", "1.0.0")
    assert run_cli(home, "models", "push", str(directory), "--stage", "production").returncode == 0
    server = start_server(home, home / "server.log", "--no-demo")
    yield server
    stop_server(server)


def _until(check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def test_unload_then_load_while_serving(lone: Server) -> None:
    with lone.client() as client:
        assert client.post("/v1/models/svc/predict", json=ITEM).status_code == 200
        unloaded = client.post("/v1/models/svc/versions/1.0.0/unload")
        assert unloaded.json()["state"] == "unloaded"
        refused = client.post("/v1/models/svc/predict", json=ITEM)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "2"
        assert (
            "svc@1.0.0 is loading" in refused.json()["error"]["message"]
        )  # the request started it
        lone.wait_state("svc", "1.0.0", "ready")
        assert client.post("/v1/models/svc/predict", json=ITEM).status_code == 200
        loaded = client.post("/v1/models/svc/versions/1.0.0/load")
        assert loaded.status_code == 200
        assert loaded.json()["state"] == "ready"
        audit = client.get("/v1/audit").json()["data"]
        actions = [(e["action"], e["target"], e["actor"]) for e in audit]
        assert ("model.unload", "svc@1.0.0", "system/tests") in actions
        assert ("model.load", "svc@1.0.0", "system/tests") in actions


def test_push_and_promote_are_picked_up_without_restart(lone: Server, tmp_path: Path) -> None:
    directory = write_python_model(tmp_path, "svc", "1.1.0")
    assert run_cli(lone.home, "models", "push", str(directory)).returncode == 0
    lone.wait_state("svc", "1.1.0", "ready")
    with lone.client() as client:
        assert client.post("/v1/models/svc/predict", json=ITEM).json()["version"] == "1.0.0"
        pinned = client.post("/v1/models/svc@1.1.0/predict", json=ITEM)
        assert pinned.json()["version"] == "1.1.0"
        assert run_cli(lone.home, "models", "promote", "svc", "1.1.0").returncode == 0

        def promoted() -> bool:
            body = client.post("/v1/models/svc/predict", json=ITEM).json()
            return bool(body["version"] == "1.1.0")

        _until(promoted)
        lone.wait_state("svc", "1.0.0", "ready")  # the former production is kept warm
        meta = client.get("/v1/models/svc").json()
        assert meta["stages"] == {"production": "1.1.0", "archived": "1.0.0"}


def test_a_model_pushed_just_now_is_found_at_once(lone: Server, tmp_path: Path) -> None:
    directory = write_python_model(tmp_path, "fresh", "1.0.0")
    assert (
        run_cli(lone.home, "models", "push", str(directory), "--stage", "production").returncode
        == 0
    )
    with httpx.Client(base_url=lone.url, timeout=30, headers=lone.headers) as client:
        first = client.post("/v1/models/fresh/predict", json=ITEM)
        assert first.status_code in (200, 503)
        lone.wait_state("fresh", "1.0.0", "ready")
        assert client.post("/v1/models/fresh/predict", json=ITEM).status_code == 200
