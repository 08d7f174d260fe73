"""Open Inference Protocol v2 over gRPC: tritonclient.grpc unchanged, plus the checked-in stubs."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from modelhost.demo import IRIS_LABELS
from modelhost.grpc import grpc_service_pb2 as pb
from modelhost.grpc import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import Server

StreamItem = tuple[Any, InferenceServerException | None]


@pytest.fixture
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    """A tritonclient gRPC client bound to the session server."""
    assert server.grpc_port
    grpc_client = triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    grpc_client.register_plugin(server.triton_auth())
    yield grpc_client
    grpc_client.close()


class _Bearer(grpc.UnaryUnaryClientInterceptor):
    """Adds ``authorization: Bearer <key>`` metadata to every unary call."""

    def __init__(self, key: str) -> None:
        self.key = key

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or []), ("authorization", f"Bearer {self.key}")]
        return continuation(details._replace(metadata=metadata), request)


@pytest.fixture
def stub(server: Server) -> Iterator[Any]:
    """The checked-in generated stub (untyped, as grpcio-tools writes it), on its own channel
    carrying the admin key."""
    make = cast(Callable[[grpc.Channel], Any], pb_grpc.GRPCInferenceServiceStub)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield make(grpc.intercept_channel(channel, _Bearer(server.api_key)))


def _iris_input(rows: Any, datatype: str = "FP32") -> triton.InferInput:
    array = np.asarray(rows, dtype=np.float32 if datatype == "FP32" else np.float64)
    tensor = triton.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _texts(values: Any) -> list[str]:
    return [v.decode() for v in values]


def test_server_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "modelhost"
    assert list(metadata.extensions) == ["binary_tensor_data", "parameters"]
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "1.1.0")
    assert not client.is_model_ready("broken")


def test_model_metadata_describes_tensors(client: triton.InferenceServerClient) -> None:
    iris = client.get_model_metadata("iris", "1.1.0", as_json=True)
    assert iris["platform"] == "onnx"
    assert iris["versions"] == ["1.1.0", "1.0.0"]
    assert iris["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [(o["name"], o["datatype"]) for o in iris["outputs"]] == [
        ("label", "BYTES"),
        ("score", "FP32"),
        ("probabilities", "FP32"),
    ]
    minilm = client.get_model_metadata("minilm")
    assert list(minilm.outputs[0].shape) == [-1, 384]


@pytest.mark.parametrize(("version", "datatype"), [("1.0.0", "FP64"), ("1.1.0", "FP32")])
def test_iris_labels_match_sklearn(
    client: triton.InferenceServerClient,
    iris_data: tuple[Any, Any],
    expected_labels: list[str],
    version: str,
    datatype: str,
) -> None:
    x, _ = iris_data
    result = client.infer(
        "iris", [_iris_input(x, datatype)], model_version=version, request_id="grpc-1"
    )
    response = result.get_response()
    assert response.model_version == version
    assert response.id == "grpc-1"
    assert _texts(result.as_numpy("label")) == expected_labels
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (150, 3)
    assert [IRIS_LABELS[i] for i in probabilities.argmax(axis=1)] == expected_labels
    assert np.allclose(result.as_numpy("score"), probabilities.max(axis=1))


def test_requested_outputs_only(client: triton.InferenceServerClient) -> None:
    result = client.infer(
        "iris",
        [_iris_input([[5.1, 3.5, 1.4, 0.2]])],
        outputs=[triton.InferRequestedOutput("label")],
    )
    assert [o.name for o in result.get_response().outputs] == ["label"]
    assert _texts(result.as_numpy("label")) == ["setosa"]


def test_minilm_bytes_inputs(client: triton.InferenceServerClient) -> None:
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock prices fell today."]
    tensor = triton.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object))
    vectors = client.infer("minilm", [tensor]).as_numpy("embedding")
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > 0.5 > vectors[0] @ vectors[2]


def test_typed_contents_through_the_checked_in_stub(
    stub: Any,
) -> None:
    request = pb.ModelInferRequest(model_name="iris", model_version="1.0.0", id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3])
    request.parameters["note"].string_param = "typed contents"
    response = stub.ModelInfer(request, timeout=60)
    assert response.id == "typed"
    assert [o.name for o in response.outputs] == ["label", "score", "probabilities"]
    assert len(response.raw_output_contents) == 3
    labels = response.raw_output_contents[0]
    assert labels == b"\x06\x00\x00\x00setosa\x09\x00\x00\x00virginica"
    assert response.parameters["input_tokens"].int64_param == 2


@pytest.mark.parametrize(
    ("model", "shape", "code", "words"),
    [
        (
            "iris",
            [2, 3],
            "StatusCode.INVALID_ARGUMENT",
            "has shape [2, 3]; this model takes [N, 4]",
        ),
        ("ghost", [1, 4], "StatusCode.NOT_FOUND", "model 'ghost' is not registered"),
    ],
)
def test_errors_map_to_status_codes(
    client: triton.InferenceServerClient, model: str, shape: list[int], code: str, words: str
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [_iris_input(np.ones(shape))])
    assert caught.value.status() == code
    assert words in str(caught.value.message())


def test_unavailable_and_deadline_exceeded(stub: Any) -> None:
    def documents(model: str) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="input", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(b'\x0e\x00\x00\x00{"text": "hi"}')
        return request

    with pytest.raises(grpc.RpcError) as broken:
        stub.ModelInfer(documents("broken"), timeout=60)
    assert broken.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "failed to load" in str(broken.value.details())
    slow = documents("echo")
    slow.parameters["sleep"].double_param = 1.0
    with pytest.raises(grpc.RpcError) as timeout:
        stub.ModelInfer(slow, timeout=60)
    assert timeout.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not answer within" in str(timeout.value.details())
    time.sleep(1.0)  # the timed-out call holds an inference thread until its sleep ends
    ok = stub.ModelInfer(documents("echo"), timeout=60)
    assert ok.raw_output_contents[0][4:] == b'{"echo":{"text":"hi"}}'


def _collect(results: queue.Queue[StreamItem], final: str) -> list[StreamItem]:
    """Responses up to and including one whose ``final`` bool parameter is set, or an error."""
    items = []
    while True:
        item = results.get(timeout=120)
        items.append(item)
        result, error = item
        if error is not None or result.get_response().parameters[final].bool_param:
            return items


def test_stream_reports_errors_and_stays_open(
    client: triton.InferenceServerClient, iris_data: tuple[Any, Any]
) -> None:
    results: queue.Queue[StreamItem] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("ghost", [_iris_input([[5.1, 3.5, 1.4, 0.2]])])
        _, error = results.get(timeout=60)
        assert error is not None
        assert "model 'ghost' is not registered" in str(error.message())
        client.async_stream_infer("iris", [_iris_input(iris_data[0][:2])], request_id="again")
        result, error = results.get(timeout=60)
        assert error is None
        assert result.get_response().id == "again"
        assert _texts(result.as_numpy("label")) == ["setosa", "setosa"]
    finally:
        client.stop_stream()


@pytest.mark.llm
def test_gemma_tokens_stream(client: triton.InferenceServerClient) -> None:
    results: queue.Queue[StreamItem] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    prompts = triton.InferInput("text_input", [2], "BYTES")
    prompts.set_data_from_numpy(np.array(["One,", "Two,"], dtype=object))
    prompt = triton.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array(["Count: one, two,"], dtype=object))
    try:
        client.async_stream_infer("gemma-270m", [prompts])
        _, error = results.get(timeout=60)
        assert error is not None
        assert "takes one prompt; text_input holds 2" in str(error.message())
        client.async_stream_infer(
            "gemma-270m",
            [prompt],
            request_id="tokens",
            parameters={"max_tokens": 6, "temperature": 0.0, "seed": 1},
        )
        items = _collect(results, "triton_final_response")
    finally:
        client.stop_stream()
    assert all(error is None for _, error in items)
    pieces = [_texts(result.as_numpy("text_output"))[0] for result, _ in items]
    assert 2 <= len(pieces) <= 7  # up to six tokens, then the final response
    assert "".join(pieces).strip()
    final = items[-1][0]
    assert _texts(final.as_numpy("finish_reason"))[0] in {"stop", "length"}
    assert 0 < final.get_response().parameters["output_tokens"].int64_param <= 6
    assert {result.get_response().id for result, _ in items} == {"tokens"}
