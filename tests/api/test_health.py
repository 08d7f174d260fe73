from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.conftest import start_server, stop_server


def test_healthz_and_readyz(client: httpx.Client) -> None:
    alive = client.get("/healthz").json()
    assert alive["status"] == "ok"
    assert alive["pid"] > 1
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["models"]["iris@1.0.0"] == "ready"
    assert body["failed"] == ["broken@1.0.0"]


def test_openapi_docs_are_served(client: httpx.Client) -> None:
    assert "swagger" in client.get("/docs").text.lower()
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/v1/models/{model}/predict"]["post"]
    assert "inputs" in predict["requestBody"]["content"]["application/json"]["schema"]["properties"]


def test_workers_serve_one_port_from_several_processes(tmp_path: Path) -> None:
    server = start_server(
        tmp_path, tmp_path / "workers.log", "--no-demo", "--workers", "2", api_key="none-yet"
    )
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:
            with httpx.Client(base_url=server.url) as fresh:  # a new connection each time
                pids.add(fresh.get("/healthz").json()["pid"])
        assert len(pids) == 2
        banner = (tmp_path / "workers.log").read_text().count("shown only this once")
        assert banner == 1  # two workers started on an empty database: one admin key
    finally:
        stop_server(server)
