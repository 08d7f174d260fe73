"""Open Inference Protocol v2 over gRPC: ``inference.GRPCInferenceService`` on ``grpc.aio``.

The service runs in the event loop of the HTTP app, started and stopped by its lifespan, and is
a codec over the same :class:`~modelhost.serving.dataplane.DataPlane` (through
:mod:`modelhost.protocol.v2`). Tensors travel in ``raw_input_contents`` /
``raw_output_contents`` (what ``tritonclient.grpc`` sends and reads); typed ``contents`` are
accepted on input too. Errors become status codes: invalid input ``INVALID_ARGUMENT``, unknown
model or version ``NOT_FOUND``, not ready ``UNAVAILABLE``, timeout ``DEADLINE_EXCEEDED``, body
too large ``RESOURCE_EXHAUSTED``. ``ModelStreamInfer`` streams a generation model's tokens, one
response each; errors on a stream come back as ``error_message`` and the stream stays open.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import orjson

from modelhost import __version__
from modelhost.api.health import Readiness
from modelhost.errors import (
    ConfigError,
    Forbidden,
    InferenceTimeout,
    InvalidInput,
    MissingDependencyError,
    ModelhostError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
    Unauthenticated,
)
from modelhost.inference import InferenceRequest, new_id
from modelhost.protocol.v2 import (
    EXTENSIONS,
    Kind,
    RequestedOutput,
    Tensor,
    V2Request,
    V2Response,
    check_shape,
    dtype_of,
    from_inference_response,
    from_stream_chunk,
    kind_of,
    model_metadata,
    tensor_bytes,
    tensor_from_bytes,
    tensor_from_values,
    to_inference_request,
)
from modelhost.security.auth import Authenticator, bearer
from modelhost.security.guards import ContentBlocked
from modelhost.security.keys import ANONYMOUS, Principal, Scope
from modelhost.serving.dataplane import DataPlane
from modelhost.serving.models import ModelState
from modelhost.serving.router import Route

try:
    import grpc

    from modelhost.grpc import grpc_service_pb2 as pb
    from modelhost.grpc import grpc_service_pb2_grpc as pb_grpc
except ImportError as exc:  # the grpc extra is optional
    raise MissingDependencyError("grpcio", "grpc") from exc

log = logging.getLogger("modelhost.grpc")

#: Largest gRPC message either way; a model's own ``max_request_bytes`` still applies.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Status code per error class; the first match along the MRO wins.
_CODES: dict[type[ModelhostError], grpc.StatusCode] = {
    ContentBlocked: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    InferenceTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    ServiceError: grpc.StatusCode.UNAVAILABLE,
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
}

#: The typed ``InferTensorContents`` field of each datatype (FP16 travels raw only).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_INT64_MAX = 2**63 - 1

Context = grpc.aio.ServicerContext[Any, Any]
S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def status_code(exc: ModelhostError) -> grpc.StatusCode:
    """The gRPC status code of a modelhost error."""
    for cls in type(exc).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def _translated(
    method: Callable[[S, Req, Context], Awaitable[Resp]],
) -> Callable[[S, Req, Context], Awaitable[Resp]]:
    """Turn modelhost errors of a unary method into status codes (and bugs into INTERNAL)."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: Context) -> Resp:
        try:
            return await method(self, request, context)
        except ModelhostError as exc:
            metadata: list[tuple[str, str]] = []
            retry = getattr(exc, "retry_after", None)
            if retry is not None:
                metadata.append(("retry-after", str(max(1, round(retry)))))
            if exc.param:
                metadata.append(("modelhost-param", exc.param))
            context.set_trailing_metadata(tuple(metadata))
            await context.abort(status_code(exc), exc.message)
        except Exception:  # a bug of ours: logged, answered without internals
            log.exception("gRPC %s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

    return wrapper


# -- messages <-> tensors ----------------------------------------------------------------------


def parameter_value(parameter: pb.InferParameter) -> Any:
    """The Python value of an ``InferParameter`` (None when unset)."""
    which = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, which) if which else None


def set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    """Store a Python value in an ``InferParameter`` (lists and objects as JSON strings)."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int) and value > _INT64_MAX:
        parameter.uint64_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    elif isinstance(value, str):
        parameter.string_param = value
    else:
        parameter.string_param = orjson.dumps(value).decode()


def _input_tensor(
    item: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, param: str
) -> Tensor:
    dtype_of(item.datatype, f"{param}.datatype")
    shape = check_shape(list(item.shape), f"{param}.shape")
    if raw is not None:
        return tensor_from_bytes(item.name, item.datatype, shape, raw, param)
    name = _CONTENTS.get(item.datatype)
    if name is None:
        raise InvalidInput(
            f"{param}: {item.datatype} has no typed contents field; send raw_input_contents",
            param=f"{param}.contents",
        )
    values = list(getattr(item.contents, name))
    return tensor_from_values(item.name, item.datatype, shape, values, param)


def decode_request(request: pb.ModelInferRequest) -> V2Request:
    """The transport-neutral request of a ``ModelInferRequest``.

    Raises:
        InvalidInput: naming the input that is wrong.
    """
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs",
            param="raw_input_contents",
        )
    inputs = [
        _input_tensor(item, raw[index] if raw else None, f"inputs[{index}]")
        for index, item in enumerate(request.inputs)
    ]
    return V2Request(
        inputs=inputs,
        outputs=[RequestedOutput(o.name) for o in request.outputs] or None,
        parameters={key: parameter_value(p) for key, p in request.parameters.items()},
        id=request.id,
        body_bytes=request.ByteSize(),
    )


def encode_response(response: V2Response) -> pb.ModelInferResponse:
    """The ``ModelInferResponse`` of a response, every tensor in ``raw_output_contents``."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for key, value in response.parameters.items():
        set_parameter(message.parameters[key], value)
    for tensor in response.outputs:
        output = message.outputs.add(name=tensor.name, datatype=tensor.datatype)
        output.shape.extend(tensor.shape)
        for key, value in tensor.parameters.items():
            set_parameter(output.parameters[key], value)
        message.raw_output_contents.append(tensor_bytes(tensor))
    return message


# -- the service -------------------------------------------------------------------------------


class InferenceServicer:
    """``inference.GRPCInferenceService`` over one data plane."""

    def __init__(
        self, plane: DataPlane, readiness: Readiness, authenticator: Authenticator | None = None
    ) -> None:
        self.plane = plane
        self.manager = plane.manager
        self.readiness = readiness
        self.authenticator = authenticator

    async def _principal(self, context: Context) -> Principal:
        """The caller, from ``authorization: Bearer …`` (or ``x-api-key``) metadata; every
        method but ServerLive and ServerReady needs the ``predict`` scope.

        Raises:
            Unauthenticated, Forbidden.
        """
        if self.authenticator is None:
            return ANONYMOUS
        metadata = {
            key.lower(): value if isinstance(value, str) else value.decode("latin-1")
            for key, value in (context.invocation_metadata() or ())
        }
        credential = bearer(metadata.get("authorization")) or metadata.get("x-api-key")
        principal = await self.authenticator.authenticate(credential)
        principal.require(Scope.PREDICT)
        return principal

    async def ServerLive(  # noqa: N802 - gRPC method names are the proto's
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        """The process answers."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(  # noqa: N802
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        """Start-up loading has finished."""
        return pb.ServerReadyResponse(ready=self.readiness.ready)

    @_translated
    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        """The version (production when none is named) can serve now."""
        await self._principal(context)
        info = await self.manager.resolve(request.name, request.version or None)
        dep = self.manager.deployment(info.ref)
        return pb.ModelReadyResponse(ready=dep is not None and dep.state is ModelState.READY)

    @_translated
    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        """Server name, version and protocol extensions."""
        await self._principal(context)
        return pb.ServerMetadataResponse(
            name="modelhost", version=__version__, extensions=EXTENSIONS
        )

    @_translated
    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        """Versions, platform and tensors of a version."""
        await self._principal(context)
        info = await self.manager.resolve(request.name, request.version or None)
        dep = self.manager.deployment(info.ref)
        facts = dep.runtime.metadata() if dep is not None and dep.runtime is not None else {}
        meta = model_metadata(await self.manager.model(request.name), info, facts)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**spec) for spec in meta["inputs"]],
            outputs=[tensor(**spec) for spec in meta["outputs"]],
        )

    async def _decode(
        self, request: pb.ModelInferRequest, principal: Principal, rid: str
    ) -> tuple[Route, V2Request]:
        route = await self.plane.route(
            InferenceRequest(
                model=request.model_name,
                version=request.model_version or None,
                request_id=rid,
                principal=principal,
            )
        )
        return route, decode_request(request)

    @_translated
    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        """One inference through the data plane."""
        principal = await self._principal(context)
        rid = new_id("grpc")
        route, v2 = await self._decode(request, principal, rid)
        answer = await self.plane.infer(to_inference_request(v2, route, rid, "grpc", principal))
        return encode_response(from_inference_response(answer, route.info, v2))

    async def ModelStreamInfer(  # noqa: N802
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answer each request of the stream in turn; generation models answer token by token."""
        try:
            principal = await self._principal(context)
        except ModelhostError as exc:
            await context.abort(status_code(exc), exc.message)
        async for request in requests:
            async for response in self._stream_one(request, principal):
                yield response

    async def _stream_one(
        self, request: pb.ModelInferRequest, principal: Principal
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        try:
            rid = new_id("grpc")
            route, v2 = await self._decode(request, principal, rid)
            if kind_of(route.info.manifest) is Kind.GENERATION:
                async for response in self._generate(route, v2, principal):
                    yield pb.ModelStreamInferResponse(infer_response=encode_response(response))
                return
            answer = await self.plane.infer(to_inference_request(v2, route, rid, "grpc", principal))
            response = from_inference_response(answer, route.info, v2)
            yield pb.ModelStreamInferResponse(infer_response=encode_response(response))
        except ModelhostError as exc:
            yield pb.ModelStreamInferResponse(error_message=exc.message)
        except Exception:  # a bug of ours: reported on the stream, which stays open
            log.exception("gRPC stream request failed")
            yield pb.ModelStreamInferResponse(error_message="internal error; see the server log")

    async def _generate(
        self, route: Route, v2: V2Request, principal: Principal
    ) -> AsyncIterator[V2Response]:
        response_id = new_id("gen")
        info = route.info
        request = to_inference_request(v2, route, response_id, "grpc", principal)
        if len(request.inputs) != 1:
            raise InvalidInput(
                f"a streamed generation takes one prompt; text_input holds {len(request.inputs)}",
                param="inputs[0].shape",
            )
        _, chunks = await self.plane.stream(request)
        async for chunk in chunks:
            yield from_stream_chunk(chunk, info, v2, response_id)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_server(
    plane: DataPlane,
    readiness: Readiness,
    *,
    host: str,
    port: int,
    reuse_port: bool = False,
    authenticator: Authenticator | None = None,
) -> grpc.aio.Server:
    """Build, bind and start the gRPC server in the running event loop.

    Args:
        plane: the data plane every inference goes through.
        readiness: the server's start-up state, for ``ServerReady``.
        host: interface to bind.
        port: TCP port.
        reuse_port: share the port between processes (several server workers); off otherwise,
            so a second server on a busy port fails instead of stealing half its calls.
        authenticator: checks each call's credential; None serves without authentication.

    Raises:
        ConfigError: the port cannot be bound.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", int(reuse_port)),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    add = cast(
        Callable[[InferenceServicer, grpc.aio.Server], None],
        pb_grpc.add_GRPCInferenceServiceServicer_to_server,
    )
    add(InferenceServicer(plane, readiness, authenticator), server)
    address = _address(host, port)
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(
            f"gRPC cannot listen on {address} ({exc}); choose another port with --grpc-port "
            "or MODELHOST_SERVER__GRPC_PORT, or 0 to turn gRPC off",
            param="server.grpc_port",
        ) from None
    await server.start()
    log.info("gRPC (Open Inference Protocol v2) on %s", address)
    return server
