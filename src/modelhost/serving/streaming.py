"""Streamed generation through the data plane: checks first, then chunk by chunk.

Everything a caller can get wrong (routing, readiness, validation, limits, input guards) is
checked before the first chunk, so a transport can still answer with a status code; a model
that is unavailable at that point (its breaker open, not ready, failing) hands the stream to
the version's first fallback that streams. Once chunks flow, a failure ends the stream (a
half-sent answer cannot be taken back) and counts against the version's breaker.

Chunks are produced in the inference pool and handed to the event loop through a queue; the
output guards run over the stream (:meth:`AccessControl.guard_stream`); the stream is counted,
charged and recorded when it ends. Streamed generations are not copied to shadows (a shadow
would double the cost of every token) and are not cached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from modelhost.errors import InvalidInput
from modelhost.registry import VersionInfo
from modelhost.runtimes import StreamChunk, Usage
from modelhost.security.keys import Principal
from modelhost.serving.fallback import fall_back
from modelhost.serving.observers import InferenceEvent

if TYPE_CHECKING:
    from modelhost.serving.dataplane import DataPlane, InferenceRequest, InferenceResponse

_DONE = object()
Opened = tuple[VersionInfo, AsyncIterator[StreamChunk]]


async def open_stream(plane: DataPlane, request: InferenceRequest) -> Opened:
    """Check ``request`` and start streaming its first input's generation.

    Returns:
        The version that streams and the iterator of its chunks (consumed by the transport).

    Raises:
        ModelhostError: any check failed, or the version and every fallback were unavailable.
    """
    started = time.perf_counter()
    info: VersionInfo | None = None
    try:
        info = (await plane.route(request)).info
        plane.breakers.admit(info)
        dep, parameters = plane.admit(info, request)
        runtime = dep.runtime
        assert runtime is not None
        if not runtime.supports_streaming:
            raise InvalidInput(f"{dep.ref} does not stream", param="stream")
        principal, inputs, _ = await plane.secure(request, info)
    except BaseException as exc:  # counted, then raised or answered by a fallback
        plane.failed(request, info, exc, started)
        if info is None or not isinstance(exc, Exception):
            raise
        plane.breakers.failed(info, exc)
        return await fall_back(lambda child: open_stream(plane, child), request, info, exc)
    access, served = plane.access, dep.info

    def generate() -> Any:
        produced = runtime.stream(inputs[0], parameters)
        return access.guard_stream(served, produced)[0] if access is not None else produced

    chunks = pump(plane.pools[runtime.lane], generate)
    return served, _observed(plane, chunks, request, served, started, principal)


async def _observed(
    plane: DataPlane,
    chunks: AsyncGenerator[StreamChunk, None],
    request: InferenceRequest,
    info: VersionInfo,
    started: float,
    principal: Principal | None = None,
) -> AsyncIterator[StreamChunk]:
    """Pass chunks through; count the stream when it ends (a consumer leaving is
    ``cancelled``), tell the breaker, and charge its tokens."""
    usage: Usage | None = None
    pieces: list[str] = []
    finish: str | None = None
    opened = time.perf_counter()
    try:
        async for chunk in chunks:
            if chunk.usage is not None:  # priced before the transport sends it on
                plane.price(info, chunk.usage, 1, time.perf_counter() - opened)
            usage = chunk.usage or usage
            pieces.append(chunk.text)
            finish = chunk.finish_reason or finish
            yield chunk
    except BaseException as exc:  # counted, then raised unchanged
        plane.failed(request, info, exc, started)
        plane.breakers.failed(info, exc)
        raise
    finally:
        await chunks.aclose()
    plane.breakers.succeeded(info)
    plane.metrics.deployment(info.model, info.version, request.protocol).answered(
        time.perf_counter() - started
    )
    generating = time.perf_counter() - opened
    plane.tracer.record("inference", generating, {"modelhost.model": info.ref})
    if usage is not None:
        await plane.charge(principal, info, usage, 1)
    if plane.observers:
        result = {"text": "".join(pieces), "finish_reason": finish}
        decisions = request.noted(request.route)
        plane.emit(
            InferenceEvent.ended(
                request,
                info,
                started,
                results=[result],
                usage=usage,
                streamed=True,
                timings={"inference": generating},
                decisions=decisions,
            )
        )


async def pump(pool: Executor, make: Callable[[], Any]) -> AsyncGenerator[StreamChunk, None]:
    """Run the generator ``make()`` returns in ``pool``; yield its chunks on the loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = False

    def produce() -> None:
        try:
            for chunk in make():
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
                if stop:
                    break
        except BaseException as exc:  # handed to the consumer, raised there
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    future = loop.run_in_executor(pool, produce)
    try:
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop = True
        await asyncio.shield(future)


async def generate_whole(
    plane: DataPlane, request: InferenceRequest, on_chunk: Callable[[StreamChunk], Awaitable[None]]
) -> InferenceResponse:
    """Stream one request's generation to ``on_chunk`` and return the whole answer, shaped as
    :meth:`DataPlane.infer` returns it."""
    from modelhost.serving.dataplane import InferenceResponse, new_id

    info, chunks = await open_stream(plane, request)
    pieces: list[str] = []
    finish: str | None = None
    usage = Usage()
    async for chunk in chunks:
        pieces.append(chunk.text)
        finish = chunk.finish_reason or finish
        usage = chunk.usage or usage
        await on_chunk(chunk)
    return InferenceResponse(
        id=new_id("pred"),
        model=info.model,
        version=info.version,
        created=int(time.time()),
        results=[{"text": "".join(pieces), "finish_reason": finish}],
        usage=usage,
        decisions=dict(request.decisions),
    )
