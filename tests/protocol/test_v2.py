"""The Open Inference Protocol v2 codec: tensors from JSON and binary data, the signature of
each kind of model, requests decoded against a routed version, responses encoded back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest

from modelhost.errors import InvalidInput
from modelhost.inference import InferenceResponse, Usage
from modelhost.manifest import ModelManifest
from modelhost.protocol import v2
from modelhost.registry import ModelInfo, Stage, VersionInfo
from modelhost.runtimes import StreamChunk
from modelhost.serving.router import Arm, Route


def _info(
    *,
    task: str = "classification",
    runtime: str = "sklearn",
    version: str = "1.0.0",
    stage: Stage = Stage.PRODUCTION,
    **manifest: Any,
) -> VersionInfo:
    spec = ModelManifest.model_validate(
        {"name": "m", "version": version, "runtime": runtime, "task": task, **manifest}
    )
    return VersionInfo(
        model="m",
        version=version,
        runtime=runtime,
        stage=stage,
        manifest=spec,
        files={},
        size_bytes=0,
        created_at=datetime.now(UTC),
        created_by="t",
    )


def _request(*inputs: v2.Tensor, outputs: list[str] | None = None, **params: Any) -> v2.V2Request:
    return v2.V2Request(
        inputs=list(inputs),
        outputs=None if outputs is None else [v2.RequestedOutput(name) for name in outputs],
        parameters=params,
    )


def _bytes(name: str, *texts: str) -> v2.Tensor:
    return v2.tensor_from_values(name, "BYTES", [len(texts)], list(texts), "inputs[0]")


def _error(call: Any, *args: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        call(*args)
    return caught.value


# -- tensors -----------------------------------------------------------------------------------


def test_nested_and_flat_values_give_the_same_tensor() -> None:
    nested = v2.tensor_from_values("input", "FP32", [2, 2], [[1, 2], [3, 4.5]], "inputs[0]")
    flat = v2.tensor_from_values("input", "FP32", [2, 2], [1, 2, 3, 4.5], "inputs[0]")
    assert nested.data.dtype == np.float32
    assert nested.data.shape == (2, 2)
    assert np.array_equal(nested.data, flat.data)
    assert v2.tensor_values(nested) == [1.0, 2.0, 3.0, 4.5]


def test_a_value_count_that_does_not_match_the_shape_is_named() -> None:
    error = _error(v2.tensor_from_values, "input", "FP32", [2, 3], [1, 2, 3], "inputs[0]")
    assert error.param == "inputs[0].data"
    assert "needs 6 values but the data holds 3" in str(error)


def test_an_unknown_datatype_lists_the_supported_ones() -> None:
    error = _error(v2.tensor_from_values, "input", "FP128", [1], [1], "inputs[0]")
    assert error.param == "inputs[0].datatype"
    assert "FP128" in str(error)
    assert "FP64" in str(error)
    assert _error(v2.check_datatype, 7, "x").param == "x"
    assert v2.check_datatype("INT8", "x") == "INT8"


@pytest.mark.parametrize("shape", [[-1, 2], [1.5], "2", [True]])
def test_a_shape_must_be_non_negative_integers(shape: Any) -> None:
    assert _error(v2.check_shape, shape, "inputs[0].shape").param == "inputs[0].shape"


def test_a_shape_tuple_is_accepted_as_a_list() -> None:
    assert v2.check_shape((2, 0), "s") == [2, 0]


def test_floats_are_refused_for_an_integer_tensor_and_out_of_range_integers_too() -> None:
    error = _error(v2.tensor_from_values, "x", "INT32", [2], [1, 2.5], "inputs[0]")
    assert "not int32" in str(error)
    error = _error(v2.tensor_from_values, "x", "UINT8", [1], [300], "inputs[0]")
    assert "out of range for uint8" in str(error)
    ints = v2.tensor_from_values("x", "FP64", [2], [1, 2], "inputs[0]")
    assert ints.data.dtype == np.float64  # integers widen into a float tensor


def test_bytes_tensors_take_strings_and_refuse_numbers() -> None:
    tensor = _bytes("text", "héllo", "")
    assert tensor.data.tolist() == ["héllo".encode(), b""]
    assert v2.tensor_values(tensor) == ["héllo", ""]
    error = _error(v2.tensor_from_values, "text", "BYTES", [2], ["a", 3], "inputs[0]")
    assert error.param == "inputs[0].data"
    assert "[1] is int" in str(error)


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64", "INT8", "UINT64", "BOOL"])
def test_binary_data_round_trips_little_endian(datatype: str) -> None:
    values = [True, False, True, True, False, True] if datatype == "BOOL" else [1, 2, 3, 4, 5, 6]
    tensor = v2.tensor_from_values("x", datatype, [2, 3], values, "inputs[0]")
    raw = v2.tensor_bytes(tensor)
    assert len(raw) == 6 * v2.DATATYPES[datatype].itemsize
    back = v2.tensor_from_bytes("x", datatype, [2, 3], raw, "inputs[0]")
    assert back.data.dtype == v2.DATATYPES[datatype]
    assert np.array_equal(back.data, tensor.data)
    if datatype == "FP32":
        assert raw[:4] == np.float32(1).astype("<f4").tobytes()


def test_binary_data_of_the_wrong_length_is_refused() -> None:
    error = _error(v2.tensor_from_bytes, "x", "FP32", [3], b"\0" * 8, "inputs[0]")
    assert "shape [3] of FP32 needs 12 bytes but the data holds 8" in str(error)
    assert error.param == "inputs[0] binary data"


def test_bytes_elements_are_length_prefixed_and_checked() -> None:
    raw = v2.serialize_bytes([b"ab", b"", b"xyz"])
    assert raw == b"\x02\0\0\0ab\0\0\0\0\x03\0\0\0xyz"
    assert v2.deserialize_bytes(raw, 3, "p").tolist() == [b"ab", b"", b"xyz"]
    assert "ends before element 3" in str(_error(v2.deserialize_bytes, raw, 4, "p"))
    assert "runs past the end" in str(_error(v2.deserialize_bytes, raw[:-1], 3, "p"))
    assert "1 bytes after its 3 elements" in str(
        _error(v2.deserialize_bytes, raw + b"\x07", 3, "p")
    )
    tensor = v2.tensor_from_bytes("t", "BYTES", [3], raw, "inputs[0]")
    assert v2.tensor_bytes(tensor) == raw


def test_protocol_parameters_are_not_passed_to_the_model() -> None:
    params = {
        "temperature": 0.2,
        "sequence_id": 7,
        "priority": 1,
        "binary_data_output": True,
        "triton_enable_empty_final_response": True,
    }
    assert v2.model_parameters(params) == {"temperature": 0.2}


# -- signatures and metadata ----------------------------------------------------------------


def test_a_classifier_signature_takes_its_width_and_classes_from_the_manifest() -> None:
    info = _info(options={"feature_names": ["a", "b", "c"], "labels": ["x", "y"]})
    sig = v2.signature(info)
    assert sig.kind is v2.Kind.TABULAR
    assert [s.as_dict() for s in sig.inputs] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 3]}
    ]
    assert [(s.name, s.datatype, s.shape) for s in sig.outputs] == [
        ("label", "BYTES", (-1,)),
        ("score", "FP64", (-1,)),
        ("probabilities", "FP64", (-1, 2)),
    ]


def test_an_onnx_classifier_scores_in_fp32_and_reads_width_from_the_input_schema() -> None:
    info = _info(
        runtime="onnx",
        artifacts={"model": "model.onnx"},
        input_schema={"type": "array", "minItems": 4, "maxItems": 4},
    )
    sig = v2.signature(info, {"classes": ["a", "b", "c"]})
    assert sig.inputs[0].shape == (-1, 4)
    assert {s.name: (s.datatype, s.shape) for s in sig.outputs}["probabilities"] == (
        "FP32",
        (-1, 3),
    )


def test_an_unknown_width_is_a_free_dimension() -> None:
    sig = v2.signature(_info(input_schema={"type": "array", "minItems": 1, "maxItems": 9}))
    assert sig.inputs[0].shape == (-1, -1)
    assert sig.outputs[2].shape == (-1, -1)


def test_regression_embedding_generation_and_custom_signatures() -> None:
    regression = v2.signature(_info(task="regression"))
    assert [s.name for s in regression.outputs] == ["value"]
    embedding = v2.signature(_info(task="embedding"), {"dimensions": 384})
    assert embedding.kind is v2.Kind.EMBEDDING
    assert embedding.inputs[0] == v2.TensorSpec("text", "BYTES", (-1,))
    assert embedding.outputs[0] == v2.TensorSpec("embedding", "FP32", (-1, 384))
    generation = v2.signature(_info(task="generation"))
    assert [s.name for s in generation.inputs] == ["text_input"]
    assert [s.name for s in generation.outputs] == ["text_output", "finish_reason"]
    custom = v2.signature(_info(task="custom"))
    assert custom.kind is v2.Kind.JSON
    assert custom.inputs[0] == v2.TensorSpec("input", "BYTES", (-1,))


def test_model_metadata_lists_versions_that_are_not_archived() -> None:
    live = _info(version="2.0.0")
    old = _info(version="1.0.0", stage=Stage.ARCHIVED)
    model = ModelInfo(name="m", created_at=live.created_at, versions=[live, old], aliases={})
    meta = v2.model_metadata(model, live)
    assert meta["name"] == "m"
    assert meta["versions"] == ["2.0.0"]
    assert meta["platform"] == "sklearn"
    assert [t["name"] for t in meta["outputs"]] == ["label", "score", "probabilities"]


# -- requests ----------------------------------------------------------------------------------


def test_a_tabular_request_becomes_rows_of_the_routed_version() -> None:
    info = _info(options={"feature_names": ["a", "b"]})
    tensor = v2.tensor_from_values("input", "FP32", [2, 2], [1, 2, 3, 4], "inputs[0]")
    request = _request(tensor, temperature=1, timeout=5)
    request.body_bytes = 99
    out = v2.to_inference_request(request, Route(info, Arm.PRODUCTION), "r1", "v2")
    assert out.model == "m"
    assert out.version is None  # the deployment's split chose it: not a pin
    assert out.inputs == [[1.0, 2.0], [3.0, 4.0]]
    assert out.parameters == {"temperature": 1}
    assert (out.request_id, out.protocol, out.body_bytes) == ("r1", "v2", 99)
    pinned = v2.to_inference_request(request, Route(info, Arm.PINNED), "r2", "grpc")
    assert pinned.version == "1.0.0"


def test_a_tabular_request_of_the_wrong_width_or_type_is_refused() -> None:
    route = Route(_info(options={"feature_names": ["a", "b"]}), Arm.PRODUCTION)
    wide = v2.tensor_from_values("input", "FP32", [1, 3], [1, 2, 3], "inputs[0]")
    error = _error(v2.to_inference_request, _request(wide), route, "r", "v2")
    assert error.param == "inputs[0].shape"
    assert "[N, 2]" in str(error)
    flat = v2.tensor_from_values("input", "FP32", [2], [1, 2], "inputs[0]")
    assert _error(v2.to_inference_request, _request(flat), route, "r", "v2").param == (
        "inputs[0].shape"
    )
    text = _bytes("input", "a")
    error = _error(v2.to_inference_request, _request(text), route, "r", "v2")
    assert error.param == "inputs[0].datatype"
    assert "must be numeric" in str(error)


def test_inputs_and_outputs_must_be_the_models_own() -> None:
    route = Route(_info(task="embedding"), Arm.PRODUCTION)
    error = _error(v2.to_inference_request, _request(_bytes("prompt", "a")), route, "r", "v2")
    assert error.param == "inputs[0].name"
    assert "'text'" in str(error)
    two = _request(_bytes("text", "a"), _bytes("text", "b"))
    assert "got 2" in str(_error(v2.to_inference_request, two, route, "r", "v2"))
    wrong = _request(_bytes("text", "a"), outputs=["vector"])
    error = _error(v2.to_inference_request, wrong, route, "r", "v2")
    assert error.param == "outputs[0].name"
    assert "embedding" in str(error)


def test_texts_must_be_utf8_and_documents_json() -> None:
    bad = v2.Tensor("text", "BYTES", [1], np.array([b"\xff\xfe"], dtype=object))
    route = Route(_info(task="embedding"), Arm.PRODUCTION)
    error = _error(v2.to_inference_request, _request(bad), route, "r", "v2")
    assert "not UTF-8" in str(error)
    numbers = v2.tensor_from_values("text", "FP32", [1], [1], "inputs[0]")
    assert "must be BYTES" in str(
        _error(v2.to_inference_request, _request(numbers), route, "r", "v2")
    )
    custom = Route(_info(task="custom", runtime="python", entrypoint="m:M"), Arm.PRODUCTION)
    docs = v2.to_inference_request(_request(_bytes("input", '{"a": 1}', "[2]")), custom, "r", "v2")
    assert docs.inputs == [{"a": 1}, [2]]
    error = _error(v2.to_inference_request, _request(_bytes("input", "{")), custom, "r", "v2")
    assert "element 0 of 'input' is not a JSON document" in str(error)


def _feature_store_info() -> VersionInfo:
    return _info(
        feature_store={"repo": "/repo", "entities": ["driver_id"], "features": ["drivers:rating"]},
        input_schema={
            "type": "object",
            "properties": {"driver_id": {"type": "integer"}, "city": {"type": "string"}},
        },
    )


def test_a_feature_store_model_takes_one_column_tensor_per_request_field() -> None:
    info = _feature_store_info()
    sig = v2.signature(info)
    assert sig.inputs == (
        v2.TensorSpec("driver_id", "INT64", (-1,)),
        v2.TensorSpec("city", "BYTES", (-1,)),
    )
    ids = v2.tensor_from_values("driver_id", "INT64", [2], [1001, 1002], "inputs[0]")
    request = _request(ids, _bytes("city", "Oslo", "Rome"))
    out = v2.to_inference_request(request, Route(info, Arm.PRODUCTION), "r", "v2")
    assert out.inputs == [
        {"driver_id": 1001, "city": "Oslo"},
        {"driver_id": 1002, "city": "Rome"},
    ]


def test_feature_store_columns_must_be_known_and_of_one_length() -> None:
    route = Route(_feature_store_info(), Arm.PRODUCTION)
    ids = v2.tensor_from_values("driver_id", "INT64", [2], [1, 2], "inputs[0]")
    error = _error(
        v2.to_inference_request, _request(ids, _bytes("town", "x", "y")), route, "r", "v2"
    )
    assert error.param == "inputs[1].name"
    uneven = _request(ids, _bytes("city", "Oslo"))
    assert "differ in length" in str(_error(v2.to_inference_request, uneven, route, "r", "v2"))


# -- responses ---------------------------------------------------------------------------------


def _response(info: VersionInfo, results: list[Any]) -> InferenceResponse:
    return InferenceResponse.of(info, results, Usage(input_tokens=3, output_tokens=5))


def test_a_classification_answer_becomes_label_score_and_probabilities() -> None:
    info = _info()
    results = [
        {"label": "x", "score": 0.75, "probabilities": {"x": 0.75, "y": 0.25}},
        {"label": "y", "score": 0.5, "probabilities": {"x": 0.5, "y": 0.5}},
    ]
    out = v2.from_inference_response(_response(info, results), info, _request())
    assert (out.model_name, out.model_version) == ("m", "1.0.0")
    assert out.parameters == {"input_tokens": 3, "output_tokens": 5}
    label, score, probabilities = out.outputs
    assert v2.tensor_values(label) == ["x", "y"]
    assert score.datatype == "FP64"
    assert v2.tensor_values(score) == [0.75, 0.5]
    assert probabilities.shape == [2, 2]
    assert orjson.loads(probabilities.parameters["classes"]) == ["x", "y"]


def test_a_label_only_classifier_sends_labels_alone() -> None:
    info = _info()
    out = v2.from_inference_response(_response(info, [{"label": 3}]), info, _request())
    assert [t.name for t in out.outputs] == ["label"]
    assert v2.tensor_values(out.outputs[0]) == ["3"]


def test_only_the_requested_outputs_are_sent_and_the_request_id_is_kept() -> None:
    info = _info(runtime="onnx", artifacts={"model": "model.onnx"})
    results = [{"label": "x", "score": 0.9, "probabilities": {"x": 0.9, "y": 0.1}}]
    request = _request(outputs=["probabilities"])
    request.id = "caller-id"
    out = v2.from_inference_response(_response(info, results), info, request)
    assert out.id == "caller-id"
    assert [(t.name, t.datatype) for t in out.outputs] == [("probabilities", "FP32")]


def test_regression_embedding_generation_and_json_answers() -> None:
    regression = _info(task="regression")
    out = v2.from_inference_response(
        _response(regression, [{"value": 1.5}]), regression, _request()
    )
    assert [(t.name, t.datatype, t.shape) for t in out.outputs] == [("value", "FP64", [1])]
    embedding = _info(task="embedding")
    answer = _response(embedding, [{"embedding": [0.1, 0.2]}])
    out = v2.from_inference_response(answer, embedding, _request())
    assert (out.outputs[0].datatype, out.outputs[0].shape) == ("FP32", [1, 2])
    generation = _info(task="generation")
    answer = _response(generation, [{"text": "hi", "finish_reason": "length"}, {"text": "yo"}])
    text, finish = v2.from_inference_response(answer, generation, _request()).outputs
    assert v2.tensor_values(text) == ["hi", "yo"]
    assert v2.tensor_values(finish) == ["length", ""]
    custom = _info(task="custom")
    out = v2.from_inference_response(_response(custom, [{"a": [1]}]), custom, _request())
    assert orjson.loads(v2.tensor_values(out.outputs[0])[0]) == {"a": [1]}


def test_stream_pieces_end_with_the_finish_reason_and_usage() -> None:
    info = _info(task="generation")
    piece = v2.from_stream_chunk(StreamChunk("Hel"), info, _request(), "resp-1")
    assert piece.id == "resp-1"
    assert [t.name for t in piece.outputs] == ["text_output"]
    assert piece.parameters == {}
    last = v2.from_stream_chunk(
        StreamChunk("", "stop", Usage(input_tokens=4, output_tokens=2)), info, _request(), "r"
    )
    assert [v2.tensor_values(t) for t in last.outputs] == [[""], ["stop"]]
    assert last.parameters == {
        "triton_final_response": True,
        "input_tokens": 4,
        "output_tokens": 2,
    }
    only_text = v2.from_stream_chunk(
        StreamChunk("", "stop"), info, _request(outputs=["text_output"]), "r"
    )
    assert [t.name for t in only_text.outputs] == ["text_output"]
