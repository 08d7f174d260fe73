from __future__ import annotations

import httpx


def test_healthz_and_readyz(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
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
