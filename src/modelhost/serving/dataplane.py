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
import threading
import time
from asyncio import Future
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from modelhost.errors import (
    ConfigError,
    InferenceTimeout,
    InvalidInput,
    MissingDependencyError,
    PayloadTooLarge,
    QueueTimeout,
    ServiceError,
    VersionNotFound,
)
from modelhost.features.runner import FeatureRunner
from modelhost.featurestore.online import OnlineFeatures, Served
from modelhost.manifest import RuntimeKind
from modelhost.monitoring.metrics import ANY_PROTOCOL, Metrics
from modelhost.monitoring.tracing import Tracer
from modelhost.registry import VersionInfo
from modelhost.runtimes import Lane, Prediction, StreamChunk, Usage
from modelhost.security.access import AccessControl
from modelhost.security.keys import ANONYMOUS, Principal
from modelhost.security.ratelimit import price_of
from modelhost.serving.batching import (
    AdaptiveBatcher,
    batching_enabled,
    observed_predict,
    settle,
)
from modelhost.serving.breaker import Breakers
from modelhost.serving.caching import CacheLookup, CacheState, ResponseCache
from modelhost.serving.cascade import run_cascade
from modelhost.serving.fallback import fall_back
from modelhost.serving.many import ManyRun
from modelhost.serving.models import Deployment, ModelManager
from modelhost.serving.observers import InferenceEvent, InferenceObserver
from modelhost.serving.router import Route, Router, ShadowSink
from modelhost.serving.streaming import generate_whole, open_stream
from modelhost.serving.validation import check_value

#: Span attributes of the guards steps (constants: nothing is built per request).
_INPUT_GUARDS = {"modelhost.guards": "input"}
_OUTPUT_GUARDS = {"modelhost.guards": "output"}
log = logging.getLogger("modelhost.serving")
#: Protocols of requests that are not live traffic (replays, promotion gates' runs).
NOT_LIVE = frozenset({"replay", "gate"})


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
    stored: Served | None = None
    """The stored features its rows got (models with a ``feature_store``): kept with the
    provenance record, watched by drift; set before the data plane runs by a replay, which
    reuses the values served then instead of reading the store again."""

    def noted(self, route: Route | None = None, **more: Any) -> dict[str, Any]:
        """The decisions kept with its provenance record: the request's own, ``route``,
        ``feature_store`` (the served feature values) and ``more``."""
        found = {**self.decisions, **more}
        if route is not None:
            found["route"] = route.decision()
        if self.stored is not None:
            found["feature_store"] = self.stored.record()
        return found

    @property
    def live(self) -> bool:
        """False for a replay or a promotion gate's run: not live traffic, never counted in
        usage, drift or rollout statistics, never answered from the cache."""
        return self.replay_of is None and self.protocol not in NOT_LIVE

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


class _Call:
    """One call handed to an inference pool: started by a worker thread, or expired first.

    The worker thread and the loop's timer each flip their flag under one lock, so exactly one
    of them wins: a call either runs (and a timeout is the model's) or is never run (and the
    timeout is the queue's). Asyncio futures are not thread-safe, so the worker never asks the
    loop's future whether it is done."""

    __slots__ = ("_lock", "expired", "started")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = False
        self.expired = False

    def begin(self) -> bool:
        """Worker side: mark the call started; False when its caller already gave up."""
        with self._lock:
            if self.expired:
                return False
            self.started = True
            return True

    def expire(self) -> bool:
        """Timer side: mark the call expired; True when a worker had already started it."""
        with self._lock:
            self.expired = True
            return self.started


def _work(
    fn: Callable[[], Any], loop: asyncio.AbstractEventLoop, future: Future[Any], call: _Call
) -> None:
    """Inference-thread side of :meth:`DataPlane.run`: call ``fn``, hand the outcome back.

    A call whose caller already timed out while it waited in the queue is skipped: nobody
    waits for it, and running it would only make the queue behind it longer."""
    if not call.begin():
        return
    outcome: Any
    try:
        outcome = fn()
    except BaseException as exc:  # handed to the awaiting caller, raised there
        outcome = exc
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
        loop.call_soon_threadsafe(settle, future, outcome)


def _expire(future: Future[Any], ref: str, timeout: float, call: _Call) -> None:
    """Timer callback of :meth:`DataPlane.run`: fail the caller with a timeout, a
    :class:`QueueTimeout` when no worker thread had started the call yet."""
    if future.done():
        return
    if call.expire():
        future.set_exception(InferenceTimeout(f"{ref} did not answer within {timeout:.3g}s"))
        return
    future.set_exception(
        QueueTimeout(
            f"{ref} did not start within {timeout:.3g}s: the server is busy with other "
            "inference; retry later"
        )
    )


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
        generate_threads: int = 2,
        remote_threads: int = 16,
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
        self.features = FeatureRunner()
        """Runs feature versions (the features component gives it tenant controls and
        conversation sessions)."""
        self.cache: ResponseCache | None = None
        """Answers repeated requests (set by the composition root when caching is on)."""
        self.stored_features: OnlineFeatures | None = None
        """Reads stored features for versions with a ``feature_store`` (set by the
        composition root)."""
        self.shadow: ShadowSink | None = None
        """Runs shadow versions on copies of answered requests (set by the rollouts
        component); None: shadows named by a deployment are not run."""
        self.pools = {
            lane: ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"modelhost-{lane}")
            for lane, size in (
                (Lane.PREDICT, threads),
                (Lane.GENERATE, generate_threads),
                (Lane.REMOTE, remote_threads),
            )
        }
        """One thread pool per :class:`~modelhost.runtimes.Lane`: a call queues only behind
        calls of its own kind, so a cheap model never waits for a long generation."""

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

    async def run(self, fn: Callable[[], Any], info: VersionInfo, lane: Lane = Lane.PREDICT) -> Any:
        """Run ``fn`` in ``lane``'s inference pool under the version's timeout.

        One loop future settled from the worker thread and one timer: cheaper than
        ``run_in_executor`` + ``wait_for`` (two chained futures, a waiter and a timer), which
        matters when the model itself answers in a fraction of a millisecond. On timeout the
        caller gets its error at once; the worker thread finishes the call and its result is
        dropped (as with ``wait_for``).

        Raises:
            InferenceTimeout: it took longer than the timeout (the caller gets 504).
            QueueTimeout: no thread of the lane started it within the timeout.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        call = _Call()
        self.pools[lane].submit(_work, fn, loop, future, call)
        timeout = self.timeout(info)
        timer = loop.call_later(timeout, _expire, future, info.ref, timeout, call)
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
            if info.manifest.runtime is RuntimeKind.FEATURE:
                return await self.features.run(self, request, info, dep, started)
            principal, inputs, guards = await self.secure(request, info)
            inputs = await self.enrich(request, info, inputs)
            lookup = await self.lookup(request, info, inputs, parameters, principal)
            if lookup is not None and lookup.results is not None:
                return await self.answer_cached(request, dep, lookup, principal, started, route)
            tick = time.perf_counter()
            prediction = await self.predict(dep, inputs, parameters)
            compute = time.perf_counter() - tick
            self.breakers.succeeded(info)
            response = await self.respond(
                request, dep, prediction, principal, guards, started, compute, route
            )
            await self.keep(lookup, response)
        except BaseException as exc:  # counted, then raised unchanged or answered by a fallback
            self.failed(request, info, exc, started)
            if info is None or not isinstance(exc, Exception):
                raise
            self.breakers.failed(info, exc)
            return await fall_back(self.infer, request, info, exc)
        self.offer_shadow(route, request, inputs, parameters, response.results, compute)
        return response

    async def lookup(
        self,
        request: InferenceRequest,
        info: VersionInfo,
        inputs: list[Any],
        parameters: dict[str, Any],
        principal: Principal | None,
    ) -> CacheLookup | None:
        """Ask the response cache (None: there is none, or the request is a replay, which
        must run the model to be a replay)."""
        if self.cache is None or not request.live:
            return None
        tenant = (principal or request.principal or ANONYMOUS).tenant
        lookup = await self.cache.lookup(info, tenant, inputs, parameters, bypass=request.no_cache)
        self.metrics.cache_requests.labels(
            info.model, info.version, lookup.kind, lookup.state.value
        ).inc()
        return lookup

    async def keep(self, lookup: CacheLookup | None, response: InferenceResponse) -> None:
        """Say what the cache did on the response, and store a miss's answer."""
        if lookup is None or self.cache is None:
            return
        response.cache = lookup.state.value
        if lookup.key is not None:
            await self.cache.store(lookup, response.results, response.usage)

    async def answer_cached(
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
        await self.charge(principal, served, charged, len(request.inputs))
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
            decisions = request.noted(route, cache=f"{lookup.kind}:hit")
            self.emit(
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

    def offer_shadow(
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
        if route.shadows and self.shadow is not None and request.live:
            self.shadow.offer(route, request, inputs, parameters, results, seconds)

    async def respond(
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
        self.price(served, prediction.usage, len(request.inputs), compute)
        await self.charge(principal, served, prediction.usage, len(request.inputs))
        self.metrics.deployment(served.model, served.version, request.protocol).answered(
            time.perf_counter() - started
        )
        if self.observers:
            self.emit(
                InferenceEvent.ended(
                    request,
                    served,
                    started,
                    results=results,
                    usage=prediction.usage,
                    timings={"inference": compute},
                    decisions=request.noted(route),
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
        """Run several requests, each checked on its own, with one runtime call per model
        version and parameters (see :mod:`modelhost.serving.many`), in one ``jobs`` span.

        Returns:
            One outcome per request, in order: its response or its exception.
        """
        with self.tracer.span("jobs", {"modelhost.jobs": len(requests)}):
            return await ManyRun(self, requests, on_chunk).run()

    async def generate(
        self, request: InferenceRequest, on_chunk: Callable[[StreamChunk], Awaitable[None]]
    ) -> InferenceResponse:
        """Stream one request's generation to ``on_chunk`` and return the whole answer, shaped
        as :meth:`infer` returns it."""
        return await generate_whole(self, request, on_chunk)

    async def enrich(
        self, request: InferenceRequest, info: VersionInfo, inputs: list[Any]
    ) -> list[Any]:
        """The rows the model gets: for a version with a ``feature_store``, the request rows
        with their stored features (one online read for the whole batch, in the pool; see
        :mod:`modelhost.featurestore.online`); the inputs unchanged otherwise.

        Raises:
            FeaturesUnavailable: a row's entity has no fresh features and the policy refuses.
            ServiceError: the online store cannot be read, or Feast is not installed.
        """
        if info.manifest.feature_store is None:
            return inputs
        if request.stored is not None:  # a replay: the values served then
            rows = [{**v, **r} for v, r in zip(request.stored.values, inputs, strict=False)]
            request.stored.rows = rows
            return rows
        online = self.stored_features
        if online is None:
            raise ServiceError(f"{info.ref} reads stored features, which are off here")
        with self.tracer.span("features", {"modelhost.rows": len(inputs)}):
            try:
                if not online.ready(info):  # Feast imports and opens the store: seconds
                    await asyncio.to_thread(online.selection, info)
                served: Served = await self.run(lambda: online.fetch(info, inputs), info)
            except (MissingDependencyError, ConfigError) as exc:
                raise ServiceError(f"{info.ref} reads stored features: {exc}") from None
        request.stored = served
        return served.rows

    async def secure(
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
    def price(info: VersionInfo, usage: Usage, items: int, seconds: float) -> None:
        """Put the call's cost under the version's pricing into its usage (``usage.cost``)."""
        pricing = info.manifest.pricing
        if pricing is not None:
            usage.cost = round(price_of(pricing, usage, items, seconds), 12)
            usage.currency = pricing.currency

    async def charge(
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
            lane = dep.runtime.lane if dep.runtime is not None else Lane.PREDICT
            return await self.run(fn, dep.info, lane)

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

    def failed(
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
            self.emit(InferenceEvent.ended(request, info, started, error=exc))

    def emit(self, event: InferenceEvent) -> None:
        """Hand an ended inference to every observer; an observer's failure is only logged."""
        for observer in self.observers:
            try:
                observer.observe(event)
            except Exception:  # an observer must never fail the request it watches
                log.exception("inference observer %r failed", observer)

    async def stream(
        self, request: InferenceRequest
    ) -> tuple[VersionInfo, AsyncIterator[StreamChunk]]:
        """Validate now, then stream the first input's generation chunk by chunk (see
        :mod:`modelhost.serving.streaming`).

        Errors found before generation starts are raised here, so a transport can still answer
        with a status code; the iterator is consumed by the transport.
        """
        return await open_stream(self, request)

    def close(self) -> None:
        """Stop the inference pools."""
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
