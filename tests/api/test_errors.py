"""Bad input gets a precise error with the right status and a JSON body; nothing crashes."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

GOOD = {"text": "hi"}


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    error: dict[str, Any] = response.json()["error"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["message"]
    return error


@pytest.mark.parametrize(
    ("item", "param", "words"),
    [
        ({"text": 5}, "inputs[0].text", "must be string"),
        ({}, "inputs[0].text", "is required"),
        ({"text": "x" * 21}, "inputs[0].text", "must be shorter than or equal to 20"),
        ({"text": "a", "n": 9}, "inputs[0].n", "must be smaller than or equal to 5"),
        ({"text": "a", "n": -1}, "inputs[0].n", "must be bigger than or equal to 0"),
        (
            {"text": "a", "tags": [1, 2, 3]},
            "inputs[0].tags",
            "must contain less than or equal to 2",
        ),
        ({"text": "a", "kind": "c"}, "inputs[0].kind", "must be one of"),
        ({"text": "a", "extra": 1}, "inputs[0]", "must not contain"),
    ],
)
def test_schema_violations_name_the_field(
    client: httpx.Client, item: dict[str, Any], param: str, words: str
) -> None:
    response = client.post("/v1/models/echo/predict", json={"inputs": [GOOD, item]})
    error = _error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param.replace("[0]", "[1]")
    assert words in error["message"]


def test_iris_out_of_range_names_the_feature(client: httpx.Client) -> None:
    flower = {"sepal_length": 50, "sepal_width": 3, "petal_length": 1, "petal_width": 0.2}
    error = _error(client.post("/v1/models/iris/predict", json={"inputs": [flower]}), 400)
    assert error["param"] == "inputs[0].sepal_length"


def test_too_many_items(client: httpx.Client) -> None:
    error = _error(client.post("/v1/models/echo/predict", json={"inputs": [GOOD] * 5}), 400)
    assert error["param"] == "inputs"
    assert "at most 4" in error["message"]


def test_bad_parameters_are_refused(client: httpx.Client) -> None:
    response = client.post(
        "/v1/models/echo/predict", json={"inputs": [GOOD], "parameters": {"sleep": -1}}
    )
    assert _error(response, 400)["param"] == "parameters.sleep"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"", "body"),
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"inputs": {"text": "hi"}}', "inputs"),
        (b'{"inputs": []}', "inputs"),
        (b'{"inputs": [{"text": "hi"}], "parameters": [1]}', "parameters"),
        (b'{"inputs": [{"text": "hi"}], "input": 1}', "input"),
        (b"\xff\xfe\x00garbage", "body"),
        (b'{"inputs": [{"text": "hi"}]', "body"),
        (b"null", "body"),
    ],
)
def test_malformed_bodies_get_400(client: httpx.Client, body: bytes, param: str) -> None:
    response = client.post(
        "/v1/models/echo/predict", content=body, headers={"content-type": "application/json"}
    )
    assert _error(response, 400)["param"] == param


def test_body_over_the_limit_gets_413(client: httpx.Client) -> None:
    big = {"inputs": [{"text": "a" * 3000}]}
    assert _error(client.post("/v1/models/echo/predict", json=big), 413)["param"] == "body"


def test_streamed_body_over_the_limit_gets_413(client: httpx.Client) -> None:
    def chunks() -> Any:
        yield b'{"inputs": ['
        for _ in range(200):
            yield b'{"text": "0123456789"},'
        yield b'{"text": "x"}]}'

    response = client.post("/v1/models/echo/predict", content=chunks())
    _error(response, 413)


def test_unknown_model_version_and_route_get_404(client: httpx.Client) -> None:
    assert (
        _error(client.post("/v1/models/nope/predict", json={"inputs": [GOOD]}), 404)["param"]
        == "model"
    )
    error = _error(
        client.post(
            "/v1/models/echo/predict", json={"inputs": [GOOD]}, headers={"X-Model-Version": "9.9.9"}
        ),
        404,
    )
    assert error["param"] == "version"
    _error(client.post("/v1/models/echo@9.9.9/predict", json={"inputs": [GOOD]}), 404)
    _error(client.get("/v1/models/nope"), 404)
    _error(client.get("/v1/nothing-here"), 404)


def test_wrong_method_is_json_405(client: httpx.Client) -> None:
    _error(client.get("/v1/models/echo/predict"), 405)


def test_slow_inference_gets_504_and_server_stays_up(client: httpx.Client) -> None:
    response = client.post(
        "/v1/models/echo/predict", json={"inputs": [GOOD], "parameters": {"sleep": 1.0}}
    )
    assert _error(response, 504)["type"] == "timeout_error"
    # the timed-out call still holds an inference thread until its sleep ends; the server keeps
    # answering and serves again as soon as a thread is free
    time.sleep(1.0)
    assert client.post("/v1/models/echo/predict", json={"inputs": [GOOD]}).status_code == 200


def test_model_that_failed_to_load_gets_503_and_others_serve(client: httpx.Client) -> None:
    error = _error(client.post("/v1/models/broken/predict", json={"inputs": [GOOD]}), 503)
    assert error["type"] == "model_not_ready"
    assert "weights are corrupt" in error["message"]
    meta = client.get("/v1/models/broken").json()
    assert meta["versions"][0]["state"] == "failed"
    assert "weights are corrupt" in meta["versions"][0]["error"]
    assert client.post("/v1/models/echo/predict", json={"inputs": [GOOD]}).status_code == 200


def test_request_id_is_echoed_or_made(client: httpx.Client) -> None:
    mine = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123"
    made = client.post("/v1/models/echo/predict", json={"inputs": [GOOD]})
    assert len(made.headers["x-request-id"]) == 24
