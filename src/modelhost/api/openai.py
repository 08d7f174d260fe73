"""The OpenAI-compatible API: chat completions, completions and embeddings.

A thin codec over the one :class:`~modelhost.serving.dataplane.DataPlane`: each route parses
its body (:mod:`modelhost.protocol.openai`), builds an :class:`InferenceRequest`, calls
``plane.infer`` or ``plane.stream`` and writes the OpenAI shape. ``GET /v1/models`` is served
by :mod:`modelhost.api.v1` in the OpenAI list shape already.

Errors raised before a stream starts get a status code and the one JSON error body; an error
after the first byte of a stream is sent as a ``data: {"error": {...}}`` event, and the stream
ends without ``[DONE]``.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from modelhost.api.auth import principal_of
from modelhost.api.errors import request_id, status_for
from modelhost.api.http import (
    INFER_ERRORS,
    answer_headers,
    json_response,
    no_cache,
    parse_json,
    read_body,
    version_header,
)
from modelhost.api.openapi import SSE_EVENT, json_body
from modelhost.errors import InvalidInput, ModelhostError, PayloadTooLarge
from modelhost.inference import InferenceRequest, InferenceResponse, Usage
from modelhost.manifest import RuntimeKind, Task
from modelhost.protocol.openai import (
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIBody,
    body_schema,
    embedding_list,
    parse_body,
)
from modelhost.registry import VersionInfo
from modelhost.runtimes import StreamChunk
from modelhost.serving.dataplane import DataPlane
from modelhost.serving.router import SESSION_HEADER

log = logging.getLogger("modelhost.api.openai")

_JSON = "application/json"
#: A completion's 200: JSON, or server-sent events with ``"stream": true``.
_STREAMED: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}
}
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = b"data: [DONE]\n\n"
#: What each route serves: a model qualifies by its task or by its runtime.
_GENERATES = (Task.GENERATION, RuntimeKind.LLAMACPP)
_EMBEDS = (Task.EMBEDDING, RuntimeKind.EMBEDDINGS)
_ITEM = re.compile(r"^inputs(\[\d+\])?(?:\.(?:prompt|text))?")

Body = TypeVar("Body", bound=OpenAIBody)
Rename = Callable[[str], str]


# -- error params in OpenAI terms ------------------------------------------------------------


def _chat_param(param: str) -> str:
    """``inputs[0].messages[1].content`` → ``messages[1].content``."""
    return re.sub(r"^inputs(\[0\])?\.?", "", param) or "messages"


def _item_param(field: str, single: bool) -> Rename:
    """``inputs[2].prompt`` → ``prompt[2]`` (``prompt`` when one string was sent)."""

    def rename(param: str) -> str:
        match = _ITEM.match(param)
        if match is None:
            return param
        index = "" if single else match.group(1) or ""
        return field + index + param[match.end() :]

    return rename


def _renamed(exc: InvalidInput | PayloadTooLarge, rename: Rename) -> ModelhostError:
    """The same error with ``param`` (and its mention in the message) in OpenAI's names."""
    if exc.param is None:
        return exc
    param = exc.param.removeprefix("parameters.")
    param = rename(param) if param.startswith("inputs") else param
    return type(exc)(exc.message.replace(exc.param, param), param=param)


def _error_event(exc: ModelhostError, rid: str) -> bytes:
    """An SSE event with the error body of ``exc``."""
    _, kind = status_for(exc)
    error = {"type": kind, "message": exc.message, "param": exc.param, "code": kind}
    return _event({"error": {**error, "request_id": rid}})


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _close(chunks: AsyncIterator[StreamChunk]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


async def _first(chunks: AsyncIterator[StreamChunk]) -> StreamChunk | None:
    """The first chunk, read before the status line is sent.

    The runtime checks some things only when generation starts (the prompt fits the context,
    the schema compiles to a grammar); reading one chunk first turns those into a 4xx answer
    instead of an error event inside a 200 stream.
    """
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None


async def _prefetched(
    first: StreamChunk | None, rest: AsyncIterator[StreamChunk]
) -> AsyncIterator[StreamChunk]:
    """``first`` then the rest; closing this closes ``rest`` (which stops generation)."""
    try:
        if first is not None:
            yield first
        async for chunk in rest:
            yield chunk
    finally:
        await _close(rest)


async def sse_events(
    shape: Completion, chunks: AsyncIterator[StreamChunk], rid: str
) -> AsyncIterator[bytes]:
    """The server-sent events of one streamed completion.

    Chat opens with an assistant-role delta; then one event per text piece, one with the
    finish reason, one with usage when ``include_usage`` is set, and ``data: [DONE]``. An
    error while streaming is sent as ``data: {"error": {...}}`` and ends the stream without
    ``[DONE]``, so that a client can tell a cut stream from a finished one.

    Args:
        shape: ids and kind (chat or text) of the completion.
        chunks: the data plane's stream; it is closed when the events end or the client
            goes away.
        rid: request id put into an error event.
    """
    try:
        for opening in shape.opening():
            yield _event(opening)
        finish, usage = "stop", Usage()
        async for chunk in chunks:
            if chunk.text:
                yield _event(shape.piece(chunk.text))
            finish = chunk.finish_reason or finish
            usage = chunk.usage or usage
        yield _event(shape.closing(finish))
        if shape.include_usage:
            yield _event(shape.usage_chunk(usage))
        yield _DONE
    except ModelhostError as exc:
        yield _error_event(exc, rid)
    except Exception:  # a bug of ours after the status line: log it, tell the client, stop
        log.exception("stream failed, request id %s", rid)
        yield _error_event(ModelhostError("internal error; see the server log"), rid)
    finally:
        await _close(chunks)


# -- routes ----------------------------------------------------------------------------------


def _fingerprint(version: str) -> str:
    return f"modelhost-{version}"


def _check_serves(info: VersionInfo, accepts: tuple[Task, RuntimeKind], route: str) -> None:
    """Refuse a model that cannot answer on this route (a classifier asked to chat).

    Raises:
        InvalidInput: naming what the model is and what the route needs.
    """
    manifest = info.manifest
    task, runtime = accepts
    if manifest.task is task or manifest.runtime is runtime:
        return
    raise InvalidInput(
        f"{info.ref} is a {manifest.task.value} model ({manifest.runtime.value} runtime); "
        f"{route} needs a model whose task is {task.value!r}; "
        f"call POST /v1/models/{info.model}/predict instead",
        param="model",
    )


class OpenAIRoutes:
    """The handlers, bound to one data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def _parse(self, request: Request, kind: type[Body]) -> tuple[Body, int]:
        """The validated body and its size in bytes.

        The model is named inside the body, so the body is read under the server-wide limit;
        the data plane then checks the size against the model's own limit.
        """
        raw = await read_body(request, self.plane.default_max_request_bytes)
        return parse_body(kind, parse_json(raw)), len(raw)

    async def _request(
        self,
        request: Request,
        body: OpenAIBody,
        size: int,
        accepts: tuple[Task, RuntimeKind],
    ) -> tuple[InferenceRequest, VersionInfo]:
        """Route ``model`` (``X-Model-Version`` and ``name@version`` pin; otherwise the
        deployment's split) and check the chosen version serves this route; the route stays on
        the request, so the data plane runs what was checked."""
        ireq = InferenceRequest.for_reference(
            body.model,
            version=version_header(body.model, request),
            request_id=request_id(request),
            body_bytes=size,
            protocol="openai",
            principal=principal_of(request.scope),
            session=request.headers.get(SESSION_HEADER),
            no_cache=no_cache(request),
        )
        info = (await self.plane.route(ireq)).info
        _check_serves(info, accepts, request.url.path)
        return ireq, info

    async def _infer(self, ireq: InferenceRequest, rename: Rename) -> InferenceResponse:
        try:
            return await self.plane.infer(ireq)
        except (InvalidInput, PayloadTooLarge) as exc:
            raise _renamed(exc, rename) from None

    async def _stream(
        self,
        ireq: InferenceRequest,
        body: ChatCompletionRequest | CompletionRequest,
        rename: Rename,
    ) -> Response:
        try:
            info, chunks = await self.plane.stream(ireq)
            first = await _first(chunks)
        except (InvalidInput, PayloadTooLarge) as exc:
            raise _renamed(exc, rename) from None
        shape = Completion(
            id=_new_id(isinstance(body, ChatCompletionRequest)),
            created=int(time.time()),
            model=info.model,
            fingerprint=_fingerprint(info.version),
            chat=isinstance(body, ChatCompletionRequest),
            include_usage=body.include_usage,
        )
        return StreamingResponse(
            sse_events(shape, _prefetched(first, chunks), ireq.request_id),
            media_type="text/event-stream",
            headers={**_SSE_HEADERS, "X-Model-Version": info.version},
        )

    def _answer(self, body: dict[str, Any], response: InferenceResponse) -> Response:
        """The JSON answer; a cascade's or fallback's decision rides along as an extra field
        (the SDK keeps it in ``model_extra``)."""
        body.update(response.decisions)
        return json_response(body, headers=answer_headers(response))

    async def chat(self, request: Request) -> Response:
        """``POST /v1/chat/completions``."""
        body, size = await self._parse(request, ChatCompletionRequest)
        ireq, _ = await self._request(request, body, size, _GENERATES)
        ireq.inputs, ireq.parameters = [body.input_item()], body.parameters()
        return await self._complete(ireq, body, _chat_param, chat=True)

    async def completions(self, request: Request) -> Response:
        """``POST /v1/completions``: several prompts run as one data-plane call."""
        body, size = await self._parse(request, CompletionRequest)
        ireq, _ = await self._request(request, body, size, _GENERATES)
        prompts = body.prompts()
        rename = _item_param("prompt", single=isinstance(body.prompt, str))
        ireq.inputs, ireq.parameters = [{"prompt": p} for p in prompts], body.parameters()
        return await self._complete(ireq, body, rename, chat=False)

    async def _complete(
        self, ireq: InferenceRequest, body: Any, rename: Any, *, chat: bool
    ) -> Response:
        """Stream, or answer at once in the chat or completion shape."""
        if body.stream:
            return await self._stream(ireq, body, rename)
        response = await self._infer(ireq, rename)
        shape = Completion(
            id=_new_id(chat=chat),
            created=response.created,
            model=response.model,
            fingerprint=_fingerprint(response.version),
            chat=chat,
        )
        return self._answer(shape.response(response.results, response.usage), response)

    async def embeddings(self, request: Request) -> Response:
        """``POST /v1/embeddings``: float lists or base64 of little-endian float32."""
        body, size = await self._parse(request, EmbeddingRequest)
        ireq, info = await self._request(request, body, size, _EMBEDS)
        self._check_dimensions(info, body.dimensions)
        ireq.inputs, ireq.parameters = body.texts(), body.parameters()
        response = await self._infer(ireq, _item_param("input", isinstance(body.input, str)))
        out = embedding_list(response.results, response.usage, response.model, body.encoding_format)
        return self._answer(out, response)

    def _check_dimensions(self, info: VersionInfo, dimensions: int | None) -> None:
        """Refuse more dimensions than the loaded model makes (fewer truncate the vectors)."""
        dep = self.plane.manager.deployment(info.ref)
        if dimensions is None or dep is None or dep.runtime is None:
            return
        native = dep.runtime.metadata().get("dimensions")
        if isinstance(native, int) and dimensions > native:
            raise InvalidInput(
                f"dimensions is {dimensions}; {info.ref} makes vectors of {native}",
                param="dimensions",
            )


def _new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}"


def build_router(plane: DataPlane) -> APIRouter:
    """The OpenAI-compatible routes, bound to one data plane."""
    routes = OpenAIRoutes(plane)
    router = APIRouter(tags=["openai"])
    for path, handler, kind, summary in (
        ("/v1/chat/completions", routes.chat, ChatCompletionRequest, "Chat completion"),
        ("/v1/completions", routes.completions, CompletionRequest, "Text completion"),
        ("/v1/embeddings", routes.embeddings, EmbeddingRequest, "Embeddings"),
    ):
        router.add_api_route(
            path,
            handler,
            methods=["POST"],
            summary=f"{summary} (OpenAI-compatible)",
            responses={**INFER_ERRORS, **({} if kind is EmbeddingRequest else _STREAMED)},
            openapi_extra=json_body(body_schema(kind)),
        )
    return router
