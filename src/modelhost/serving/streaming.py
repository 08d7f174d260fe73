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
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from modelhost.errors import InvalidInput
from modelhost.inference import InferenceRequest, InferenceResponse, Usage
from modelhost.registry import VersionInfo
from modelhost.runtimes import Prediction, StreamChunk

if TYPE_CHECKING:
    from modelhost.serving.dataplane import Admitted, DataPlane

_DONE = object()


class Stream:
    """An opened stream: the version that streams, its chunks (iterate once), and the whole
    answer once the chunks ran out (``response``, shaped as ``DataPlane.infer`` returns it)."""

    def __init__(
        self, plane: DataPlane, admitted: Admitted, chunks: AsyncGenerator[StreamChunk, None]
    ) -> None:
        self.plane = plane
        self.admitted = admitted
        self.info: VersionInfo = admitted.info
        self.response: InferenceResponse | None = None
        self._chunks = chunks

    def __aiter__(self) -> AsyncGenerator[StreamChunk, None]:
        return self._observed()

    async def _observed(self) -> AsyncGenerator[StreamChunk, None]:
        """Pass chunks through; when they end, finish the request like any other (charge,
        breaker, metrics, record); a consumer leaving or a failure is counted as failed."""
        plane, admitted, info = self.plane, self.admitted, self.info
        usage: Usage | None = None
        pieces: list[str] = []
        finish: str | None = None
        opened = time.perf_counter()
        try:
            async for chunk in self._chunks:
                if chunk.usage is not None:  # priced before the transport sends it on
                    plane.price(info, chunk.usage, 1, time.perf_counter() - opened)
                usage = chunk.usage or usage
                pieces.append(chunk.text)
                finish = chunk.finish_reason or finish
                yield chunk
        except BaseException as exc:  # counted, then raised unchanged
            plane.failed(admitted.request, info, exc, admitted.started)
            plane.breakers.failed(info, exc)
            raise
        finally:
            await self._chunks.aclose()
        generating = time.perf_counter() - opened
        plane.tracer.record("inference", generating, {"modelhost.model": info.ref})
        whole = Prediction([{"text": "".join(pieces), "finish_reason": finish}], usage or Usage())
        self.response = await plane.finish(admitted, whole, generating, streamed=True)


async def open_stream(plane: DataPlane, request: InferenceRequest) -> Stream:
    """Check ``request`` and start streaming its first input's generation.

    Returns:
        The opened stream (consumed by the transport).

    Raises:
        ModelhostError: any check failed, or the version and every fallback were unavailable.
    """
    started = time.perf_counter()
    try:
        admitted = await plane.accept(request, started)
        runtime = admitted.dep.runtime
        assert runtime is not None
        if admitted.handler is not None or not runtime.supports_streaming:
            raise InvalidInput(f"{admitted.dep.ref} does not stream", param="stream")
        await plane.screen(admitted, cache=False)
    except BaseException as exc:  # counted, then raised or answered by a fallback
        return await plane.recover(request, exc, started, lambda child: open_stream(plane, child))
    access, served, inputs = plane.access, admitted.info, admitted.inputs
    parameters = admitted.parameters

    def generate() -> Any:
        produced = runtime.stream(inputs[0], parameters)
        return access.guard_stream(served, produced)[0] if access is not None else produced

    return Stream(plane, admitted, pump(plane.pools.executor(runtime.lane), generate))


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
    stream = await open_stream(plane, request)
    async for chunk in stream:
        await on_chunk(chunk)
    assert stream.response is not None  # set when the chunks ran out
    return stream.response
