"""The composition root: ``create_app(settings)`` builds every object and owns the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from modelhost import __version__
from modelhost.accounting.feedback import FeedbackStore
from modelhost.accounting.usage import UsageComponent, build_usage
from modelhost.api import batch as batch_api
from modelhost.api import deployments as deployments_api
from modelhost.api import drift as drift_api
from modelhost.api import errors as api_errors
from modelhost.api import features as features_api
from modelhost.api import featurestore as featurestore_api
from modelhost.api import feedback as feedback_api
from modelhost.api import health, v1
from modelhost.api import jobs as jobs_api
from modelhost.api import keys as keys_api
from modelhost.api import metrics as metrics_api
from modelhost.api import openai as openai_api
from modelhost.api import openapi as openapi_doc
from modelhost.api import provenance as provenance_api
from modelhost.api import usage as usage_api
from modelhost.api import v2 as v2_api
from modelhost.api import webhooks as webhooks_api
from modelhost.api.auth import AuthMiddleware
from modelhost.api.middleware import RequestIdMiddleware
from modelhost.cache.response import build_response_cache
from modelhost.components import Component
from modelhost.config import Settings
from modelhost.drift.monitor import DriftMonitor, build_drift
from modelhost.errors import ConfigError, Conflict, MissingDependencyError
from modelhost.features.component import FeaturesComponent, build_features
from modelhost.featurestore.component import FeatureStoreComponent, build_feature_store
from modelhost.jobs import Backoff, QueueBackend, SqlQueue, Worker
from modelhost.jobs.events import MemoryBus, RedisBus, TokenBus
from modelhost.jobs.webhooks import build_deliverer
from modelhost.jobs.worker import WorkerOptions
from modelhost.memory import build_memory
from modelhost.observability.metrics import Metrics
from modelhost.observability.tracing import Tracer, build_tracer
from modelhost.provenance import ProvenanceComponent, build_provenance
from modelhost.registry import Registry, build_registry
from modelhost.rollouts.monitor import build_rollouts
from modelhost.rollouts.promotion import Promoter
from modelhost.rollouts.shadow import ShadowRunner, build_shadow
from modelhost.rollouts.store import RolloutStatsStore, ShadowStore
from modelhost.runtimes import Runtime
from modelhost.security.access import AccessControl
from modelhost.security.auth import Authenticator, JwtOptions
from modelhost.security.injection import InjectionDetector, embedder_from_runtime
from modelhost.security.keys import KeyStore, NewKey, Scope
from modelhost.security.ratelimit import LimitDefaults, RateLimiter
from modelhost.serving.breaker import Breakers
from modelhost.serving.cascade import CascadeHandler
from modelhost.serving.dataplane import DataPlane
from modelhost.serving.models import ModelManager
from modelhost.webhooks.egress import Egress, build_egress
from modelhost.webhooks.signing import webhook_master_secret

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("modelhost")


@dataclass(slots=True)
class Services:
    """Every long-lived object of one server process."""

    settings: Settings
    registry: Registry
    manager: ModelManager
    plane: DataPlane
    metrics: Metrics
    keys: KeyStore
    authenticator: Authenticator
    access: AccessControl
    jobs: QueueBackend
    worker: Worker
    bus: TokenBus
    promoter: Promoter
    feedback: FeedbackStore
    egress: Egress
    """Every request to a user-named URL (job callbacks, alerts) goes through this one."""
    provenance: ProvenanceComponent
    """The record of every inference, and replays."""
    features: FeaturesComponent
    """Tenant pins and overrides of features, conversation sessions."""
    drift: DriftMonitor
    usage: UsageComponent | None
    """None when usage accounting is switched off."""
    feature_store: FeatureStoreComponent
    shadow: ShadowRunner
    """Runs shadow versions on copies of answered requests (the plane's shadow sink)."""
    components: list[Component] = field(default_factory=list)
    """Every subsystem with observers or background work (the ones above, rollouts, shadows):
    gathered by :func:`build_components` once the rest exists."""


class DetectorProvider:
    """The injection detector: with embeddings while the configured embedding model's
    production version is loaded, heuristics only otherwise. A version unloaded and loaded
    again (a new runtime) gets a new detector; the old runtime is never called."""

    def __init__(self, manager: ModelManager, model: str | None) -> None:
        self._manager = manager
        self._model = model
        self._heuristics = InjectionDetector()
        self._full: tuple[Runtime, InjectionDetector] | None = None

    def _runtime(self) -> Runtime | None:
        return self._manager.production_runtime(self._model) if self._model else None

    def __call__(self) -> InjectionDetector:
        runtime = self._runtime()
        if runtime is None:
            return self._heuristics
        if self._full is None or self._full[0] is not runtime:
            self._full = (runtime, InjectionDetector(embedder_from_runtime(runtime)))
        return self._full[1]


def build_security(
    settings: Settings, registry: Registry, manager: ModelManager
) -> tuple[KeyStore, Authenticator, AccessControl]:
    """Keys, authentication and the data plane's access control."""
    keys = KeyStore(registry.engine)
    auth = settings.auth
    jwt = JwtOptions(
        secret=auth.jwt_secret,
        jwks_file=auth.jwks_file,
        audience=auth.jwt_audience,
        issuer=auth.jwt_issuer,
        tenant_claim=auth.tenant_claim,
        scope_claim=auth.scope_claim,
    )
    authenticator = Authenticator(keys, enabled=auth.enabled, jwt=jwt)
    limits = settings.limits
    limiter = RateLimiter(
        settings.redis_url or "memory://",
        LimitDefaults(
            rpm=limits.requests_per_minute,
            tpm=limits.tokens_per_minute,
            budget=limits.budget,
            budget_period=limits.budget_period,
        ),
    )
    detector = DetectorProvider(manager, settings.guards.injection_embedding_model)
    return keys, authenticator, AccessControl(limiter, detector)


def build_queue(settings: Settings, registry: Registry) -> QueueBackend:
    """The job queue: records in the registry's database, dispatched by SQL or Redis Streams.

    Raises:
        ConfigError: the Redis backend without ``redis_url``.
        MissingDependencyError: the Redis backend without the ``redis`` extra.
    """
    if settings.jobs.backend == "redis":
        if not settings.redis_url:
            raise ConfigError(
                "MODELHOST_JOBS__BACKEND=redis needs MODELHOST_REDIS_URL (e.g. redis://host:6379/0)"
            )
        from modelhost.jobs.redis import RedisQueue

        return RedisQueue(registry.engine, settings.redis_url, prefix=settings.jobs.redis_prefix)
    return SqlQueue(registry.engine)


def build_jobs(
    settings: Settings, registry: Registry, plane: DataPlane, egress: Egress
) -> tuple[QueueBackend, Worker, TokenBus]:
    """The job queue, this process's worker (started once the server is ready, stopped by the
    lifespan) with its webhook deliverer, and the bus live tokens travel on (Redis pub/sub when
    ``redis_url`` is set, so any process can follow any job; this process only otherwise)."""
    queue = build_queue(settings, registry)
    js = settings.jobs
    options = WorkerOptions(
        concurrency=js.workers,
        claim_batch=js.claim_batch,
        visibility_timeout=js.visibility_timeout_s,
        poll_interval=js.poll_interval_s,
        retention=js.retention_s,
        drain_timeout=js.drain_timeout_s,
        backoff=Backoff(base=js.retry_base_s, cap=js.retry_max_s),
    )
    bus: TokenBus = (
        RedisBus(settings.redis_url, prefix=f"{js.redis_prefix}:live")
        if settings.redis_url
        else MemoryBus()
    )
    sidecars = (build_deliverer(settings, queue, egress),)
    return queue, Worker(queue, plane, options, bus=bus, sidecars=sidecars), bus


def build_services(settings: Settings, *, tracer: Tracer | None = None) -> Services:
    """Build the object graph (nothing is loaded yet); ``tracer`` replaces the one
    ``settings.tracing`` describes (tests pass one with an in-memory exporter)."""
    registry = build_registry(settings)
    threads = settings.inference.threads
    manager = ModelManager(
        registry,
        threads=threads,
        keep_warm=settings.rollouts.keep_warm,
        drain_timeout_s=settings.rollouts.drain_timeout_s,
    )
    metrics = Metrics()
    metrics.watch_model_versions(manager.state_counts)
    metrics.watch_model_states(
        lambda: ((d.info.model, d.info.version, d.state.value) for d in manager.deployments())
    )
    keys, authenticator, access = build_security(settings, registry, manager)
    features = build_features(registry.engine, settings.inference.refresh_interval_s)
    plane = DataPlane(
        manager,
        threads=threads,
        generate_threads=settings.inference.generate_threads,
        remote_threads=settings.inference.remote_threads,
        default_timeout_s=settings.inference.default_timeout_s,
        default_max_request_bytes=settings.inference.default_max_request_bytes,
        metrics=metrics,
        access=access,
        observers=[metrics.observer()],
        tracer=tracer if tracer is not None else build_tracer(settings.tracing),
        breakers=Breakers(settings.breaker, metrics),
        handlers=(CascadeHandler(), features.runner),
        cache=build_response_cache(settings, manager),
        pins=features.controls,
    )
    egress = build_egress(settings, plane.tracer, metrics)
    jobs, worker, bus = build_jobs(settings, registry, plane, egress)
    metrics.watch_jobs(jobs.depth)
    provenance = build_provenance(settings.provenance, registry.engine, plane, metrics.registry)
    feature_store = build_feature_store(settings, manager, metrics, egress, provenance)
    shadow = build_shadow(plane, registry.engine, settings.rollouts)
    plane.attach(shadow=shadow, stored_features=feature_store.online)
    services = Services(
        settings=settings,
        registry=registry,
        manager=manager,
        plane=plane,
        metrics=metrics,
        keys=keys,
        authenticator=authenticator,
        access=access,
        jobs=jobs,
        worker=worker,
        bus=bus,
        promoter=Promoter(registry, plane),
        feedback=FeedbackStore(registry.engine),
        egress=egress,
        provenance=provenance,
        features=features,
        drift=build_drift(settings, registry, manager, metrics, egress),
        usage=build_usage(settings.usage, registry.engine),
        feature_store=feature_store,
        shadow=shadow,
    )
    build_components(services)
    return services


def build_components(services: Services) -> None:
    """Gather the subsystems that hang off the data plane (building those that need the
    services) and hand the plane their observers."""
    usage = [services.usage] if services.usage is not None else []
    services.components = [
        services.features,
        services.provenance,
        services.drift,
        *usage,
        services.feature_store,
        build_rollouts(
            services.settings,
            services.registry,
            feedback=services.feedback,
            promoter=services.promoter,
            metrics=services.metrics,
            egress=services.egress,
        ),
        services.shadow,
        build_memory(services.settings),
    ]
    for component in services.components:
        services.plane.observers.extend(component.observers())


async def start_components(services: Services) -> None:
    """Start every component's background work."""
    for component in services.components:
        await component.start()


async def stop_components(services: Services) -> None:
    """Stop every component (each flushes what it buffered); one failing does not stop the
    others."""
    for component in services.components:
        try:
            await component.stop()
        except Exception:  # shutting down: log and go on with the rest
            log.exception("stopping %r failed", component)


def bootstrap_admin_key(services: Services) -> str | None:
    """On first start with auth on, create an admin key and print it once (only its hash is
    stored). Returns the key, or None when keys exist already or auth is off."""
    if not services.settings.auth.enabled or services.keys.count() > 0:
        return None
    admin = NewKey(
        tenant="system",
        principal="admin",
        scopes=[Scope.ADMIN.value],
        description="created on first start",
    )
    try:
        # a fixed id: of several workers starting at once, one creates it, the others stop here
        secret, info = services.keys.create(
            admin, actor="modelhost", source="first-start", key_id="admin0"
        )
    except Conflict:
        return None
    banner = (
        "\n" + "=" * 78 + "\n"
        f"  modelhost created an admin API key (id {info.id}); it is shown only this once:\n\n"
        f"      {secret}\n\n"
        "  Use it as 'Authorization: Bearer <key>' (openai SDK: api_key=...), and make\n"
        "  narrower keys with `modelhost keys create`.\n" + "=" * 78
    )
    print(banner, flush=True)
    return secret


async def _start(services: Services, readiness: health.Readiness) -> None:
    settings = services.settings
    try:
        await asyncio.to_thread(bootstrap_admin_key, services)
        if not settings.auth.enabled:
            log.warning("AUTHENTICATION IS OFF (--no-auth): every caller is an administrator")
        if settings.demo.enabled:
            from modelhost.demo import ensure_demo

            await asyncio.to_thread(ensure_demo, services.registry, settings)
        await services.manager.refresh(load=settings.inference.load_on_start)
        await services.manager.wait_loaded()
    except Exception as exc:  # start-up must not kill the server; /readyz reports it
        log.exception("start-up failed")
        readiness.error = repr(exc)
    readiness.ready = True
    await start_components(services)
    # after the first registry refresh, so a job never runs against a registry not read yet
    services.worker.start()
    log.info("modelhost ready")


async def _refresh_forever(services: Services) -> None:
    interval = services.settings.inference.refresh_interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            await services.manager.refresh(load=services.settings.inference.load_on_start)
        except Exception:  # a database hiccup must not stop refreshing; it is logged
            log.exception("registry refresh failed")


async def _start_grpc(services: Services, readiness: health.Readiness) -> grpc.aio.Server | None:
    """Start the OIP v2 gRPC service in this event loop, unless it is off or not installed."""
    server = services.settings.server
    if not server.grpc_port:
        return None
    try:
        from modelhost.grpc.server import start_server
    except MissingDependencyError as exc:
        log.warning("gRPC is off: %s", exc.message)
        return None
    return await start_server(
        services.plane,
        readiness,
        host=server.host,
        port=server.grpc_port,
        reuse_port=server.workers > 1,
        authenticator=services.authenticator if services.settings.auth.enabled else None,
    )


async def close_services(services: Services) -> None:
    """Release what :func:`build_services` opened (the worker is stopped already)."""
    await services.manager.close()
    await services.access.limiter.close()
    await services.bus.close()
    if services.plane.cache is not None:
        await services.plane.cache.close()
    services.jobs.close()
    services.plane.close()
    services.plane.tracer.shutdown()


async def run_worker(settings: Settings) -> None:
    """``modelhost worker``: run jobs (no HTTP) until SIGTERM or SIGINT, then finish the
    running ones (up to ``jobs.drain_timeout_s``) and stop taking new ones."""
    services = build_services(settings)
    if settings.jobs.workers < 1:
        raise ConfigError("modelhost worker needs MODELHOST_JOBS__WORKERS of at least 1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await services.manager.refresh(load=settings.inference.load_on_start)
    await services.manager.wait_loaded()
    refresher = asyncio.create_task(_refresh_forever(services))
    await start_components(services)
    services.worker.start()
    log.info("modelhost worker %s ready (%s queue)", services.worker.name, settings.jobs.backend)
    try:
        await stop.wait()
        log.info("stopping: finishing running jobs, taking no new ones")
    finally:
        await services.worker.stop()
        await stop_components(services)
        refresher.cancel()
        await asyncio.gather(refresher, return_exceptions=True)
        await close_services(services)
    log.info("modelhost worker stopped")


def _live_stats(store: RolloutStatsStore) -> deployments_api.LiveStats:
    """The status's live numbers of one version: every replica's, from the guards' table."""

    def window(model: str, version: str, since: datetime) -> dict[str, Any]:
        return store.window(model, version, since).as_dict()

    return window


def _shadow_reports(store: ShadowStore) -> deployments_api.ShadowReports:
    """The status's shadow reports of one model: every replica's."""

    def reports(model: str, since: datetime) -> list[dict[str, Any]]:
        return [report.as_dict() for report in store.report(model, since.timestamp())]

    return reports


def include_subsystem_routers(app: FastAPI, services: Services) -> None:
    """Mount the routes over the subsystems' objects: provenance, drift, usage (when it is
    on), feedback (joined through provenance) and the feature store."""
    provenance = services.provenance
    app.include_router(
        provenance_api.build_router(
            provenance.store, provenance.replayer, flush_interval_s=provenance.flush_interval_s
        )
    )
    app.include_router(drift_api.build_router(services.drift))
    if services.usage is not None:
        app.include_router(usage_api.build_router(services.usage))
    app.include_router(
        feedback_api.build_router(
            services.feedback,
            provenance.store,
            provenance.recorder,
            flush_interval_s=provenance.flush_interval_s,
        )
    )
    app.include_router(featurestore_api.build_router(services.feature_store))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI application and everything it serves."""
    settings = settings or Settings()
    services = build_services(settings)
    readiness = health.Readiness()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        grpc_server = await _start_grpc(services, readiness)
        start = asyncio.create_task(_start(services, readiness))
        refresher = asyncio.create_task(_refresh_forever(services))
        try:
            yield
        finally:
            await services.worker.stop()
            await stop_components(services)
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            for task in (start, refresher):
                task.cancel()
            await asyncio.gather(start, refresher, return_exceptions=True)
            await close_services(services)

    app = FastAPI(
        title="modelhost",
        version=__version__,
        description="Models as a service: registry, REST v1, OpenAI-compatible and OIP v2 APIs.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.readiness = readiness
    api_errors.install(app)
    app.include_router(health.build_router(services.manager, readiness))
    submitter = jobs_api.Submitter(
        services.jobs,
        services.worker,
        services.egress.policy,
        settings.jobs.max_attempts,
    )
    app.include_router(v1.build_router(services.plane, services.keys.audit, submitter.submit))
    app.include_router(metrics_api.build_router(services.metrics))
    app.include_router(openai_api.build_router(services.plane))
    app.include_router(v2_api.build_router(services.plane, readiness))
    app.include_router(keys_api.build_router(services.keys))
    app.include_router(
        jobs_api.build_router(
            submitter,
            jobs_api.EventStream(services.jobs, services.bus),
            max_body=settings.inference.default_max_request_bytes,
        )
    )
    app.include_router(batch_api.build_router(services.jobs, services.worker, settings.jobs))
    app.include_router(
        deployments_api.build_router(
            services.registry,
            services.promoter,
            audit=services.keys.audit,
            live_stats=_live_stats(RolloutStatsStore(services.registry.engine)),
            shadow_reports=_shadow_reports(
                ShadowStore(services.registry.engine, examples=settings.rollouts.shadow_examples)
            ),
            feedback=services.feedback.summary,
        )
    )
    app.include_router(webhooks_api.build_router(webhook_master_secret(settings)))
    app.include_router(
        features_api.build_router(
            services.plane, services.registry, services.features, submitter.submit
        )
    )
    include_subsystem_routers(app, services)
    openapi_doc.install(app)
    app.add_middleware(AuthMiddleware, authenticator=services.authenticator)
    app.add_middleware(RequestIdMiddleware, tracer=services.plane.tracer)
    return app
