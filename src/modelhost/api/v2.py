"""Open Inference Protocol v2 over REST (KServe v2 / Triton HTTP), a codec over the data plane.

Bodies are JSON, optionally followed by binary tensor data (the ``binary_tensor_data``
extension that ``tritonclient.http`` uses by default): ``Inference-Header-Content-Length`` says
where the JSON ends, each binary input names its ``binary_data_size``, and outputs asked for
with ``binary_data`` (or ``binary_data_output`` for all) come back the same way.

Errors on these routes have the v2 shape ``{"error": "<message>", "type", "param",
"request_id"}``: v2 clients such as ``tritonclient.http`` read ``error`` as a string and fail on
modelhost's usual ``{"error": {...}}`` object. The status codes are the ones
:func:`modelhost.api.errors.status_for` gives every other surface; only the body differs, and
only on the routes of this router (its route class converts the errors, so no app-wide handler
changes).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from modelhost import __version__
from modelhost.api.auth import principal_of
from modelhost.api.errors import request_id, status_for
from modelhost.api.health import Readiness
from modelhost.api.http import JSON_MEDIA, json_response, no_cache, read_body
from modelhost.api.openapi import body_of, error_responses
from modelhost.errors import InvalidInput, ModelhostError
from modelhost.inference import InferenceRequest
from modelhost.protocol.v2 import (
    EXTENSIONS,
    InferRequestBody,
    InferResponseBody,
    ModelMetadataBody,
    ModelReadyBody,
    RequestedOutput,
    ServerLiveBody,
    ServerMetadataBody,
    ServerReadyBody,
    Tensor,
    V2Request,
    V2Response,
    check_datatype,
    check_shape,
    from_inference_response,
    model_metadata,
    tensor_bytes,
    tensor_from_bytes,
    tensor_from_values,
    tensor_values,
    to_inference_request,
)
from modelhost.serving.dataplane import DataPlane
from modelhost.serving.models import ModelState
from modelhost.serving.router import SESSION_HEADER

_JSON = "application/json"
_HEADER_LENGTH = "Inference-Header-Content-Length"
_ERRORS = error_responses(400, 404, v2=True)
_INFER_ERRORS = error_responses(400, 404, 413, 415, 422, 429, 503, 504, v2=True)
_BINARY: dict[str, Any] = {
    "schema": {
        "type": "string",
        "format": "binary",
        "description": "The JSON header (its length in Inference-Header-Content-Length), then "
        "the binary tensor data.",
    }
}
_INFER_DOC: dict[str, Any] = {
    **body_of(InferRequestBody, more={"application/octet-stream": _BINARY}),
    "parameters": [
        {
            "name": _HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": "Bytes of JSON before the binary tensor data.",
            "schema": {"type": "integer", "minimum": 0},
        }
    ],
}
_READY: dict[int | str, dict[str, Any]] = {
    200: {"model": ModelReadyBody, "description": "The version serves now"},
    503: {"model": ModelReadyBody, "description": "The version does not serve now"},
}
_SERVER_READY: dict[int | str, dict[str, Any]] = {
    200: {"model": ServerReadyBody, "description": "Start-up loading finished"},
    503: {
        "model": ServerReadyBody,
        "description": "Still starting",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

#: JSON, and the binary tensor extension.
V2_MEDIA = (*JSON_MEDIA, "application/octet-stream")


def v2_error_response(exc: ModelhostError, rid: str) -> Response:
    """The v2 error body of a modelhost error, with the status every surface uses."""
    status, kind = status_for(exc)
    body = {"error": exc.message, "type": kind, "param": exc.param, "request_id": rid}
    response = Response(orjson.dumps(body), status_code=status, media_type=_JSON)
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        response.headers["Retry-After"] = str(max(1, round(retry)))
    return response


def _header_length(value: str | None, size: int) -> int:
    if value is None:
        return size
    if not value.isdigit() or int(value) > size:
        raise InvalidInput(
            f"Inference-Header-Content-Length {value!r} is not a length within the body "
            f"({size} bytes)",
            param="Inference-Header-Content-Length",
        )
    return int(value)


def _json_object(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{param} must be an object", param=param)
    return value


def _rest_tensor(item: Any, index: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    param = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise InvalidInput(
            f"{param} must be an object with name, datatype, shape and data", param=param
        )
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{param}.name must be a non-empty string", param=f"{param}.name")
    datatype = check_datatype(item.get("datatype"), f"{param}.datatype")
    shape = check_shape(item.get("shape"), f"{param}.shape")
    parameters = _json_object(item.get("parameters"), f"{param}.parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise InvalidInput(f"{param}.data is required", param=f"{param}.data")
        return tensor_from_values(name, datatype, shape, item["data"], param), offset
    if not isinstance(size, int) or size < 0 or offset + size > len(binary):
        raise InvalidInput(
            f"{param}.parameters.binary_data_size {size!r} runs past the binary data "
            f"({len(binary) - offset} bytes left)",
            param=f"{param}.parameters.binary_data_size",
        )
    tensor = tensor_from_bytes(name, datatype, shape, binary[offset : offset + size], param)
    return tensor, offset + size


def _requested(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("outputs must be an array of {name, parameters}", param="outputs")
    wanted = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(
                f"outputs[{index}] must be an object with a name", param=f"outputs[{index}]"
            )
        parameters = _json_object(item.get("parameters"), f"outputs[{index}].parameters")
        binary = parameters.get("binary_data")
        wanted.append(RequestedOutput(item["name"], binary if isinstance(binary, bool) else None))
    return wanted


def parse_rest_request(body: bytes, header_length: str | None) -> V2Request:
    """Parse a REST inference body: JSON, optionally followed by binary tensor data.

    Args:
        body: the whole request body.
        header_length: the ``Inference-Header-Content-Length`` header, if sent.

    Raises:
        InvalidInput: naming the field that is wrong.
    """
    split = _header_length(header_length, len(body))
    if split == 0:
        raise InvalidInput("the request body is empty; send a JSON object", param="body")
    try:
        payload = orjson.loads(body[:split])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}", param="body") from None
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object with 'inputs'", param="body")
    items = payload.get("inputs")
    if not isinstance(items, list) or not items:
        raise InvalidInput("'inputs' is required and must be a non-empty array", param="inputs")
    binary, offset, inputs = memoryview(body)[split:], 0, []
    for index, item in enumerate(items):
        tensor, offset = _rest_tensor(item, index, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input's "
            "binary_data_size",
            param="body",
        )
    parameters = _json_object(payload.get("parameters"), "parameters")
    request_id = payload.get("id", "")
    return V2Request(
        inputs=inputs,
        outputs=_requested(payload.get("outputs")),
        parameters=parameters,
        id=request_id if isinstance(request_id, str) else str(request_id),
        binary_output=parameters.get("binary_data_output") is True,
        body_bytes=len(body),
    )


def encode_rest_response(response: V2Response, request: V2Request) -> tuple[bytes, int | None]:
    """The REST body of a response, and the JSON header length when binary data follows."""
    choices = {o.name: o.binary for o in request.outputs or []}
    outputs, chunks = [], []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        parameters = dict(tensor.parameters)
        binary = choices.get(tensor.name)
        if binary if binary is not None else request.binary_output:
            raw = tensor_bytes(tensor)
            parameters["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            entry["data"] = tensor_values(tensor)
        if parameters:
            entry["parameters"] = parameters
        outputs.append(entry)
    header = orjson.dumps(
        {
            "model_name": response.model_name,
            "model_version": response.model_version,
            "id": response.id,
            "parameters": response.parameters,
            "outputs": outputs,
        }
    )
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


class V2Route(APIRoute):
    """A route whose modelhost errors become v2 error bodies."""

    def get_route_handler(self) -> Handler:
        """The usual handler, with modelhost errors converted to the v2 body."""
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ModelhostError as exc:
                return v2_error_response(exc, request_id(request))

        return handle


class _Endpoints:
    """What the v2 routes do, over one data plane."""

    def __init__(self, plane: DataPlane, readiness: Readiness) -> None:
        self.plane = plane
        self.manager = plane.manager
        self.readiness = readiness

    async def metadata(self, model: str, version: str | None) -> Response:
        """Model metadata of a version (production when none is named)."""
        info = await self.manager.resolve(model, version)
        dep = self.manager.deployment(info.ref)
        facts = dep.runtime.metadata() if dep is not None and dep.runtime is not None else {}
        return json_response(model_metadata(await self.manager.model(model), info, facts))

    async def ready(self, model: str, version: str | None) -> Response:
        """200 when the version serves now, 503 otherwise (loading starts nothing)."""
        info = await self.manager.resolve(model, version)
        dep = self.manager.deployment(info.ref)
        is_ready = dep is not None and dep.state is ModelState.READY
        body = {"name": info.model, "version": info.version, "ready": is_ready}
        return json_response(body, 200 if is_ready else 503)

    async def infer(self, model: str, version: str | None, request: Request) -> Response:
        """Decode, run through the data plane, encode (JSON or binary tensor data)."""
        rid, principal = request_id(request), principal_of(request.scope)
        route = await self.plane.route(
            InferenceRequest(
                model=model,
                version=version,
                request_id=rid,
                principal=principal,
                session=request.headers.get(SESSION_HEADER),
            )
        )
        info = route.info
        body = await read_body(request, self.plane.max_request_bytes(info), V2_MEDIA)
        v2 = parse_rest_request(body, request.headers.get(_HEADER_LENGTH))
        ireq = to_inference_request(v2, route, rid, "v2", principal)
        ireq.no_cache = no_cache(request)
        answer = await self.plane.infer(ireq)
        content, header_length = encode_rest_response(from_inference_response(answer, info, v2), v2)
        headers = {"X-Cache": answer.cache} if answer.cache is not None else {}
        if header_length is None:
            return Response(content, media_type=_JSON, headers=headers)
        return Response(
            content,
            media_type="application/octet-stream",
            headers={**headers, _HEADER_LENGTH: str(header_length)},
        )


def build_router(plane: DataPlane, readiness: Readiness) -> APIRouter:
    """The v2 routes, bound to one data plane."""
    do = _Endpoints(plane, readiness)
    router = APIRouter(tags=["v2"], route_class=V2Route)

    @router.get("/v2/health/live", summary="Server liveness", response_model=ServerLiveBody)
    async def live() -> Response:
        return json_response({"live": True})

    @router.get(
        "/v2/health/ready",
        summary="Server readiness (start-up loading finished)",
        responses=_SERVER_READY,
    )
    async def ready() -> Response:
        if readiness.ready:
            return json_response({"ready": True})
        return json_response({"ready": False}, 503, headers={"Retry-After": "1"})

    @router.get("/v2", summary="Server metadata", response_model=ServerMetadataBody)
    async def server_metadata() -> Response:
        return json_response(
            {"name": "modelhost", "version": __version__, "extensions": EXTENSIONS}
        )

    meta: dict[str, Any] = {"response_model": ModelMetadataBody, "responses": _ERRORS}
    post: dict[str, Any] = {
        "response_model": InferResponseBody,
        "responses": _INFER_ERRORS,
        "openapi_extra": _INFER_DOC,
    }

    @router.get("/v2/models/{model}", summary="Model metadata", **meta)
    async def get_model(model: str) -> Response:
        return await do.metadata(model, None)

    @router.get("/v2/models/{model}/versions/{version}", summary="Version metadata", **meta)
    async def get_version(model: str, version: str) -> Response:
        return await do.metadata(model, version)

    @router.get(
        "/v2/models/{model}/ready", summary="Model readiness", responses={**_ERRORS, **_READY}
    )
    async def get_model_ready(model: str) -> Response:
        return await do.ready(model, None)

    @router.get(
        "/v2/models/{model}/versions/{version}/ready",
        summary="Version readiness",
        responses={**_ERRORS, **_READY},
    )
    async def get_version_ready(model: str, version: str) -> Response:
        return await do.ready(model, version)

    @router.post("/v2/models/{model}/infer", summary="Infer", **post)
    async def infer_model(model: str, request: Request) -> Response:
        return await do.infer(model, None, request)

    @router.post("/v2/models/{model}/versions/{version}/infer", summary="Infer", **post)
    async def infer_version(model: str, version: str, request: Request) -> Response:
        return await do.infer(model, version, request)

    return router
