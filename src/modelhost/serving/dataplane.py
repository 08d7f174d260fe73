"""The one request path every transport goes through, in two phases around the model call.

``prepare`` (:meth:`DataPlane.prepare`): route (pin, production, canary) → breaker →
readiness, body size, item count, input and parameter validation → scope, limits, budget and
input guards → stored features → response cache lookup. Then the model runs (in its lane's
inference pool, under the version's timeout, through its batcher when it has one), or the
handler of a composite version answers (:mod:`modelhost.serving.handlers`). ``finish``
(:meth:`DataPlane.finish`): output guards → price → charge → breaker → metrics → the ended
event for observers (provenance, drift, usage) → response → cache store → shadow copies.

Sync calls (:meth:`DataPlane.infer`), many-request runs (:mod:`modelhost.serving.many`),
streams (:mod:`modelhost.serving.streaming`), cascades and features all go through these two
phases; a failure anywhere is counted once and answered by the version's fallbacks
(:meth:`DataPlane.recover`). Transports (REST v1, OpenAI, OIP v2, gRPC, the job worker) are
thin codecs that build an :class:`~modelhost.inference.InferenceRequest` and read an
:class:`~modelhost.inference.InferenceResponse`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from modelhost.errors import (
    ConfigError,
    InvalidInput,
    MissingDependencyError,
    PayloadTooLarge,
    ServiceError,
    VersionNotFound,
)
from modelhost.featurestore.online import OnlineFeatures, Served
from modelhost.inference import (
    InferenceEvent,
    InferenceObserver,
    InferenceRequest,
    InferenceResponse,
    Usage,
)
from modelhost.manifest import RuntimeKind
from modelhost.observability.metrics import Metrics
from modelhost.observability.tracing import Tracer
from modelhost.registry import VersionInfo
from modelhost.runtimes import Lane, Prediction, StreamChunk
from modelhost.security.access import AccessControl
from modelhost.security.keys import ANONYMOUS, Principal
from modelhost.security.ratelimit import price_of
from modelhost.serving.batching import AdaptiveBatcher, batching_enabled, observed_predict
from modelhost.serving.breaker import Breakers
from modelhost.serving.caching import CacheLookup, CacheState, ResponseCache
from modelhost.serving.fallback import fall_back
from modelhost.serving.handlers import Composed, Handler
from modelhost.serving.many import ManyRun
from modelhost.serving.models import Deployment, ModelManager
from modelhost.serving.pools import InferencePools
from modelhost.serving.router import Route, Router, ShadowSink, TenantPins
from modelhost.serving.streaming import generate_whole, open_stream
from modelhost.serving.validation import check_value

#: Span attributes of the guards steps (constants: nothing is built per request).
_INPUT_GUARDS = {"modelhost.guards": "input"}
_OUTPUT_GUARDS = {"modelhost.guards": "output"}
log = logging.getLogger("modelhost.serving")
#: What a call through the request path gives: a response, or an opened stream.
T = TypeVar("T")


@dataclass(slots=True)
class Admitted:
    """A request that passed :meth:`DataPlane.prepare`: what its model call and
    :meth:`DataPlane.finish` need."""

    request: InferenceRequest
    route: Route
    dep: Deployment
    parameters: dict[str, Any]
    """The manifest's defaults with the request's own, validated."""
    started: float
    """``perf_counter()`` when the data plane got the request."""
    handler: Handler | None = None
    """The handler of a composite version (None: the version's runtime answers)."""
    principal: Principal | None = None
    inputs: list[Any] = field(default_factory=list)
    """The rows the model gets: after input guards, with their stored features."""
    guards: dict[str, Any] = field(default_factory=dict)
    lookup: CacheLookup | None = None
    answered: InferenceResponse | None = None
    """The response cache's answer (a hit): nothing is left to run."""

    @property
    def info(self) -> VersionInfo:
        """The version that serves it."""
        return self.dep.info


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
        handlers: Iterable[Handler] = (),
        cache: ResponseCache | None = None,
        stored_features: OnlineFeatures | None = None,
        pins: TenantPins | None = None,
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
        self.router = Router(manager, pins)
        self.handlers: dict[RuntimeKind, Handler] = {h.kind: h for h in handlers}
        """The handlers of composite versions, by runtime kind; a composite version with
        none is refused as not servable."""
        self.cache = cache
        """Answers repeated requests (None: caching is off)."""
        self.stored_features = stored_features
        """Reads stored features for versions with a ``feature_store`` (None: off)."""
        self.shadow: ShadowSink | None = None
        """Runs shadow versions on copies of answered requests (see :meth:`attach`); None:
        shadows are not run."""
        self.pools = InferencePools(
            {Lane.PREDICT: threads, Lane.GENERATE: generate_threads, Lane.REMOTE: remote_threads}
        )
        """One thread pool per :class:`~modelhost.runtimes.Lane`: a call queues only behind
        calls of its own kind, so a cheap model never waits for a long generation."""

    def attach(
        self, *, shadow: ShadowSink | None = None, stored_features: OnlineFeatures | None = None
    ) -> None:
        """Hand over the collaborators that are built after the plane because they call it
        (the shadow runner runs shadow versions through it; the feature store's provenance
        observes it). Only the composition root calls this, once, before serving."""
        if shadow is not None:
            self.shadow = shadow
        if stored_features is not None:
            self.stored_features = stored_features

    # -- the sync path ---------------------------------------------------------------------

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Run one request through the whole path, recording its metrics."""
        started = time.perf_counter()
        try:
            admitted = await self.prepare(request, started)
            if admitted.answered is not None:
                return admitted.answered
            if admitted.handler is not None:
                return await self.compose(admitted)
            tick = time.perf_counter()
            prediction = await self.predict(admitted.dep, admitted.inputs, admitted.parameters)
            return await self.finish(admitted, prediction, time.perf_counter() - tick)
        except BaseException as exc:  # counted, then raised unchanged or answered by a fallback
            return await self.recover(request, exc, started, self.infer)

    # -- phase 1: prepare ------------------------------------------------------------------

    async def prepare(self, request: InferenceRequest, started: float | None = None) -> Admitted:
        """Everything before the model call: :meth:`accept`, then :meth:`screen`."""
        admitted = await self.accept(request, started)
        return await self.screen(admitted)

    async def accept(self, request: InferenceRequest, started: float | None = None) -> Admitted:
        """Route, breaker, readiness, limits and validation: what needs no I/O but routing.

        Raises:
            ModelhostError: the version cannot be routed to, its breaker is open, it is not
                ready, or the request breaks its limits or schemas.
        """
        route = await self.route(request)
        info = route.info
        self.breakers.admit(info)
        dep, parameters = self.admit(info, request)
        handler = self.handlers.get(info.manifest.runtime)
        return Admitted(
            request,
            route,
            dep,
            parameters,
            started if started is not None else time.perf_counter(),
            handler,
            principal=request.principal,
            inputs=request.inputs,
        )

    async def screen(self, admitted: Admitted, *, cache: bool = True) -> Admitted:
        """Scope, limits, budget and input guards; stored features; the cache lookup (a hit
        sets ``admitted.answered``). A composite version is screened only when its handler
        asks, and looked up by the handler's cache parameters."""
        request, info, handler = admitted.request, admitted.info, admitted.handler
        if handler is not None and not handler.screens:
            return admitted
        admitted.principal, admitted.inputs, admitted.guards = await self.secure(request, info)
        if handler is None:
            admitted.inputs = await self.enrich(request, info, admitted.inputs)
        keyed = admitted.parameters if handler is None else handler.cache_parameters(admitted)
        if not cache or keyed is None:
            return admitted
        admitted.lookup = await self.lookup(
            request, info, admitted.inputs, keyed, admitted.principal
        )
        if admitted.lookup is not None and admitted.lookup.results is not None:
            admitted.answered = await self.answer_cached(admitted)
        return admitted

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
        """Run ``fn`` in ``lane``'s inference pool under the version's timeout (see
        :meth:`InferencePools.run <modelhost.serving.pools.InferencePools.run>`).

        Raises:
            InferenceTimeout: it took longer than the timeout (the caller gets 504).
            QueueTimeout: no thread of the lane started it within the timeout.
        """
        return await self.pools.run(fn, info.ref, self.timeout(info), lane)

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

    async def answer_cached(self, admitted: Admitted) -> InferenceResponse:
        """The response of a cache hit: no runtime call and nothing charged but the request
        itself. The usage keeps the answer's token counts (as OpenAI's cached prompts do), at
        cost 0, and says what the hit saved."""
        await asyncio.sleep(0)  # a hit never waits on I/O: let other tasks run between hits
        request, served, lookup = admitted.request, admitted.info, admitted.lookup
        assert lookup is not None
        cached = lookup.usage or {}
        charged = Usage()
        if cached.get("cost") is not None:
            charged.cost, charged.currency = 0.0, cached.get("currency")
        await self.charge(admitted.principal, served, charged, len(request.inputs))
        usage = Usage(
            input_tokens=int(cached.get("input_tokens", 0)),
            output_tokens=int(cached.get("output_tokens", 0)),
            cost=charged.cost,
            currency=charged.currency,
            saved=float(cached["cost"]) if cached.get("cost") is not None else None,
        )
        self.count_answer(admitted)
        results = lookup.results or []
        if self.observers:
            decisions = request.noted(admitted.route, cache=f"{lookup.kind}:hit")
            self.emit(
                InferenceEvent.ended(
                    request,
                    served,
                    admitted.started,
                    results=results,
                    usage=usage,
                    decisions=decisions,
                )
            )
        return InferenceResponse.of(
            served, results, usage, cache=CacheState.HIT.value, decisions=request.decisions
        )

    # -- phase 2: finish -------------------------------------------------------------------

    async def finish(
        self,
        admitted: Admitted,
        prediction: Prediction,
        compute: float = 0.0,
        *,
        streamed: bool = False,
    ) -> InferenceResponse:
        """Everything after the model answered (``compute``: seconds of its runtime call):
        output guards, price, charge, breaker, metrics, the ended event, the response, the
        cache store and the shadow copies. A stream (``streamed``) was guarded and priced
        chunk by chunk, is not cached and is not shadowed."""
        request, served = admitted.request, admitted.info
        items = 1 if streamed else len(request.inputs)
        results = prediction.results
        if not streamed:
            results = self._guard_results(served, prediction, admitted.guards)
            self.price(served, prediction.usage, items, compute)
        await self.charge(admitted.principal, served, prediction.usage, items)
        self.breakers.succeeded(served)
        self.count_answer(admitted)
        if self.observers:
            self.emit(
                InferenceEvent.ended(
                    request,
                    served,
                    admitted.started,
                    results=results,
                    usage=prediction.usage,
                    streamed=streamed,
                    timings={"inference": compute},
                    decisions=request.noted(admitted.route),
                )
            )
        response = InferenceResponse.of(
            served, results, prediction.usage, guards=admitted.guards, decisions=request.decisions
        )
        await self.keep(admitted.lookup, response)
        if not streamed:
            self.offer_shadow(admitted, response.results, compute)
        return response

    async def compose(self, admitted: Admitted) -> InferenceResponse:
        """Answer a composite version by its handler, then finish it: breaker, metrics, the
        ended event (with the handler's decision and its own usage), response, cache."""
        handler, request, info = admitted.handler, admitted.request, admitted.info
        assert handler is not None
        composed: Composed = await handler.answer(self, admitted)
        key, decision = composed.decision
        self.breakers.succeeded(info)
        self.count_answer(admitted)
        self.emit(
            InferenceEvent.ended(
                request,
                info,
                admitted.started,
                results=composed.results,
                usage=composed.recorded,
                decisions=request.noted(admitted.route, **{key: decision}),
            )
        )
        response = InferenceResponse.of(
            info,
            composed.results,
            composed.usage,
            composed.prefix,
            guards=admitted.guards,
            decisions={key: decision},
        )
        await self.keep(admitted.lookup, response)
        return response

    def count_answer(self, admitted: Admitted) -> None:
        """Count an answered request in its version's metrics."""
        info = admitted.info
        self.metrics.deployment(info.model, info.version, admitted.request.protocol).answered(
            time.perf_counter() - admitted.started
        )

    async def keep(self, lookup: CacheLookup | None, response: InferenceResponse) -> None:
        """Say what the cache did on the response, and store a miss's answer."""
        if lookup is None or self.cache is None:
            return
        response.cache = lookup.state.value
        if lookup.key is not None:
            await self.cache.store(lookup, response.results, response.usage)

    def offer_shadow(self, admitted: Admitted, results: list[Any], seconds: float) -> None:
        """Hand an answered live request to the shadow runner when its route has shadows
        (a replay is not live traffic: it is never shadowed)."""
        route, request = admitted.route, admitted.request
        if route.shadows and self.shadow is not None and request.live:
            self.shadow.offer(
                route, request, admitted.inputs, admitted.parameters, results, seconds
            )

    # -- failures --------------------------------------------------------------------------

    async def recover(
        self,
        request: InferenceRequest,
        exc: BaseException,
        started: float | None,
        again: Callable[[InferenceRequest], Awaitable[T]],
        *,
        judged: bool = False,
    ) -> T:
        """Count a failed request once; answer it by the version's fallbacks (each a child
        request through ``again``) when the failure is the model's.

        Args:
            judged: the breaker was already told (a merged call that failed for all its
                members counts once).

        Raises:
            BaseException: ``exc`` when no fallback applies or every one was unavailable.
        """
        info = request.route.info if request.route is not None else None
        self.failed(request, info, exc, started)
        if info is None or not isinstance(exc, Exception):
            raise exc
        if not judged:
            self.breakers.failed(info, exc)
        return await fall_back(again, request, info, exc)

    # -- other shapes of the path ----------------------------------------------------------

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

    async def stream(
        self, request: InferenceRequest
    ) -> tuple[VersionInfo, AsyncIterator[StreamChunk]]:
        """Validate now, then stream the first input's generation chunk by chunk (see
        :mod:`modelhost.serving.streaming`).

        Errors found before generation starts are raised here, so a transport can still answer
        with a status code; the iterator is consumed by the transport.
        """
        opened = await open_stream(self, request)
        return opened.info, aiter(opened)

    # -- the steps -------------------------------------------------------------------------

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
        """Count a failed request in the metrics; tell observers when it had started."""
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

    def close(self) -> None:
        """Stop the inference pools."""
        self.pools.close()
