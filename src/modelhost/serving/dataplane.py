"""The one request path every transport goes through.

``resolve → ready? → limits → validate → infer (in the inference pool, with a timeout) →
response``. Transports (REST v1, OpenAI, OIP v2, gRPC, the job worker) are thin codecs that
build an :class:`InferenceRequest` and read an :class:`InferenceResponse`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from asyncio import Future
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from modelhost.errors import (
    InferenceTimeout,
    InvalidInput,
    PayloadTooLarge,
    RuntimeFailure,
    VersionNotFound,
)
from modelhost.manifest import RuntimeKind
from modelhost.monitoring.metrics import ANY_PROTOCOL, Metrics
from modelhost.monitoring.tracing import Tracer
from modelhost.registry import VersionInfo
from modelhost.runtimes import Prediction, StreamChunk, Usage
from modelhost.security.access import AccessControl
from modelhost.security.keys import ANONYMOUS, Principal
from modelhost.security.ratelimit import price_of
from modelhost.serving.batching import (
    AdaptiveBatcher,
    batching_enabled,
    observed_predict,
    parameters_key,
    settle,
    split_prediction,
)
from modelhost.serving.breaker import Breakers
from modelhost.serving.caching import CacheLookup, CacheState, ResponseCache
from modelhost.serving.cascade import run_cascade
from modelhost.serving.fallback import fall_back
from modelhost.serving.models import Deployment, ModelManager
from modelhost.serving.observers import InferenceEvent, InferenceObserver
from modelhost.serving.router import Route, Router, ShadowSink
from modelhost.serving.validation import check_value

_DONE = object()
#: Span attributes of the guards steps (constants: nothing is built per request).
_INPUT_GUARDS = {"modelhost.guards": "input"}
_OUTPUT_GUARDS = {"modelhost.guards": "output"}
log = logging.getLogger("modelhost.serving")


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
    principal: Principal | None = None
    """Who calls (set by the transport from its credential); limits and budgets count by it."""
    queued_s: float | None = None
    """Seconds the request waited in the job queue before this attempt (async jobs only)."""
    replay_of: str | None = None
    """The request id this call replays; a replay is never live traffic."""
    session: str | None = None
    """The caller's ``X-Session-ID``: keeps it on one side of a canary split."""
    route: Route | None = None
    """Where the request goes, when the transport routed it before handing it over (to check
    the body limit or decode against the chosen version); routed by the data plane if None."""
    no_cache: bool = False
    """The caller sent ``Cache-Control: no-cache``: the response cache must not answer."""
    decisions: dict[str, Any] = field(default_factory=dict)
    """Set on a child request a cascade or fallback makes (``cascade``, ``fallback``): copied
    into its provenance record and its response; a fallback's request never falls back."""

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
    guards: dict[str, Any] = field(default_factory=dict)
    """What the guards did: ``redactions`` (counts by kind), ``prompt_injection`` (flag)."""
    cache: str | None = None
    """What the response cache did (``hit``, ``miss``, ``bypass``; the ``X-Cache`` header);
    None when no cache was asked."""
    decisions: dict[str, Any] = field(default_factory=dict)
    """``cascade`` (which stage answered each item) or ``fallback`` (which model answered
    instead of which), shown in the body as they are."""

    def as_v1(self) -> dict[str, Any]:
        """The REST v1 body."""
        body = {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "created": self.created,
            "results": self.results,
            "usage": self.usage.as_dict(),
        }
        if self.guards:
            body["guards"] = self.guards
        body.update(self.decisions)
        return body


@dataclass(slots=True)
class _Admitted:
    """A request of :meth:`DataPlane.infer_many` that passed its checks, waiting to run."""

    index: int
    request: InferenceRequest
    dep: Deployment
    parameters: dict[str, Any]
    principal: Principal | None
    inputs: list[Any]
    guards: dict[str, Any]
    route: Route


def _work(fn: Callable[[], Any], loop: asyncio.AbstractEventLoop, future: Future[Any]) -> None:
    """Inference-thread side of :meth:`DataPlane.run`: call ``fn``, hand the outcome back."""
    outcome: Any
    try:
        outcome = fn()
    except BaseException as exc:  # handed to the awaiting caller, raised there
        outcome = exc
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
        loop.call_soon_threadsafe(settle, future, outcome)


def _expire(future: Future[Any], ref: str, timeout: float) -> None:
    """Timer callback of :meth:`DataPlane.run`: fail the caller with a timeout."""
    if not future.done():
        future.set_exception(InferenceTimeout(f"{ref} did not answer within {timeout:.3g}s"))


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
        access: AccessControl | None = None,
        observers: list[InferenceObserver] | None = None,
        tracer: Tracer | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        self.manager = manager
        self.breakers = breakers if breakers is not None else Breakers(metrics=metrics)
        """Circuit breakers of the versions called (see :mod:`modelhost.serving.breaker`)."""
        self.tracer = tracer if tracer is not None else Tracer()
        self.observers: list[InferenceObserver] = list(observers or [])
        self.access = access
        self.default_timeout_s = default_timeout_s
        self.default_max_request_bytes = default_max_request_bytes
        self.metrics = metrics if metrics is not None else Metrics()
        self.router = Router(manager)
        self.cache: ResponseCache | None = None
        """Answers repeated requests (set by the composition root when caching is on)."""
        self.shadow: ShadowSink | None = None
        """Runs shadow versions on copies of answered requests (set by the rollouts
        component); None: shadows named by a deployment are not run."""
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="modelhost-infer")

    async def route(self, request: InferenceRequest) -> Route:
        """The version ``request`` goes to (pin, production or canary) and its shadows; kept on
        the request (``request.route``) for the rest of its path."""
        if request.route is None:
            request.route = await self.router.route(request)
        return request.route

    def admit(
        self, info: VersionInfo, request: InferenceRequest
    ) -> tuple[Deployment, dict[str, Any]]:
        """Check that a resolved version serves, check limits and validate the inputs."""
        with self.tracer.span("validation"):
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
            check_value(dep.input_validator, item, f"inputs[{index}]")
        parameters = {**info.manifest.parameters, **request.parameters}
        check_value(dep.parameters_validator, parameters, "parameters")
        return parameters

    def timeout(self, info: VersionInfo) -> float:
        """Seconds one inference of this version may take."""
        ms = info.manifest.limits.timeout_ms
        return ms / 1000 if ms else self.default_timeout_s

    async def run(self, fn: Callable[[], Any], info: VersionInfo) -> Any:
        """Run ``fn`` in the inference pool under the version's timeout.

        One loop future settled from the worker thread and one timer: cheaper than
        ``run_in_executor`` + ``wait_for`` (two chained futures, a waiter and a timer), which
        matters when the model itself answers in a fraction of a millisecond. On timeout the
        caller gets its error at once; the worker thread finishes the call and its result is
        dropped (as with ``wait_for``).

        Raises:
            InferenceTimeout: it took longer than the timeout (the caller gets 504).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pool.submit(_work, fn, loop, future)
        timeout = self.timeout(info)
        timer = loop.call_later(timeout, _expire, future, info.ref, timeout)
        try:
            return await future
        finally:
            timer.cancel()

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Run one request through the whole path, recording its metrics."""
        started = time.perf_counter()
        info: VersionInfo | None = None
        route = request.route
        try:
            if route is None:
                route = await self.route(request)
            info = route.info
            self.breakers.admit(info)
            dep, parameters = self.admit(info, request)
            if info.manifest.runtime is RuntimeKind.CASCADE:
                return await run_cascade(self, request, info, started)
            principal, inputs, guards = await self._secure(request, info)
            lookup = await self._lookup(request, info, inputs, parameters, principal)
            if lookup is not None and lookup.results is not None:
                return await self._answer_cached(request, dep, lookup, principal, started, route)
            tick = time.perf_counter()
            prediction = await self.predict(dep, inputs, parameters)
            compute = time.perf_counter() - tick
            self.breakers.succeeded(info)
            response = await self._respond(
                request, dep, prediction, principal, guards, started, compute, route
            )
            await self._keep(lookup, response)
        except BaseException as exc:  # counted, then raised unchanged or answered by a fallback
            self._failed(request, info, exc, started)
            if info is None or not isinstance(exc, Exception):
                raise
            self.breakers.failed(info, exc)
            return await fall_back(self.infer, request, info, exc)
        self._shadow(route, request, inputs, parameters, response.results, compute)
        return response

    async def _lookup(
        self,
        request: InferenceRequest,
        info: VersionInfo,
        inputs: list[Any],
        parameters: dict[str, Any],
        principal: Principal | None,
    ) -> CacheLookup | None:
        """Ask the response cache (None: there is none, or the request is a replay, which
        must run the model to be a replay)."""
        if self.cache is None or request.replay_of is not None:
            return None
        tenant = (principal or request.principal or ANONYMOUS).tenant
        lookup = await self.cache.lookup(info, tenant, inputs, parameters, bypass=request.no_cache)
        self.metrics.cache_requests.labels(
            info.model, info.version, lookup.kind, lookup.state.value
        ).inc()
        return lookup

    async def _keep(self, lookup: CacheLookup | None, response: InferenceResponse) -> None:
        """Say what the cache did on the response, and store a miss's answer."""
        if lookup is None or self.cache is None:
            return
        response.cache = lookup.state.value
        if lookup.key is not None:
            await self.cache.store(lookup, response.results, response.usage)

    async def _answer_cached(
        self,
        request: InferenceRequest,
        dep: Deployment,
        lookup: CacheLookup,
        principal: Principal | None,
        started: float,
        route: Route,
    ) -> InferenceResponse:
        """The response of a cache hit: no runtime call and nothing charged but the request
        itself. The usage keeps the answer's token counts (as OpenAI's cached prompts do), at
        cost 0, and says what the hit saved."""
        await asyncio.sleep(0)  # a hit never waits on I/O: let other tasks run between hits
        served = dep.info
        cached = lookup.usage or {}
        charged = Usage()
        if cached.get("cost") is not None:
            charged.cost, charged.currency = 0.0, cached.get("currency")
        await self._charge(principal, served, charged, len(request.inputs))
        usage = Usage(
            input_tokens=int(cached.get("input_tokens", 0)),
            output_tokens=int(cached.get("output_tokens", 0)),
            cost=charged.cost,
            currency=charged.currency,
            saved=float(cached["cost"]) if cached.get("cost") is not None else None,
        )
        self.metrics.deployment(served.model, served.version, request.protocol).answered(
            time.perf_counter() - started
        )
        results = lookup.results or []
        if self.observers:
            decisions = {
                **request.decisions,
                "route": route.decision(),
                "cache": f"{lookup.kind}:hit",
            }
            self._emit(
                InferenceEvent.ended(
                    request, served, started, results=results, usage=usage, decisions=decisions
                )
            )
        return InferenceResponse(
            id=new_id("pred"),
            model=served.model,
            version=served.version,
            created=int(time.time()),
            results=results,
            usage=usage,
            cache=CacheState.HIT.value,
            decisions=request.decisions,
        )

    def _shadow(
        self,
        route: Route,
        request: InferenceRequest,
        inputs: list[Any],
        parameters: dict[str, Any],
        results: list[Any],
        seconds: float,
    ) -> None:
        """Hand an answered live request to the shadow runner when its route has shadows
        (a replay is not live traffic: it is never shadowed)."""
        if route.shadows and self.shadow is not None and request.replay_of is None:
            self.shadow.offer(route, request, inputs, parameters, results, seconds)

    async def _respond(
        self,
        request: InferenceRequest,
        dep: Deployment,
        prediction: Prediction,
        principal: Principal | None,
        guards: dict[str, Any],
        started: float,
        compute: float = 0.0,
        route: Route | None = None,
    ) -> InferenceResponse:
        """Guard the results, price and charge the call (``compute``: seconds of its runtime
        call), count the answer, build the response."""
        served = dep.info
        results = self._guard_results(served, prediction, guards)
        self._price(served, prediction.usage, len(request.inputs), compute)
        await self._charge(principal, served, prediction.usage, len(request.inputs))
        self.metrics.deployment(served.model, served.version, request.protocol).answered(
            time.perf_counter() - started
        )
        if self.observers:
            self._emit(
                InferenceEvent.ended(
                    request,
                    served,
                    started,
                    results=results,
                    usage=prediction.usage,
                    timings={"inference": compute},
                    decisions={**request.decisions, "route": route.decision()}
                    if route is not None
                    else dict(request.decisions),
                )
            )
        return InferenceResponse(
            id=new_id("pred"),
            model=served.model,
            version=served.version,
            created=int(time.time()),
            results=results,
            usage=prediction.usage,
            guards=guards,
            decisions=request.decisions,
        )

    async def infer_many(
        self,
        requests: list[InferenceRequest],
        on_chunk: Callable[[int, StreamChunk], Awaitable[None]] | None = None,
    ) -> list[InferenceResponse | Exception]:
        """Run several requests (see :meth:`_infer_many`) in one ``jobs`` span."""
        with self.tracer.span("jobs", {"modelhost.jobs": len(requests)}):
            return await self._infer_many(requests, on_chunk)

    async def _infer_many(
        self,
        requests: list[InferenceRequest],
        on_chunk: Callable[[int, StreamChunk], Awaitable[None]] | None = None,
    ) -> list[InferenceResponse | Exception]:
        """Run several requests, each checked on its own, with one runtime call per model
        version and parameters: the job worker's way to feed queued jobs as one batch.

        Every request passes the same checks as :meth:`infer` (limits, validation, guards,
        charging, metrics); one that fails gets its own exception and the others go on. With
        ``on_chunk``, a one-input request to a streaming model is generated chunk by chunk
        instead (``on_chunk(index, chunk)``), and its result is assembled to match
        :meth:`infer`'s (``{"text", "finish_reason"}``).

        Returns:
            One outcome per request, in order: its response or its exception.
        """
        started = time.perf_counter()
        outcomes: list[InferenceResponse | Exception | None] = [None] * len(requests)
        groups: dict[tuple[int, bytes | int], list[_Admitted]] = {}
        lanes: dict[str, list[int]] = {"solo": [], "whole": []}

        async def admit(index: int, request: InferenceRequest) -> None:
            info: VersionInfo | None = None
            if request.queued_s is not None:
                self.tracer.record(
                    "queue", request.queued_s, {"modelhost.job_id": request.request_id}
                )
            try:
                route = await self.route(request)
                info = route.info
                dep, parameters = self.admit(info, request)
                lane = self._lane(dep, request, chunked=on_chunk is not None)
                if lane is not None:
                    lanes[lane].append(index)
                    return
                principal, inputs, guards = await self._secure(request, info)
                key = parameters_key(parameters)
                member = _Admitted(
                    index, request, dep, parameters, principal, inputs, guards, route
                )
                groups.setdefault((id(dep), key if key is not None else -index - 1), []).append(
                    member
                )
            except Exception as exc:  # this request alone fails; counted
                self._failed(request, info, exc, started)
                outcomes[index] = exc

        async def run_group(members: list[_Admitted]) -> None:
            head = members[0]
            merged = [item for member in members for item in member.inputs]
            try:
                tick = time.perf_counter()
                prediction = await self.predict(head.dep, merged, head.parameters)
                compute = time.perf_counter() - tick
                parts = split_prediction(prediction, [len(m.inputs) for m in members])
            except Exception as exc:  # the merged call failed: every member fails with it
                for member in members:
                    self._failed(member.request, head.dep.info, exc, started)
                    outcomes[member.index] = exc
                return
            for member, part in zip(members, parts, strict=True):
                try:
                    share = compute * len(member.inputs) / len(merged)
                    response = await self._respond(
                        member.request,
                        member.dep,
                        part,
                        member.principal,
                        member.guards,
                        started,
                        share,
                        member.route,
                    )
                except Exception as exc:  # charging failed (a budget ran out meanwhile)
                    self._failed(member.request, member.dep.info, exc, started)
                    outcomes[member.index] = exc
                    continue
                outcomes[member.index] = response
                self._shadow(
                    member.route,
                    member.request,
                    member.inputs,
                    member.parameters,
                    response.results,
                    share,
                )

        async def run_solo(index: int) -> None:
            assert on_chunk is not None
            try:
                outcomes[index] = await self.generate(
                    requests[index], lambda chunk: on_chunk(index, chunk)
                )
            except Exception as exc:  # counted by stream(); this request alone fails
                outcomes[index] = exc

        await asyncio.gather(*(admit(i, r) for i, r in enumerate(requests)))
        await asyncio.gather(
            *(run_group(members) for members in groups.values()),
            *(run_solo(index) for index in lanes["solo"]),
            *(self._infer_into(outcomes, index, requests[index]) for index in lanes["whole"]),
        )
        return [
            outcome if outcome is not None else RuntimeFailure("the request was not run")
            for outcome in outcomes
        ]

    @staticmethod
    def _lane(dep: Deployment, request: InferenceRequest, *, chunked: bool) -> str | None:
        """How :meth:`_infer_many` runs an admitted request: ``whole`` (a cascade, through
        :meth:`infer`: its stages are requests), ``solo`` (generated chunk by chunk), or None
        (merged into one runtime call with its group)."""
        if dep.info.manifest.runtime is RuntimeKind.CASCADE:
            return "whole"
        runtime = dep.runtime
        assert runtime is not None
        if chunked and runtime.supports_streaming and len(request.inputs) == 1:
            return "solo"
        return None

    async def _infer_into(self, outcomes: list[Any], index: int, request: InferenceRequest) -> None:
        """Run ``request`` alone (a cascade among jobs) and put its outcome at ``index``."""
        try:
            outcomes[index] = await self.infer(request)
        except Exception as exc:  # counted by infer(); this request alone fails
            outcomes[index] = exc

    async def generate(
        self, request: InferenceRequest, on_chunk: Callable[[StreamChunk], Awaitable[None]]
    ) -> InferenceResponse:
        """Stream one request's generation to ``on_chunk`` and return the whole answer, shaped
        as :meth:`infer` returns it."""
        info, chunks = await self.stream(request)
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
        )

    async def _secure(
        self, request: InferenceRequest, info: VersionInfo
    ) -> tuple[Principal | None, list[Any], dict[str, Any]]:
        """Scope, limits and budget; then prompt-injection scoring and fencing (in the pool:
        the detector may run an embedding model)."""
        access = self.access
        if access is None:
            return request.principal, request.inputs, {}
        with self.tracer.span("auth"):
            principal = await access.admit(request.principal, info)
        if not access.needs_screening(info):
            return principal, request.inputs, {}
        inputs = request.inputs
        with self.tracer.span("guards", _INPUT_GUARDS):
            screening = await self.run(lambda: access.screen(info, inputs), info)
        return principal, screening.inputs, dict(screening.flags)

    def _guard_results(
        self, info: VersionInfo, prediction: Prediction, guards: dict[str, Any]
    ) -> list[Any]:
        if self.access is None:
            return prediction.results
        with self.tracer.span("guards", _OUTPUT_GUARDS):
            results, redactions = self.access.guard_results(info, prediction.results)
        if redactions:
            guards["redactions"] = redactions
        return results

    @staticmethod
    def _price(info: VersionInfo, usage: Usage, items: int, seconds: float) -> None:
        """Put the call's cost under the version's pricing into its usage (``usage.cost``)."""
        pricing = info.manifest.pricing
        if pricing is not None:
            usage.cost = round(price_of(pricing, usage, items, seconds), 12)
            usage.currency = pricing.currency

    async def _charge(
        self, principal: Principal | None, info: VersionInfo, usage: Usage, items: int
    ) -> None:
        if self.access is not None and principal is not None:
            await self.access.charge(principal, info, usage, items)

    async def predict(
        self, dep: Deployment, inputs: list[Any], parameters: dict[str, Any]
    ) -> Prediction:
        """Run validated inputs on a ready deployment, through its batcher when it has one."""
        batcher = dep.batcher if dep.batcher is not None else self._attach_batcher(dep)
        if batcher is not None:
            dep.inflight += 1
            try:
                with self.tracer.span("batch"):
                    return await batcher.submit(inputs, parameters)
            finally:
                dep.inflight -= 1
        runtime = dep.runtime
        assert runtime is not None  # ready_runtime returned a READY deployment
        observe = self.metrics.deployment(dep.info.model, dep.info.version).runtime_call
        dep.inflight += 1
        try:
            prediction: Prediction = await self.call(
                dep, lambda: observed_predict(runtime, inputs, parameters, observe)
            )
        finally:
            dep.inflight -= 1
        return prediction

    async def call(self, dep: Deployment, fn: Callable[[], Any]) -> Any:
        """Run a runtime call of ``dep``: in the inference pool, or inline when it opted in.

        A version whose manifest sets ``options.inline: true`` (a model that answers in well
        under a millisecond, such as a small scikit-learn pipeline) is called on the event
        loop: no thread hop, which costs about as much as such a model's own work, but also no
        timeout, and other requests wait while it runs. Everything else runs in the pool.
        """
        with self.tracer.span("inference"):
            if dep.info.manifest.options.get("inline") is True:
                return fn()
            return await self.run(fn, dep.info)

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
            run=lambda fn: self.call(dep, fn),
            observe=self.metrics.deployment(dep.info.model, dep.info.version).runtime_call,
        )
        return dep.batcher

    def _failed(
        self,
        request: InferenceRequest,
        info: VersionInfo | None,
        exc: BaseException,
        started: float | None = None,
    ) -> None:
        if info is not None:
            self.metrics.failed(info.model, info.version, request.protocol, exc)
        elif isinstance(exc, VersionNotFound):  # the model exists, so its name is a safe label
            self.metrics.failed(request.model, None, request.protocol, exc)
        else:
            self.metrics.failed(None, None, request.protocol, exc)
        if started is not None:
            self._emit(InferenceEvent.ended(request, info, started, error=exc))

    def _emit(self, event: InferenceEvent) -> None:
        """Hand an ended inference to every observer; an observer's failure is only logged."""
        for observer in self.observers:
            try:
                observer.observe(event)
            except Exception:  # an observer must never fail the request it watches
                log.exception("inference observer %r failed", observer)

    async def stream(
        self, request: InferenceRequest
    ) -> tuple[VersionInfo, AsyncIterator[StreamChunk]]:
        """Validate now, then stream the first input's generation chunk by chunk.

        Errors found before generation starts are raised here, so a transport can still answer
        with a status code; the iterator is consumed by the transport. Streamed generations
        are not copied to shadows (a shadow would double the cost of every token).
        """
        started = time.perf_counter()
        info: VersionInfo | None = None
        try:
            info = (await self.route(request)).info
            dep, parameters = self.admit(info, request)
            runtime = dep.runtime
            assert runtime is not None
            if not runtime.supports_streaming:
                raise InvalidInput(f"{dep.ref} does not stream", param="stream")
            principal, inputs, _ = await self._secure(request, info)
        except BaseException as exc:  # counted, then raised unchanged
            self._failed(request, info, exc, started)
            raise
        access, served = self.access, dep.info

        def generate() -> Any:
            produced = runtime.stream(inputs[0], parameters)
            return access.guard_stream(served, produced)[0] if access is not None else produced

        chunks = self._pump(generate)
        return served, self._observed(chunks, request, served, started, principal)

    async def _observed(
        self,
        chunks: AsyncGenerator[StreamChunk, None],
        request: InferenceRequest,
        info: VersionInfo,
        started: float,
        principal: Principal | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """Pass chunks through; count the stream when it ends (a consumer leaving is
        ``cancelled``) and charge its tokens."""
        usage: Usage | None = None
        pieces: list[str] = []
        finish: str | None = None
        opened = time.perf_counter()
        try:
            async for chunk in chunks:
                if chunk.usage is not None:  # priced before the transport sends it on
                    self._price(info, chunk.usage, 1, time.perf_counter() - opened)
                usage = chunk.usage or usage
                pieces.append(chunk.text)
                finish = chunk.finish_reason or finish
                yield chunk
        except BaseException as exc:  # counted, then raised unchanged
            self._failed(request, info, exc, started)
            raise
        finally:
            await chunks.aclose()
        self.metrics.deployment(info.model, info.version, request.protocol).answered(
            time.perf_counter() - started
        )
        generating = time.perf_counter() - opened
        self.tracer.record("inference", generating, {"modelhost.model": info.ref})
        if usage is not None:
            await self._charge(principal, info, usage, 1)
        if self.observers:
            result = {"text": "".join(pieces), "finish_reason": finish}
            self._emit(
                InferenceEvent.ended(
                    request,
                    info,
                    started,
                    results=[result],
                    usage=usage,
                    streamed=True,
                    timings={"inference": generating},
                )
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
