"""The one request path every transport goes through.

``resolve → ready? → limits → validate → infer (in the inference pool, with a timeout) →
response``. Transports (REST v1, OpenAI, OIP v2, gRPC, the job worker) are thin codecs that
build an :class:`InferenceRequest` and read an :class:`InferenceResponse`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastjsonschema import JsonSchemaValueException

from modelhost.errors import InferenceTimeout, InvalidInput, PayloadTooLarge, VersionNotFound
from modelhost.monitoring.metrics import ANY_PROTOCOL, Metrics
from modelhost.registry import VersionInfo
from modelhost.runtimes import Prediction, StreamChunk, Usage
from modelhost.serving.batching import AdaptiveBatcher, batching_enabled, observed_predict
from modelhost.serving.models import Deployment, ModelManager, Validator

_DONE = object()


@dataclass(slots=True)
class InferenceRequest:
    """One call to a model, whatever protocol it came by."""

    model: str
    inputs: list[Any] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    """Exact version, alias or stage; None for the production version."""
    request_id: str = ""
    body_bytes: int = 0
    """Size of the request body, checked against the model's ``max_request_bytes``."""
    protocol: str = ANY_PROTOCOL
    """The transport's name (``v1``, ``openai``, ``v2``, ...), the ``protocol`` metrics label."""

    @classmethod
    def for_reference(cls, reference: str, **kwargs: Any) -> InferenceRequest:
        """Build from ``name`` or ``name@version`` (a ``version`` keyword wins)."""
        name, _, pinned = reference.partition("@")
        version = kwargs.pop("version", None) or pinned or None
        return cls(model=name, version=version, **kwargs)


@dataclass(slots=True)
class InferenceResponse:
    """Results of one call, with the version that served it."""

    id: str
    model: str
    version: str
    created: int
    results: list[Any]
    usage: Usage

    def as_v1(self) -> dict[str, Any]:
        """The REST v1 body."""
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "created": self.created,
            "results": self.results,
            "usage": self.usage.as_dict(),
        }


def _describe(prefix: str, exc: JsonSchemaValueException) -> tuple[str, str]:
    """The param path and a sentence naming it, from a fastjsonschema error."""
    name = exc.name or "data"
    param = prefix + name.removeprefix("data")
    detail = (exc.message or "is invalid").removeprefix(name).strip()
    if exc.rule == "required" and isinstance(exc.value, dict):
        required = (exc.definition or {}).get("required", [])
        missing = [name for name in required if name not in exc.value]
        if missing:
            param = f"{param}.{missing[0]}"
            return param, f"{param} is required"
    return param, f"{param} {detail}"


def _check(validator: Validator | None, value: Any, prefix: str) -> None:
    if validator is None:
        return
    try:
        validator(value)
    except JsonSchemaValueException as exc:
        param, message = _describe(prefix, exc)
        raise InvalidInput(message, param=param) from None


def new_id(prefix: str) -> str:
    """A short random id such as ``pred_3f2a…``."""
    return f"{prefix}_{secrets.token_hex(12)}"


class DataPlane:
    """Validates and runs inference requests against the loaded model versions."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        threads: int,
        default_timeout_s: float,
        default_max_request_bytes: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.manager = manager
        self.default_timeout_s = default_timeout_s
        self.default_max_request_bytes = default_max_request_bytes
        self.metrics = metrics if metrics is not None else Metrics()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="modelhost-infer")

    async def prepare(self, request: InferenceRequest) -> tuple[Deployment, dict[str, Any]]:
        """Resolve the version, check that it serves, check limits and validate the inputs.

        Returns:
            The ready deployment and the merged parameters.
        """
        info = await self.manager.resolve(request.model, request.version)
        return self.admit(info, request)

    def admit(
        self, info: VersionInfo, request: InferenceRequest
    ) -> tuple[Deployment, dict[str, Any]]:
        """Check that a resolved version serves, check limits and validate the inputs."""
        dep = self.manager.ready_runtime(info)
        parameters = self.validate(info, dep, request)
        return dep, parameters

    def max_request_bytes(self, info: VersionInfo) -> int:
        """The body size limit of a version."""
        return info.manifest.limits.max_request_bytes or self.default_max_request_bytes

    def validate(
        self, info: VersionInfo, dep: Deployment, request: InferenceRequest
    ) -> dict[str, Any]:
        """Check size, item count, inputs and parameters against the manifest.

        Raises:
            PayloadTooLarge: the body is over ``limits.max_request_bytes``.
            InvalidInput: naming the path of the first wrong field.
        """
        limits = info.manifest.limits
        if request.body_bytes > self.max_request_bytes(info):
            raise PayloadTooLarge(
                f"request body is {request.body_bytes} bytes; {info.ref} accepts at most "
                f"{self.max_request_bytes(info)}",
                param="body",
            )
        if not request.inputs:
            raise InvalidInput("inputs must hold at least one item", param="inputs")
        if len(request.inputs) > limits.max_batch_items:
            raise InvalidInput(
                f"inputs has {len(request.inputs)} items; {info.ref} accepts at most "
                f"{limits.max_batch_items} per request",
                param="inputs",
            )
        for index, item in enumerate(request.inputs):
            _check(dep.input_validator, item, f"inputs[{index}]")
        parameters = {**info.manifest.parameters, **request.parameters}
        _check(dep.parameters_validator, parameters, "parameters")
        return parameters

    def timeout(self, info: VersionInfo) -> float:
        """Seconds one inference of this version may take."""
        ms = info.manifest.limits.timeout_ms
        return ms / 1000 if ms else self.default_timeout_s

    async def run(self, fn: Callable[[], Any], info: VersionInfo) -> Any:
        """Run ``fn`` in the inference pool under the version's timeout.

        Raises:
            InferenceTimeout: it took longer than the timeout (the caller gets 504).
        """
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, fn)
        try:
            return await asyncio.wait_for(future, self.timeout(info))
        except TimeoutError:
            raise InferenceTimeout(
                f"{info.ref} did not answer within {self.timeout(info):.3g}s"
            ) from None

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Run one request through the whole path, recording its metrics."""
        started = time.perf_counter()
        info: VersionInfo | None = None
        try:
            info = await self.manager.resolve(request.model, request.version)
            dep, parameters = self.admit(info, request)
            prediction = await self.predict(dep, request.inputs, parameters)
        except BaseException as exc:  # counted, then raised unchanged
            self._failed(request, info, exc)
            raise
        self.metrics.deployment(dep.info.model, dep.info.version, request.protocol).answered(
            time.perf_counter() - started
        )
        return InferenceResponse(
            id=new_id("pred"),
            model=dep.info.model,
            version=dep.info.version,
            created=int(time.time()),
            results=prediction.results,
            usage=prediction.usage,
        )

    async def predict(
        self, dep: Deployment, inputs: list[Any], parameters: dict[str, Any]
    ) -> Prediction:
        """Run validated inputs on a ready deployment, through its batcher when it has one."""
        batcher = dep.batcher if dep.batcher is not None else self._attach_batcher(dep)
        if batcher is not None:
            return await batcher.submit(inputs, parameters)
        runtime = dep.runtime
        assert runtime is not None  # ready_runtime returned a READY deployment
        observe = self.metrics.deployment(dep.info.model, dep.info.version).runtime_call
        prediction: Prediction = await self.run(
            lambda: observed_predict(runtime, inputs, parameters, observe), dep.info
        )
        return prediction

    def _attach_batcher(self, dep: Deployment) -> AdaptiveBatcher | None:
        """Wrap a deployment's runtime in a batcher if its manifest asks for batching.

        Done on the first request after loading; ``ModelManager.unload`` closes it.
        """
        config = dep.info.manifest.batching
        if dep.runtime is None or not batching_enabled(config):
            return None
        dep.batcher = AdaptiveBatcher(
            dep.runtime,
            config,
            run=lambda fn: self.run(fn, dep.info),
            observe=self.metrics.deployment(dep.info.model, dep.info.version).runtime_call,
        )
        return dep.batcher

    def _failed(
        self, request: InferenceRequest, info: VersionInfo | None, exc: BaseException
    ) -> None:
        if info is not None:
            self.metrics.failed(info.model, info.version, request.protocol, exc)
        elif isinstance(exc, VersionNotFound):  # the model exists, so its name is a safe label
            self.metrics.failed(request.model, None, request.protocol, exc)
        else:
            self.metrics.failed(None, None, request.protocol, exc)

    async def stream(
        self, request: InferenceRequest
    ) -> tuple[VersionInfo, AsyncIterator[StreamChunk]]:
        """Validate now, then stream the first input's generation chunk by chunk.

        Errors found before generation starts are raised here, so a transport can still answer
        with a status code; the iterator is consumed by the transport.
        """
        started = time.perf_counter()
        info: VersionInfo | None = None
        try:
            info = await self.manager.resolve(request.model, request.version)
            dep, parameters = self.admit(info, request)
            runtime = dep.runtime
            assert runtime is not None
            if not runtime.supports_streaming:
                raise InvalidInput(f"{dep.ref} does not stream", param="stream")
        except BaseException as exc:  # counted, then raised unchanged
            self._failed(request, info, exc)
            raise
        chunks = self._pump(lambda: runtime.stream(request.inputs[0], parameters))
        return dep.info, self._observed(chunks, request, dep.info, started)

    async def _observed(
        self,
        chunks: AsyncGenerator[StreamChunk, None],
        request: InferenceRequest,
        info: VersionInfo,
        started: float,
    ) -> AsyncIterator[StreamChunk]:
        """Pass chunks through; count the stream when it ends (a consumer leaving is
        ``cancelled``)."""
        try:
            async for chunk in chunks:
                yield chunk
        except BaseException as exc:  # counted, then raised unchanged
            self.metrics.failed(info.model, info.version, request.protocol, exc)
            raise
        finally:
            await chunks.aclose()
        self.metrics.deployment(info.model, info.version, request.protocol).answered(
            time.perf_counter() - started
        )

    async def _pump(self, make: Callable[[], Any]) -> AsyncGenerator[StreamChunk, None]:
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

        future = loop.run_in_executor(self._pool, produce)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop = True
            await asyncio.shield(future)

    def close(self) -> None:
        """Stop the inference pool."""
        self._pool.shutdown(wait=False, cancel_futures=True)
