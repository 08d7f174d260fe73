"""Hostile request bodies on every surface that reads one: REST v1 predict, OpenAI chat and
embeddings, OIP v2 infer, jobs and batches.

Each must be answered at once with a 4xx JSON error naming the problem (never a 500, never a
hang), and the server must still be ready afterwards. A real server on loopback (the iris demo
model only, 1 MiB bodies for the server-wide limit and 2 MiB for batches) so that the HTTP
layer's own parsing is exercised too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server

MiB = 1024 * 1024
#: Every body-reading route, and the smallest body it accepts as JSON.
ROUTES: dict[str, bytes] = {
    "/v1/models/iris/predict": b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}',
    "/v1/chat/completions": b'{"model": "iris", "messages": [{"role": "user", "content": "hi"}]}',
    "/v1/embeddings": b'{"model": "iris", "input": "hi"}',
    "/v2/models/iris/infer": (
        b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4],'
        b' "data": [5.1, 3.5, 1.4, 0.2]}]}'
    ),
    "/v1/jobs": b'{"model": "iris", "inputs": [[5.1, 3.5, 1.4, 0.2]]}',
    "/v1/batch/predict": b'{"model": "iris", "inputs": [[5.1, 3.5, 1.4, 0.2]]}',
}
#: Bodies no route can parse, and what the error message must say.
MALFORMED: dict[str, tuple[bytes, str]] = {
    "truncated": (b'{"inputs": [', "not valid JSON"),
    "deeply nested": (b"[" * 100_000, "not valid JSON"),
    "NaN literal": (b'{"inputs": [[NaN, 1, 2, 3]]}', "not valid JSON"),
    "Infinity literal": (b'{"inputs": [[Infinity, 1, 2, 3]]}', "not valid JSON"),
    "number beyond double": (b'{"inputs": [[1e999, 1, 2, 3]]}', "not valid JSON"),
    "lone surrogate escape": (b'{"inputs": ["\\ud800"]}', "not valid JSON"),
    "surrogate as raw UTF-8": (b'{"inputs": ["\xed\xa0\x80"]}', "not valid JSON"),
    "not UTF-8 at all": (b'{"inputs": ["\xff\xfe"]}', "not valid JSON"),
    "empty": (b"", "empty"),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with only the iris demo model and small body limits."""
    home = tmp_path_factory.mktemp("hostile")
    env = {
        "MODELHOST_DEMO__MODELS": '["iris"]',
        "MODELHOST_INFERENCE__DEFAULT_MAX_REQUEST_BYTES": str(MiB),
        "MODELHOST_JOBS__BATCH_MAX_BYTES": str(2 * MiB),
        "MODELHOST_LIMITS__REQUESTS_PER_MINUTE": "100000",
    }
    started = start_server(home, home / "server.log", env=env)
    yield started
    stop_server(started)


@pytest.fixture
def http(hostile: Server) -> Iterator[httpx.Client]:
    """A client with a short timeout (a hang fails), checking readiness after each test."""
    with hostile.client(timeout=30) as client:
        yield client
        assert client.get("/readyz").status_code == 200


def _json(content: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "Content-Length": str(len(content))}


def error_of(response: httpx.Response, *statuses: int) -> tuple[str, str | None]:
    """The message and param of a 4xx JSON error in ``statuses`` (either error shape)."""
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    if isinstance(error, str):  # the v2 shape
        body = response.json()
        return error, body.get("param")
    assert error["request_id"]
    return str(error["message"]), error.get("param")


@pytest.mark.parametrize("path", list(ROUTES))
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_json_is_a_400_naming_it(http: httpx.Client, path: str, case: str) -> None:
    body, said = MALFORMED[case]
    message, param = error_of(http.post(path, content=body, headers=_json(body)), 400)
    assert said in message
    assert param == "body"


@pytest.mark.parametrize("path", list(ROUTES))
def test_a_body_over_the_limit_is_a_413(http: httpx.Client, path: str) -> None:
    limit = 2 * MiB if path.startswith("/v1/batch") else MiB
    body = b'{"inputs": ["' + b"x" * limit + b'"]}'
    message, _ = error_of(http.post(path, content=body, headers=_json(body)), 413)
    assert str(limit) in message


@pytest.mark.parametrize("path", list(ROUTES))
@pytest.mark.parametrize("media", ["text/plain", "application/xml", "multipart/form-data"])
def test_a_wrong_content_type_is_a_415(http: httpx.Client, path: str, media: str) -> None:
    body = ROUTES[path]
    response = http.post(path, content=body, headers={"Content-Type": media})
    message, param = error_of(response, 415)
    assert media.split("/")[0] in message
    assert param == "content-type"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/models/iris/predict",
            b'{"inputs": [' + b",".join([b"[1, 2, 3, 4]"] * 100_000) + b"]}",
        ),
        ("/v1/models/iris/predict", b'{"inputs": [' + b",".join([b"1"] * 100_000) + b"]}"),
        ("/v1/embeddings", b'{"model": "iris", "input": [' + b",".join([b'"a"'] * 100_000) + b"]}"),
        (
            "/v2/models/iris/infer",
            b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [100000, 4], "data": ['
            + b",".join([b"1"] * 400_000)
            + b"]}]}",
        ),
        (
            "/v1/jobs",
            b'{"model": "iris", "inputs": [' + b",".join([b"[1, 2, 3, 4]"] * 100_000) + b"]}",
        ),
    ],
    ids=["predict-rows", "predict-scalars", "embeddings", "v2", "jobs"],
)
def test_100k_inputs_are_refused(http: httpx.Client, path: str, body: bytes) -> None:
    message, _ = error_of(http.post(path, content=body, headers=_json(body)), 400, 413)
    words = ("100000", "at most", "bytes", "needs a model whose task")  # no embedding model here
    assert any(word in message for word in words), message


def test_a_job_of_100k_inputs_fails_naming_the_limit(http: httpx.Client) -> None:
    """Under the body limit, a job is checked against its model when it runs, not at submit
    (as an unknown model is): it is queued, then fails at once with the 400 error kept."""
    body = b'{"model": "iris", "inputs": [' + b",".join([b"[1,2,3,4]"] * 100_000) + b"]}"
    submitted = http.post("/v1/jobs", content=body, headers=_json(body))
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    deadline = time.monotonic() + 60
    while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] not in ("failed", "succeeded"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["status"] == "failed"
    assert job["error"]["type"] == "InvalidInput"
    assert "1024" in job["error"]["message"]


def test_a_batch_over_its_item_limit_is_a_400(http: httpx.Client) -> None:
    body = b'{"model": "iris", "inputs": [' + b",".join([b"1"] * 100_001) + b"]}"
    message, param = error_of(
        http.post("/v1/batch/predict", content=body, headers=_json(body)), 400
    )
    assert "100001 items" in message
    assert param == "inputs"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [10**12, 2**63, -1, 1e308])
def test_huge_max_tokens_is_a_4xx(http: httpx.Client, field: str, value: float) -> None:
    body = {"model": "iris", "messages": [{"role": "user", "content": "hi"}], field: value}
    _, param = error_of(http.post("/v1/chat/completions", json=body), 400)
    assert param in (field, "model")


@pytest.mark.parametrize(
    "text",
    ["\u0000", "a\u0000b", "\u202eevil\u202c", "\u200f\u200e", "\ufeff", "\U0010ffff", "e\u0301"],
    ids=["nul", "inner-nul", "rtl-override", "rtl-marks", "bom", "max-codepoint", "combining"],
)
def test_unicode_edge_cases_are_4xx_never_500(http: httpx.Client, text: str) -> None:
    chat = {"model": text, "messages": [{"role": "user", "content": text}]}
    error_of(http.post("/v1/chat/completions", json=chat), 400, 404)
    error_of(http.post("/v1/embeddings", json={"model": "iris", "input": text}), 400)
    error_of(http.post("/v1/models/iris/predict", json={"inputs": [text]}), 400)
    job = http.post("/v1/jobs", json={"model": text, "inputs": [1]})
    if job.status_code != 202:  # a printable name is queued, and fails as an unknown model
        error_of(job, 400)
    batch = {"model": "iris", "inputs": [1], "idempotency_key": text}
    response = http.post("/v1/batch/predict", json=batch)
    if response.status_code not in (200, 202):  # a printable key is a key like any other
        error_of(response, 400)
    v2 = {"inputs": [{"name": text, "datatype": "BYTES", "shape": [1], "data": [text]}]}
    error_of(http.post("/v2/models/iris/infer", json=v2), 400)
    error_of(http.post(f"/v1/models/{quote(text)}/predict", json={"inputs": [1]}), 400, 404)


def test_nul_in_a_model_name_is_named(http: httpx.Client) -> None:
    message, param = error_of(
        http.post("/v1/jobs", json={"model": "ir\u0000is", "inputs": [1]}), 400
    )
    assert param == "model"
    assert "control characters" in message


def test_the_server_is_still_ready(hostile: Server) -> None:
    with hostile.client(timeout=10) as client:
        assert client.get("/readyz").status_code == 200
        ok = client.post("/v1/models/iris/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]})
        assert ok.status_code == 200, ok.text
