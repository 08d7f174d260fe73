"""Adaptive batching: concurrent requests for one deployment merged into one runtime call.

An :class:`AdaptiveBatcher` holds a runtime, the way middleware holds an app: it never patches
the runtime. Every protocol reaches it through ``DataPlane.infer``, so REST v1, OpenAI, OIP v2,
gRPC and the job worker all share the same micro-batches.

How a request travels:

* Requests are grouped by a canonical key of their merged parameters (sorted-key JSON), so two
  requests with different parameters are never merged.
* A caller's own multi-input request counts toward ``max_batch_size``. A request that does not
  fit in the room left flushes the open batch and starts the next one (arrival order is kept);
  a request of ``max_batch_size`` inputs or more runs alone, unsplit, at once.
* An open batch is flushed when it is full, or when its first request has waited
  ``max_batch_delay_ms`` (a ``loop.call_at`` timer, re-armed if an event loop fires it early).
* The merged call runs through the ``run`` callable the data plane gives (its inference thread
  pool, under the version's timeout); results are split back in order, with each request's
  share of the usage.
* If the merged call raises, each member is retried alone, so only the culprit gets its error.
  A :class:`~modelhost.errors.ServiceError` (timeout, not ready) is not retried: it fails the
  whole batch, because retrying would only pile more work on an overloaded model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from modelhost.errors import ModelNotReady, RuntimeFailure, ServiceError
from modelhost.inference import Usage
from modelhost.manifest import Batching
from modelhost.runtimes import Prediction, Runtime


class Runner(Protocol):
    """Runs a blocking runtime call off the event loop (the data plane's pool and timeout)."""

    def __call__(self, fn: Callable[[], Prediction], /) -> Awaitable[Prediction]:
        """Run ``fn`` in a worker thread and return its prediction."""


class CallObserver(Protocol):
    """Told the size and duration of every runtime call (fed to the metrics)."""

    def __call__(self, size: int, seconds: float, /) -> None:
        """Record one runtime call of ``size`` inputs that took ``seconds``."""


def _ignore(size: int, seconds: float, /) -> None:
    """The observer used when nobody listens."""


def batching_enabled(config: Batching) -> bool:
    """Whether a manifest's batching section asks for merging at all.

    ``max_batch_size`` 1 or a zero delay means every request goes straight to the runtime.
    """
    return config.max_batch_size > 1 and config.max_batch_delay_ms > 0


def observed_predict(
    runtime: Runtime, inputs: list[Any], parameters: dict[str, Any], observe: CallObserver
) -> Prediction:
    """Call ``runtime.predict`` and report its size and duration; runs in a worker thread."""
    started = time.perf_counter()
    prediction = runtime.predict(inputs, parameters)
    observe(len(inputs), time.perf_counter() - started)
    return prediction


def parameters_key(parameters: dict[str, Any]) -> bytes | None:
    """A canonical key of merged parameters, or None when they cannot be compared safely.

    Requests share a batch only when their keys are equal; parameters that are not plain JSON
    get no key, and such a request runs alone.
    """
    try:
        return orjson.dumps(parameters, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return None


def share_usage(usage: Usage, sizes: list[int]) -> list[Usage]:
    """Split the usage of a merged call in proportion to each request's number of inputs.

    Cumulative rounding keeps the shares whole and makes them add up exactly to the total.
    """
    total = sum(sizes)
    shares: list[Usage] = []
    done = 0
    before_in = before_out = 0
    for size in sizes:
        done += size
        upto_in = usage.input_tokens * done // total if total else 0
        upto_out = usage.output_tokens * done // total if total else 0
        shares.append(Usage(input_tokens=upto_in - before_in, output_tokens=upto_out - before_out))
        before_in, before_out = upto_in, upto_out
    return shares


def split_prediction(prediction: Prediction, sizes: list[int]) -> list[Prediction]:
    """Cut a merged prediction back into one prediction per request, in order.

    Raises:
        RuntimeFailure: the runtime returned a different number of results than inputs.
    """
    if len(prediction.results) != sum(sizes):
        raise RuntimeFailure(
            f"the runtime returned {len(prediction.results)} results for a merged batch of "
            f"{sum(sizes)} inputs"
        )
    parts: list[Prediction] = []
    start = 0
    for size, usage in zip(sizes, share_usage(prediction.usage, sizes), strict=True):
        parts.append(Prediction(results=prediction.results[start : start + size], usage=usage))
        start += size
    return parts


@dataclass(slots=True)
class _Member:
    """One waiting request."""

    inputs: list[Any]
    future: asyncio.Future[Prediction]


@dataclass(slots=True)
class _Batch:
    """An open batch of requests that share parameters."""

    key: bytes
    parameters: dict[str, Any]
    deadline: float
    members: list[_Member] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


def settle(future: asyncio.Future[Any], outcome: Any) -> None:
    """Hand a result or an error to a waiting caller, unless it stopped waiting (timeout,
    cancel); used from the loop side of thread hand-offs too."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class AdaptiveBatcher:
    """Holds one runtime and merges concurrent requests into micro-batches.

    Args:
        runtime: the loaded runtime every merged call goes to.
        config: the version's ``batching`` section.
        run: runs a blocking call off the event loop (the data plane's pool and timeout).
        observe: told the size and duration of every runtime call.
    """

    def __init__(
        self,
        runtime: Runtime,
        config: Batching,
        *,
        run: Runner,
        observe: CallObserver | None = None,
    ) -> None:
        self.runtime = runtime
        self.max_batch_size = config.max_batch_size
        self.max_delay_s = config.max_batch_delay_ms / 1000
        self.enabled = batching_enabled(config)
        self._run = run
        self._observe: CallObserver = observe or _ignore
        self._open: dict[bytes, _Batch] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def waiting(self) -> int:
        """Requests waiting in open batches right now."""
        return sum(len(batch.members) for batch in self._open.values())

    async def submit(self, inputs: list[Any], parameters: dict[str, Any]) -> Prediction:
        """Predict ``inputs`` as part of a batch; returns this request's share only.

        Raises:
            ModelNotReady: the batcher was closed (its version is being unloaded).
        """
        if self._closed:
            raise ModelNotReady(f"{self.runtime.manifest.ref} is unloading; retry shortly")
        key = None
        if self.enabled and len(inputs) < self.max_batch_size:
            key = parameters_key(parameters)
        if key is None:
            return await self._call(inputs, parameters)
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._enqueue(key, parameters, _Member(inputs, future))
        return await future

    def _enqueue(self, key: bytes, parameters: dict[str, Any], member: _Member) -> None:
        batch = self._open.get(key)
        if batch is not None and batch.size + len(member.inputs) > self.max_batch_size:
            self._flush(batch)  # no room: the open batch leaves now, this one starts the next
            batch = None
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = _Batch(key=key, parameters=parameters, deadline=loop.time() + self.max_delay_s)
            batch.timer = loop.call_at(batch.deadline, self._expire, batch)
            self._open[key] = batch
        batch.members.append(member)
        batch.size += len(member.inputs)
        if batch.size >= self.max_batch_size:
            self._flush(batch)

    def _expire(self, batch: _Batch) -> None:
        """Timer callback: flush, unless the loop woke early (uvloop rounds to milliseconds)."""
        loop = asyncio.get_running_loop()
        if loop.time() < batch.deadline:
            batch.timer = loop.call_at(batch.deadline, self._expire, batch)
            return
        self._flush(batch)

    def _flush(self, batch: _Batch) -> None:
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        members = [m for m in batch.members if not m.future.done()]  # drop cancelled callers
        if not members:
            return
        task = asyncio.get_running_loop().create_task(self._execute(batch.parameters, members))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _call(self, inputs: list[Any], parameters: dict[str, Any]) -> Prediction:
        runtime, observe = self.runtime, self._observe
        return await self._run(lambda: observed_predict(runtime, inputs, parameters, observe))

    async def _execute(self, parameters: dict[str, Any], members: list[_Member]) -> None:
        try:
            await self._merged(parameters, members)
        finally:  # whatever happened (even cancellation), nobody is left waiting forever
            for member in members:
                member.future.cancel()

    async def _merged(self, parameters: dict[str, Any], members: list[_Member]) -> None:
        sizes = [len(m.inputs) for m in members]
        inputs = members[0].inputs if len(members) == 1 else [x for m in members for x in m.inputs]
        try:
            parts = split_prediction(await self._call(inputs, parameters), sizes)
        except ServiceError as exc:  # timeout or not ready: retrying alone would not help
            for member in members:
                settle(member.future, exc)
            return
        except Exception as exc:  # one bad request must fail alone
            if len(members) == 1:
                settle(members[0].future, exc)
                return
            await asyncio.gather(*(self._alone(parameters, m) for m in members))
            return
        for member, part in zip(members, parts, strict=True):
            settle(member.future, part)

    async def _alone(self, parameters: dict[str, Any], member: _Member) -> None:
        if member.future.done():
            return
        try:
            outcome: Prediction | BaseException = await self._call(member.inputs, parameters)
        except Exception as exc:  # this member's own error, handed to its caller
            outcome = exc
        settle(member.future, outcome)

    async def close(self) -> None:
        """Refuse new requests, flush the open batches now and wait for every call to end."""
        self._closed = True
        for batch in list(self._open.values()):
            self._flush(batch)
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
