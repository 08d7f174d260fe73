"""Open Inference Protocol v2 (KServe v2 / Triton): tensors and the one codec to the data plane.

REST (:mod:`modelhost.api.v2`) and gRPC (:mod:`modelhost.grpc.server`) parse their wire format
into :class:`Tensor` objects and use this module, and only this module, to turn them into one
:class:`~modelhost.serving.dataplane.InferenceRequest` and the plane's answer back into output
tensors. How a model's inputs and results map to tensors follows from its manifest:

======================  ================================  ======================================
model                   input tensor                      output tensors
======================  ================================  ======================================
tabular classifier      ``input`` numeric ``[N, F]``      ``label`` BYTES ``[N]``, ``score``
                                                          ``[N]``, ``probabilities`` ``[N, C]``
tabular regression      ``input`` numeric ``[N, F]``      ``value`` FP64 ``[N]`` or ``[N, K]``
embedding               ``text`` BYTES ``[N]``            ``embedding`` FP32 ``[N, D]``
generation              ``text_input`` BYTES ``[N]``      ``text_output``, ``finish_reason``
                                                          BYTES ``[N]``
anything else           ``input`` BYTES ``[N]`` (JSON)    ``output`` BYTES ``[N]`` (JSON)
======================  ================================  ======================================

Scores and probabilities are FP32 for ONNX models and FP64 otherwise (the model's own precision).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, Field

from modelhost.errors import InvalidInput
from modelhost.inference import InferenceRequest, InferenceResponse
from modelhost.manifest import ModelManifest, Task
from modelhost.registry import ModelInfo, Stage, VersionInfo
from modelhost.runtimes import StreamChunk
from modelhost.security.keys import Principal
from modelhost.serving.router import Arm, Route

#: numpy dtype of each v2 datatype; BYTES elements are ``bytes`` in an object array.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
#: Source kinds (numpy ``dtype.kind`` of the JSON values) each target kind accepts.
_ACCEPTS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}
#: Request parameters that steer the protocol (Triton's reserved names), not the model.
RESERVED_PARAMETERS = frozenset(
    {
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
        "headers",
        "binary_data_output",
    }
)
#: Protocol extensions this server implements (in server metadata).
EXTENSIONS = ["binary_tensor_data", "parameters"]
_LENGTH = struct.Struct("<I")


class Kind(StrEnum):
    """How a model's inputs and results map to tensors."""

    TABULAR = "tabular"  #: one numeric [N, F] tensor in; label/score/probabilities or value out
    EMBEDDING = "embedding"  #: texts in, vectors out
    GENERATION = "generation"  #: prompts in, generated text out
    JSON = "json"  #: JSON documents in and out, one per BYTES element


@dataclass(slots=True)
class Tensor:
    """One named, typed, shaped tensor; ``data`` already has ``shape``."""

    name: str
    datatype: str
    shape: list[int]
    data: npt.NDArray[Any]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, datatype and shape (-1 for a free dimension) of a model's input or output."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """The metadata JSON of this tensor."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class Signature:
    """The tensors of one model version."""

    kind: Kind
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(slots=True)
class RequestedOutput:
    """An output the caller asked for; ``binary`` is the REST binary-data choice, if made."""

    name: str
    binary: bool | None = None


@dataclass(slots=True)
class V2Request:
    """One inference request, whatever transport it came by."""

    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None
    """None: every output."""
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    binary_output: bool = False
    """REST: send outputs as binary data unless an output says otherwise."""
    body_bytes: int = 0


@dataclass(slots=True)
class V2Response:
    """One inference response, whatever transport it goes by."""

    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]
    parameters: dict[str, Any] = field(default_factory=dict)


# -- tensors ---------------------------------------------------------------------------------


def dtype_of(datatype: Any, param: str) -> np.dtype[Any]:
    """The numpy dtype of a v2 datatype.

    Raises:
        InvalidInput: not a datatype this server supports.
    """
    found = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if found is None:
        raise InvalidInput(
            f"{param} {datatype!r} is not a supported datatype; use one of {', '.join(DATATYPES)}",
            param=param,
        )
    return found


def check_datatype(datatype: Any, param: str) -> str:
    """A supported v2 datatype name.

    Raises:
        InvalidInput: not a datatype this server supports.
    """
    dtype_of(datatype, param)
    return str(datatype)


def check_shape(shape: Any, param: str) -> list[int]:
    """A shape as a list of non-negative integers.

    Raises:
        InvalidInput: not a list of non-negative integers.
    """
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"{param} must be a list of non-negative integers", param=param)
    return list(shape)


def _count_error(
    param: str, shape: list[int], datatype: str, got: int, unit: str, size: int = 1
) -> InvalidInput:
    """``size``: the units one element takes (its byte width when counting bytes)."""
    want = math.prod(shape) * size
    return InvalidInput(
        f"{param}: shape {shape} of {datatype} needs {want} {unit} but the data holds {got}",
        param=param,
    )


def _flatten(values: Iterable[Any], out: list[Any]) -> list[Any]:
    for value in values:
        if isinstance(value, list):
            _flatten(value, out)
        else:
            out.append(value)
    return out


def _bytes_elements(values: list[Any], param: str) -> npt.NDArray[Any]:
    array = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        if isinstance(value, str):
            array[index] = value.encode("utf-8")
        elif isinstance(value, bytes):
            array[index] = value
        else:
            raise InvalidInput(
                f"{param}[{index}] is {type(value).__name__}; BYTES data holds strings",
                param=param,
            )
    return array


def _numeric_elements(values: list[Any], dtype: np.dtype[Any], param: str) -> npt.NDArray[Any]:
    source = np.asarray(values)
    if source.size and source.dtype.kind not in _ACCEPTS[dtype.kind]:
        raise InvalidInput(
            f"{param} holds values that are not {dtype.name} (e.g. {values[0]!r})", param=param
        )
    array = source.astype(dtype)
    if dtype.kind in "iu" and source.size and not np.array_equal(array, source):
        raise InvalidInput(f"{param} holds values out of range for {dtype.name}", param=param)
    return array


def tensor_from_values(
    name: str, datatype: str, shape: list[int], values: Any, param: str
) -> Tensor:
    """A tensor from JSON (or gRPC typed) values, flat or nested in row-major order.

    Raises:
        InvalidInput: wrong datatype, or the number of values does not match the shape.
    """
    dtype = dtype_of(datatype, f"{param}.datatype")
    data_param = f"{param}.data"
    flat = _flatten(values, []) if isinstance(values, list | tuple) else [values]
    if len(flat) != math.prod(shape):
        raise _count_error(data_param, shape, datatype, len(flat), "values")
    if datatype == "BYTES":
        array = _bytes_elements(flat, data_param)
    else:
        array = _numeric_elements(flat, dtype, data_param)
    return Tensor(name=name, datatype=datatype, shape=shape, data=array.reshape(shape))


def deserialize_bytes(raw: bytes | memoryview, count: int, param: str) -> npt.NDArray[Any]:
    """Elements of a binary BYTES tensor: each a 4-byte little-endian length, then the bytes.

    Raises:
        InvalidInput: the buffer does not hold exactly ``count`` elements.
    """
    view = memoryview(raw)
    array = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(f"{param} ends before element {index} of {count}", param=param)
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"{param} element {index} runs past the end", param=param)
        array[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(
            f"{param} has {len(view) - offset} bytes after its {count} elements", param=param
        )
    return array


def serialize_bytes(values: Iterable[bytes]) -> bytes:
    """The binary form of BYTES elements (length-prefixed, little-endian)."""
    return b"".join(_LENGTH.pack(len(value)) + value for value in values)


def tensor_from_bytes(
    name: str, datatype: str, shape: list[int], raw: bytes | memoryview, param: str
) -> Tensor:
    """A tensor from its binary form (REST binary data, gRPC ``raw_input_contents``).

    Raises:
        InvalidInput: wrong datatype, or the byte count does not match the shape.
    """
    dtype = dtype_of(datatype, f"{param}.datatype")
    count = math.prod(shape)
    if datatype == "BYTES":
        array = deserialize_bytes(raw, count, f"{param} binary data")
    else:
        if len(raw) != count * dtype.itemsize:
            raise _count_error(
                f"{param} binary data", shape, datatype, len(raw), "bytes", dtype.itemsize
            )
        array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
    return Tensor(name=name, datatype=datatype, shape=shape, data=array.reshape(shape))


def tensor_bytes(tensor: Tensor) -> bytes:
    """The binary form of a tensor."""
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.data.ravel().tolist())
    little = tensor.data.astype(DATATYPES[tensor.datatype].newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).tobytes()


def tensor_values(tensor: Tensor) -> list[Any]:
    """The flat JSON values of a tensor (BYTES as UTF-8 strings)."""
    flat = tensor.data.ravel()
    if tensor.datatype == "BYTES":
        return [value.decode("utf-8", "replace") for value in flat.tolist()]
    values: list[Any] = flat.tolist()
    return values


def model_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The request parameters meant for the model (protocol parameters dropped)."""
    return {
        key: value
        for key, value in parameters.items()
        if key not in RESERVED_PARAMETERS and not key.startswith("triton_")
    }


# -- signatures and metadata -------------------------------------------------------------------


def kind_of(manifest: ModelManifest) -> Kind:
    """How a model's inputs and results map to tensors."""
    if manifest.task in (Task.CLASSIFICATION, Task.REGRESSION):
        return Kind.TABULAR
    if manifest.task is Task.EMBEDDING:
        return Kind.EMBEDDING
    if manifest.task is Task.GENERATION:
        return Kind.GENERATION
    return Kind.JSON


def _features(manifest: ModelManifest) -> int:
    names = manifest.options.get("feature_names")
    if isinstance(names, list) and names:
        return len(names)
    schema = manifest.input_schema
    low, high = schema.get("minItems"), schema.get("maxItems")
    return high if isinstance(high, int) and high == low else -1


#: v2 datatype of a JSON Schema type, for the column tensors of a feature-store model.
_COLUMN_TYPES = {"integer": "INT64", "number": "FP64", "string": "BYTES", "boolean": "BOOL"}


def _columns_of(manifest: ModelManifest) -> tuple[TensorSpec, ...]:
    """One [N] tensor per request field of a model that reads stored features (its entity
    keys and request-time values, from its input schema); empty for other models."""
    if manifest.feature_store is None:
        return ()
    properties = manifest.input_schema.get("properties")
    if not isinstance(properties, dict):
        return ()
    specs = []
    for name, schema in properties.items():
        kind = schema.get("type") if isinstance(schema, dict) else None
        specs.append(TensorSpec(name, _COLUMN_TYPES.get(str(kind), "BYTES"), (-1,)))
    return tuple(specs)


def _column_rows(request: V2Request, sig: Signature) -> list[Any]:
    """Rows (objects) of the column tensors of a feature-store model's request."""
    known = {spec.name for spec in sig.inputs}
    columns: dict[str, list[Any]] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name not in known:
            raise InvalidInput(
                f"unknown input {tensor.name!r}; this model's inputs are "
                f"{', '.join(sorted(known))}",
                param=f"inputs[{index}].name",
            )
        values = tensor.data.ravel().tolist()
        if tensor.datatype == "BYTES":
            values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
        columns[tensor.name] = values
    sizes = {len(values) for values in columns.values()}
    if len(sizes) > 1:
        raise InvalidInput("the input tensors differ in length", param="inputs")
    count = sizes.pop() if sizes else 0
    return [{name: values[i] for name, values in columns.items()} for i in range(count)]


def _classes(manifest: ModelManifest, runtime_info: dict[str, Any]) -> int:
    labels = manifest.options.get("labels") or runtime_info.get("classes")
    return len(labels) if isinstance(labels, list) and labels else -1


def float_datatype(info: VersionInfo) -> str:
    """The datatype of scores and probabilities: the model's own precision."""
    return "FP32" if info.runtime == "onnx" else "FP64"


def signature(info: VersionInfo, runtime_info: dict[str, Any] | None = None) -> Signature:
    """The input and output tensors of a version, from its manifest and runtime facts."""
    manifest, facts = info.manifest, runtime_info or {}
    kind = kind_of(manifest)
    if kind is Kind.TABULAR:
        inputs = _columns_of(manifest) or (TensorSpec("input", "FP32", (-1, _features(manifest))),)
        if manifest.task is Task.REGRESSION:
            return Signature(kind, inputs, (TensorSpec("value", "FP64", (-1,)),))
        fp = float_datatype(info)
        outputs: tuple[TensorSpec, ...] = (
            TensorSpec("label", "BYTES", (-1,)),
            TensorSpec("score", fp, (-1,)),
            TensorSpec("probabilities", fp, (-1, _classes(manifest, facts))),
        )
        return Signature(kind, inputs, outputs)
    if kind is Kind.EMBEDDING:
        dims = facts.get("dimensions")
        width = dims if isinstance(dims, int) and dims > 0 else -1
        return Signature(
            kind,
            (TensorSpec("text", "BYTES", (-1,)),),
            (TensorSpec("embedding", "FP32", (-1, width)),),
        )
    if kind is Kind.GENERATION:
        outputs = (
            TensorSpec("text_output", "BYTES", (-1,)),
            TensorSpec("finish_reason", "BYTES", (-1,)),
        )
        return Signature(kind, (TensorSpec("text_input", "BYTES", (-1,)),), outputs)
    return Signature(
        kind, (TensorSpec("input", "BYTES", (-1,)),), (TensorSpec("output", "BYTES", (-1,)),)
    )


def model_metadata(
    model: ModelInfo, info: VersionInfo, runtime_info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The v2 model metadata of ``info``: versions, platform and tensors."""
    sig = signature(info, runtime_info)
    return {
        "name": model.name,
        "versions": [v.version for v in model.versions if v.stage is not Stage.ARCHIVED],
        "platform": info.runtime,
        "inputs": [spec.as_dict() for spec in sig.inputs],
        "outputs": [spec.as_dict() for spec in sig.outputs],
    }


# -- requests ----------------------------------------------------------------------------------


def _one_input(request: V2Request, sig: Signature) -> Tensor:
    expected = sig.inputs[0].name
    if len(request.inputs) != 1:
        raise InvalidInput(
            f"this model takes one input tensor {expected!r}; got {len(request.inputs)}",
            param="inputs",
        )
    tensor = request.inputs[0]
    if tensor.name != expected:
        raise InvalidInput(
            f"unknown input {tensor.name!r}; this model's input is {expected!r}",
            param="inputs[0].name",
        )
    return tensor


def _check_outputs(request: V2Request, sig: Signature) -> None:
    known = [spec.name for spec in sig.outputs]
    for index, wanted in enumerate(request.outputs or []):
        if wanted.name not in known:
            raise InvalidInput(
                f"unknown output {wanted.name!r}; this model's outputs are {', '.join(known)}",
                param=f"outputs[{index}].name",
            )


def _rows(tensor: Tensor, sig: Signature) -> list[Any]:
    if tensor.datatype in ("BYTES", "BOOL"):
        raise InvalidInput(
            f"input {tensor.name!r} must be numeric (e.g. FP32), not {tensor.datatype}",
            param="inputs[0].datatype",
        )
    features = sig.inputs[0].shape[1]
    if len(tensor.shape) != 2 or (features > 0 and tensor.shape[1] != features):
        width = features if features > 0 else "F"
        raise InvalidInput(
            f"input {tensor.name!r} has shape {tensor.shape}; this model takes [N, {width}] "
            "(one row per item)",
            param="inputs[0].shape",
        )
    rows: list[Any] = tensor.data.astype(np.float64).tolist()
    return rows


def _texts(tensor: Tensor, sig: Signature) -> list[Any]:
    if tensor.datatype != "BYTES":
        raise InvalidInput(
            f"input {tensor.name!r} must be BYTES (UTF-8 text), not {tensor.datatype}",
            param="inputs[0].datatype",
        )
    texts = []
    for index, value in enumerate(tensor.data.ravel().tolist()):
        try:
            texts.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(
                f"element {index} of {tensor.name!r} is not UTF-8 text", param="inputs[0].data"
            ) from None
    return texts


def _documents(tensor: Tensor, sig: Signature) -> list[Any]:
    documents = []
    for index, text in enumerate(_texts(tensor, sig)):
        try:
            documents.append(orjson.loads(text))
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(
                f"element {index} of {tensor.name!r} is not a JSON document: {exc}",
                param="inputs[0].data",
            ) from None
    return documents


_DECODERS: dict[Kind, Callable[[Tensor, Signature], list[Any]]] = {
    Kind.TABULAR: _rows,
    Kind.EMBEDDING: _texts,
    Kind.GENERATION: _texts,
    Kind.JSON: _documents,
}


def to_inference_request(
    request: V2Request,
    route: Route,
    request_id: str,
    protocol: str,
    principal: Principal | None = None,
) -> InferenceRequest:
    """The data-plane request of a v2 request to the routed version ``route.info``.

    Args:
        request: the decoded v2 request.
        route: where it goes (the tensors are decoded against that version).
        request_id: the transport's request id.
        protocol: the transport's name, for metrics (``v2`` REST, ``grpc``).
        principal: the authenticated caller.

    Raises:
        InvalidInput: the tensors or requested outputs do not fit the model.
    """
    info = route.info
    sig = signature(info)
    _check_outputs(request, sig)
    if info.manifest.feature_store is not None and sig.kind is Kind.TABULAR:
        inputs = _column_rows(request, sig)
    else:
        inputs = _DECODERS[sig.kind](_one_input(request, sig), sig)
    return InferenceRequest(
        model=info.model,
        version=info.version if route.arm == Arm.PINNED else None,
        inputs=inputs,
        parameters=model_parameters(request.parameters),
        request_id=request_id,
        body_bytes=request.body_bytes,
        protocol=protocol,
        principal=principal,
        route=route,
    )


# -- responses ---------------------------------------------------------------------------------


def _bytes_tensor(name: str, values: list[str]) -> Tensor:
    data = np.empty(len(values), dtype=object)
    data[:] = [value.encode("utf-8") for value in values]
    return Tensor(name=name, datatype="BYTES", shape=[len(values)], data=data)


def _array_tensor(name: str, datatype: str, values: Any) -> Tensor:
    data = np.asarray(values, dtype=DATATYPES[datatype])
    return Tensor(name=name, datatype=datatype, shape=list(data.shape), data=data)


def _classification(results: list[Any], info: VersionInfo) -> list[Tensor]:
    outputs = [_bytes_tensor("label", [str(r["label"]) for r in results])]
    if any(r.get("score") is None for r in results):
        return outputs  # a label-only classifier: no scores to send
    fp = float_datatype(info)
    outputs.append(_array_tensor("score", fp, [r["score"] for r in results]))
    if all(isinstance(r.get("probabilities"), dict) for r in results):
        classes = list(results[0]["probabilities"])
        rows = [[r["probabilities"][c] for c in classes] for r in results]
        probabilities = _array_tensor("probabilities", fp, rows)
        probabilities.parameters["classes"] = orjson.dumps(classes).decode()
        outputs.append(probabilities)
    return outputs


def _outputs(results: list[Any], info: VersionInfo) -> list[Tensor]:
    kind = kind_of(info.manifest)
    if kind is Kind.TABULAR and info.manifest.task is Task.CLASSIFICATION:
        return _classification(results, info)
    if kind is Kind.TABULAR:
        return [_array_tensor("value", "FP64", [r["value"] for r in results])]
    if kind is Kind.EMBEDDING:
        return [_array_tensor("embedding", "FP32", [r["embedding"] for r in results])]
    if kind is Kind.GENERATION:
        return [
            _bytes_tensor("text_output", [r["text"] for r in results]),
            _bytes_tensor("finish_reason", [str(r.get("finish_reason") or "") for r in results]),
        ]
    return [_bytes_tensor("output", [orjson.dumps(r).decode() for r in results])]


def _select(outputs: list[Tensor], request: V2Request) -> list[Tensor]:
    if request.outputs is None:
        return outputs
    by_name = {tensor.name: tensor for tensor in outputs}
    return [by_name[o.name] for o in request.outputs if o.name in by_name]


def from_inference_response(
    response: InferenceResponse, info: VersionInfo, request: V2Request
) -> V2Response:
    """The v2 response of the plane's answer, with the outputs the caller asked for."""
    return V2Response(
        model_name=response.model,
        model_version=response.version,
        id=request.id or response.id,
        outputs=_select(_outputs(response.results, info), request),
        parameters={
            "input_tokens": response.usage.input_tokens,
            "output_tokens": response.usage.output_tokens,
        },
    )


def from_stream_chunk(
    chunk: StreamChunk, info: VersionInfo, request: V2Request, response_id: str
) -> V2Response:
    """One streamed piece of a generation as a v2 response (``text_output`` of shape [1]).

    The last piece carries ``finish_reason``, token counts and ``triton_final_response``.
    """
    outputs = [_bytes_tensor("text_output", [chunk.text])]
    parameters: dict[str, Any] = {}
    if chunk.finish_reason is not None:
        outputs.append(_bytes_tensor("finish_reason", [chunk.finish_reason]))
        parameters["triton_final_response"] = True
    if chunk.usage is not None:
        parameters["input_tokens"] = chunk.usage.input_tokens
        parameters["output_tokens"] = chunk.usage.output_tokens
    return V2Response(
        model_name=info.model,
        model_version=info.version,
        id=request.id or response_id,
        outputs=_select(outputs, request),
        parameters=parameters,
    )


# -- wire models (OpenAPI documentation; the hot path parses by hand) ------------------------


class TensorBody(BaseModel):
    """One tensor of a REST request or response."""

    name: str
    datatype: str = Field(description="BOOL, UINT8-64, INT8-64, FP16, FP32, FP64 or BYTES.")
    shape: list[int]
    data: list[Any] | None = Field(
        default=None,
        description="Row-major values, flat or nested; absent when sent as binary data.",
    )
    parameters: dict[str, Any] | None = None


class RequestedOutputBody(BaseModel):
    """An output the caller wants; ``parameters.binary_data`` asks for binary data."""

    name: str
    parameters: dict[str, Any] | None = None


class InferRequestBody(BaseModel):
    """Body of ``POST /v2/models/{model}[/versions/{version}]/infer``."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[TensorBody]
    outputs: list[RequestedOutputBody] | None = None


class InferResponseBody(BaseModel):
    """Answer of an inference request."""

    model_name: str
    model_version: str
    id: str
    parameters: dict[str, Any]
    outputs: list[TensorBody]


class ServerMetadataBody(BaseModel):
    """Answer of ``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class TensorMetadataBody(BaseModel):
    """Name, datatype and shape (-1: any size) of a model tensor."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadataBody(BaseModel):
    """Answer of ``GET /v2/models/{model}[/versions/{version}]``."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadataBody]
    outputs: list[TensorMetadataBody]


class ServerLiveBody(BaseModel):
    """Answer of ``GET /v2/health/live``."""

    live: bool


class ServerReadyBody(BaseModel):
    """Answer of ``GET /v2/health/ready`` (200 ready, 503 still starting)."""

    ready: bool


class ModelReadyBody(BaseModel):
    """Answer of ``GET /v2/models/{model}[/versions/{version}]/ready``: 200 when the version
    serves now, 503 (with this same body, ``ready: false``) when it does not."""

    name: str
    version: str
    ready: bool


class V2ErrorBody(BaseModel):
    """Every v2 error: ``error`` is the message, as v2 clients (tritonclient) expect."""

    error: str
    type: str
    param: str | None = None
    request_id: str
