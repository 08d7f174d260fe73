"""Open Inference Protocol v2 over REST: tritonclient.http unchanged, and raw HTTP for errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from modelhost.demo import IRIS_LABELS
from tests.conftest import Server


@pytest.fixture
def http(server: Server) -> Iterator[triton.InferenceServerClient]:
    """A tritonclient HTTP client bound to the session server."""
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=120.0)
    client.register_plugin(server.triton_auth())
    yield client
    client.close()


def _iris_input(rows: Any, datatype: str = "FP32", binary: bool = True) -> triton.InferInput:
    array = np.asarray(rows, dtype=np.float32 if datatype == "FP32" else np.float64)
    tensor = triton.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _texts(values: Any) -> list[str]:
    """BYTES outputs: bytes when sent as binary data, str when sent as JSON."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _v2_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body["error"], str)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# -- health and metadata -----------------------------------------------------------------------


def test_server_health_and_metadata(
    http: triton.InferenceServerClient, client: httpx.Client
) -> None:
    assert http.is_server_live()
    assert http.is_server_ready()
    metadata = http.get_server_metadata()
    assert metadata["name"] == "modelhost"
    assert "binary_tensor_data" in metadata["extensions"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_model_readiness_per_version(
    http: triton.InferenceServerClient, client: httpx.Client
) -> None:
    assert http.is_model_ready("iris")
    assert http.is_model_ready("iris", "1.0.0")
    assert http.is_model_ready("iris", "1.1.0")
    assert not http.is_model_ready("ghost")
    assert client.get("/v2/models/ghost/ready").status_code == 404
    broken = client.get("/v2/models/broken/ready")
    assert broken.status_code == 503
    assert broken.json()["ready"] is False


def test_model_metadata_describes_tensors(http: triton.InferenceServerClient) -> None:
    iris = http.get_model_metadata("iris")
    assert iris["name"] == "iris"
    assert iris["versions"] == ["1.1.0", "1.0.0"]
    assert iris["platform"] == "sklearn"
    assert iris["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert iris["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "score", "datatype": "FP64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]},
    ]
    onnx = http.get_model_metadata("iris", "1.1.0")
    assert onnx["platform"] == "onnx"
    assert onnx["outputs"][2] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
    minilm = http.get_model_metadata("minilm")
    assert minilm["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert minilm["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    gemma = http.get_model_metadata("gemma-270m")
    assert [t["name"] for t in gemma["inputs"]] == ["text_input"]
    assert [t["name"] for t in gemma["outputs"]] == ["text_output", "finish_reason"]


# -- inference ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "datatype", "binary"),
    [("1.0.0", "FP64", True), ("1.0.0", "FP32", False), ("1.1.0", "FP32", True)],
)
def test_iris_labels_match_sklearn(
    http: triton.InferenceServerClient,
    iris_data: tuple[Any, Any],
    expected_labels: list[str],
    version: str,
    datatype: str,
    binary: bool,
) -> None:
    x, _ = iris_data
    outputs = [
        triton.InferRequestedOutput("label", binary_data=binary),
        triton.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = http.infer(
        "iris",
        [_iris_input(x, datatype, binary)],
        model_version=version,
        outputs=outputs,
        request_id="flowers-1",
    )
    response = result.get_response()
    assert response["model_name"] == "iris"
    assert response["model_version"] == version
    assert response["id"] == "flowers-1"
    assert _texts(result.as_numpy("label")) == expected_labels
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (150, 3)
    assert probabilities.dtype == (np.float32 if version == "1.1.0" else np.float64)
    assert [IRIS_LABELS[i] for i in probabilities.argmax(axis=1)] == expected_labels
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert result.as_numpy("score") is None  # not asked for, not sent


def test_every_output_is_binary_by_default(
    http: triton.InferenceServerClient, iris_data: tuple[Any, Any]
) -> None:
    x, y = iris_data
    result = http.infer("iris", [_iris_input(x[:3])])
    outputs = {o["name"]: o for o in result.get_response()["outputs"]}
    assert set(outputs) == {"label", "score", "probabilities"}
    assert all("binary_data_size" in o["parameters"] for o in outputs.values())
    assert orjson.loads(outputs["probabilities"]["parameters"]["classes"]) == IRIS_LABELS
    assert _texts(result.as_numpy("label")) == [IRIS_LABELS[i] for i in y[:3]]
    assert result.as_numpy("score").shape == (3,)


def test_json_body_with_nested_or_flat_data(client: httpx.Client) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    bodies = [
        {"inputs": [{"name": "input", "datatype": "FP64", "shape": [2, 4], "data": rows}]},
        {
            "id": "r-7",
            "parameters": {"note": "flat"},
            "inputs": [
                {"name": "input", "datatype": "FP64", "shape": [2, 4], "data": rows[0] + rows[1]}
            ],
            "outputs": [{"name": "label"}],
        },
    ]
    nested, flat = (client.post("/v2/models/iris/infer", json=body) for body in bodies)
    assert nested.status_code == 200, nested.text
    assert flat.status_code == 200, flat.text
    assert nested.headers["content-type"] == "application/json"
    labels = {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["setosa", "virginica"]}
    assert nested.json()["outputs"][0] == labels
    assert flat.json()["outputs"] == [labels]
    assert flat.json()["id"] == "r-7"
    assert nested.json()["id"].startswith("pred_")
    assert nested.json()["parameters"]["input_tokens"] == 2


def test_minilm_bytes_inputs(http: triton.InferenceServerClient) -> None:
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock prices fell today."]
    tensor = triton.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object))
    vectors = http.infer("minilm", [tensor]).as_numpy("embedding")
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > 0.5 > vectors[0] @ vectors[2]


def test_other_models_take_json_documents(client: httpx.Client) -> None:
    body = {
        "inputs": [
            {
                "name": "input",
                "datatype": "BYTES",
                "shape": [2],
                "data": ['{"text": "hi"}', '{"text": "yo", "n": 2}'],
            }
        ]
    }
    response = client.post("/v2/models/echo/versions/1.0.0/infer", json=body)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["name"] == "output"
    assert [orjson.loads(d) for d in output["data"]] == [
        {"echo": {"text": "hi"}},
        {"echo": {"text": "yo", "n": 2}},
    ]


@pytest.mark.llm
def test_gemma_generates_from_text_input(http: triton.InferenceServerClient) -> None:
    prompt = triton.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array(["One, two, three,"], dtype=object))
    result = http.infer(
        "gemma-270m", [prompt], parameters={"max_tokens": 6, "temperature": 0.0, "seed": 1}
    )
    assert result.as_numpy("text_output")[0].decode().strip()
    assert result.as_numpy("finish_reason")[0].decode() in {"stop", "length"}
    assert 0 < result.get_response()["parameters"]["output_tokens"] <= 6


# -- errors ------------------------------------------------------------------------------------


def test_tritonclient_errors_carry_our_message(http: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as bad_shape:
        http.infer("iris", [_iris_input(np.zeros((2, 3)))])
    assert bad_shape.value.status() == "400"
    assert "has shape [2, 3]; this model takes [N, 4]" in str(bad_shape.value.message())
    with pytest.raises(InferenceServerException) as unknown:
        http.infer("ghost", [_iris_input(np.zeros((1, 4)))])
    assert unknown.value.status() == "404"
    assert "model 'ghost' is not registered" in str(unknown.value)
    with pytest.raises(InferenceServerException) as version:
        http.get_model_metadata("iris", "9.9.9")
    assert version.value.status() == "404"
    assert "9.9.9" in str(version.value.message())


def _tensor(**changes: Any) -> dict[str, Any]:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
    return {**tensor, **changes}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            {"inputs": [_tensor(data=[1.0, 2.0])]},
            "inputs[0].data",
            "needs 4 values but the data holds 2",
        ),
        ({"inputs": [_tensor(shape=[2, 4])]}, "inputs[0].data", "needs 8 values"),
        ({"inputs": [_tensor(datatype="FP8")]}, "inputs[0].datatype", "not a supported datatype"),
        ({"inputs": [_tensor(data=["a", "b", "c", "d"])]}, "inputs[0].data", "not float32"),
        ({"inputs": [_tensor(shape=[1, -4])]}, "inputs[0].shape", "non-negative integers"),
        ({"inputs": [_tensor(name="features")]}, "inputs[0].name", "unknown input 'features'"),
        ({"inputs": [_tensor(datatype="BYTES", data=["a"] * 4)]}, "inputs[0].datatype", "numeric"),
        ({"inputs": [_tensor(shape=[4], data=[1, 2, 3, 4])]}, "inputs[0].shape", "takes [N, 4]"),
        (
            {"inputs": [_tensor(data=[50.0, 3.5, 1.4, 0.2])]},
            "inputs[0][0]",
            "smaller than or equal to 10",
        ),
        (
            {"inputs": [_tensor()], "outputs": [{"name": "logits"}]},
            "outputs[0].name",
            "unknown output 'logits'",
        ),
        ({"inputs": []}, "inputs", "non-empty array"),
        ({"inputs": [_tensor(), _tensor()]}, "inputs", "one input tensor 'input'; got 2"),
        (
            {"inputs": [_tensor(datatype="INT8", data=[1, 2, 300, 4])]},
            "inputs[0].data",
            "out of range",
        ),
    ],
)
def test_bad_tensors_are_400_naming_the_field(
    client: httpx.Client, body: dict[str, Any], param: str, words: str
) -> None:
    error = _v2_error(client.post("/v2/models/iris/infer", json=body), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert words in error["error"]


def test_malformed_bodies_are_400(client: httpx.Client) -> None:
    not_json = _v2_error(client.post("/v2/models/iris/infer", content=b"{oops"), 400)
    assert "not valid JSON" in not_json["error"]
    header = {"Inference-Header-Content-Length": "9999"}
    past_end = client.post("/v2/models/iris/infer", content=b"{}", headers=header)
    assert _v2_error(past_end, 400)["param"] == "Inference-Header-Content-Length"
    json_part = orjson.dumps({"inputs": [_tensor(data=None, parameters={"binary_data_size": 16})]})
    short = client.post(
        "/v2/models/iris/infer",
        content=json_part + b"\x00" * 8,
        headers={"Inference-Header-Content-Length": str(len(json_part))},
    )
    assert "runs past the binary data" in _v2_error(short, 400)["error"]


def test_unknown_models_and_versions_are_404(client: httpx.Client) -> None:
    body = {"inputs": [_tensor()]}
    ghost = _v2_error(client.post("/v2/models/ghost/infer", json=body), 404)
    assert ghost["type"] == "not_found_error"
    version = _v2_error(client.post("/v2/models/iris/versions/9.9.9/infer", json=body), 404)
    assert version["param"] == "version"
    assert _v2_error(client.get("/v2/models/ghost"), 404)["error"] == (
        "model 'ghost' is not registered"
    )


def test_not_ready_is_503_and_timeout_504(client: httpx.Client) -> None:
    documents = {"name": "input", "datatype": "BYTES", "shape": [1], "data": ['{"text": "hi"}']}
    broken = _v2_error(client.post("/v2/models/broken/infer", json={"inputs": [documents]}), 503)
    assert "failed to load" in broken["error"]
    slow = client.post(
        "/v2/models/echo/infer", json={"inputs": [documents], "parameters": {"sleep": 1.0}}
    )
    assert "did not answer within" in _v2_error(slow, 504)["error"]
    time.sleep(1.0)  # let the timed-out call free its inference thread before the next test
