"""The composition root: ``create_app(settings)`` builds every object and owns the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI

from modelhost import __version__
from modelhost.api import errors as api_errors
from modelhost.api import health, v1
from modelhost.api import jobs as jobs_api
from modelhost.api import keys as keys_api
from modelhost.api import metrics as metrics_api
from modelhost.api import openai as openai_api
from modelhost.api import v2 as v2_api
from modelhost.api.auth import AuthMiddleware
from modelhost.api.middleware import RequestIdMiddleware
from modelhost.config import Settings
from modelhost.errors import Conflict, MissingDependencyError
from modelhost.jobs import Backoff, SqlQueue, Worker
from modelhost.jobs.worker import WorkerOptions
from modelhost.monitoring.metrics import Metrics
from modelhost.registry import ArtifactStore, Registry, make_engine
from modelhost.security.access import AccessControl
from modelhost.security.auth import Authenticator, JwtOptions
from modelhost.security.injection import InjectionDetector, embedder_from_runtime
from modelhost.security.keys import KeyStore, NewKey, Scope
from modelhost.security.ratelimit import LimitDefaults, RateLimiter
from modelhost.serving.dataplane import DataPlane
from modelhost.serving.models import ModelManager, ModelState

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
    jobs: SqlQueue
    worker: Worker


def build_registry(settings: Settings) -> Registry:
    """The registry over the configured database and the artifact store under ``home``."""
    settings.home.mkdir(parents=True, exist_ok=True)
    return Registry(
        make_engine(settings.resolved_database_url), ArtifactStore(settings.artifact_dir)
    )


class DetectorProvider:
    """The injection detector: with embeddings once the configured embedding model's
    production version is loaded, heuristics only until then."""

    def __init__(self, manager: ModelManager, model: str | None) -> None:
        self._manager = manager
        self._model = model
        self._heuristics = InjectionDetector()
        self._full: InjectionDetector | None = None

    def __call__(self) -> InjectionDetector:
        if self._full is not None:
            return self._full
        for info in self._manager.models():
            if info.name != self._model:
                continue
            for version in info.versions:
                dep = self._manager.deployment(version.ref)
                if (
                    version.stage.value == "production"
                    and dep is not None
                    and dep.runtime
                    and dep.state is ModelState.READY
                ):
                    self._full = InjectionDetector(embedder_from_runtime(dep.runtime))
                    return self._full
        return self._heuristics


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


def build_jobs(settings: Settings, registry: Registry, plane: DataPlane) -> tuple[SqlQueue, Worker]:
    """The job queue in the registry's database and this process's worker (started once the
    server is ready, stopped by the lifespan)."""
    queue = SqlQueue(registry.engine)
    js = settings.jobs
    options = WorkerOptions(
        concurrency=js.workers,
        visibility_timeout=js.visibility_timeout_s,
        poll_interval=js.poll_interval_s,
        retention=js.retention_s,
        backoff=Backoff(base=js.retry_base_s, cap=js.retry_max_s),
    )
    return queue, Worker(queue, plane, options)


def build_services(settings: Settings) -> Services:
    """Build the object graph (nothing is loaded yet)."""
    registry = build_registry(settings)
    threads = settings.inference.threads
    manager = ModelManager(registry, threads=threads)
    metrics = Metrics()
    metrics.watch_model_versions(manager.state_counts)
    keys, authenticator, access = build_security(settings, registry, manager)
    plane = DataPlane(
        manager,
        threads=threads,
        default_timeout_s=settings.inference.default_timeout_s,
        default_max_request_bytes=settings.inference.default_max_request_bytes,
        metrics=metrics,
        access=access,
    )
    jobs, worker = build_jobs(settings, registry, plane)
    return Services(
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
    )


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
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            for task in (start, refresher):
                task.cancel()
            await asyncio.gather(start, refresher, return_exceptions=True)
            await services.manager.close()
            await services.access.limiter.close()
            services.plane.close()

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
    app.include_router(v1.build_router(services.plane, services.keys.audit))
    app.include_router(metrics_api.build_router(services.metrics))
    app.include_router(openai_api.build_router(services.plane))
    app.include_router(v2_api.build_router(services.plane, readiness))
    app.include_router(keys_api.build_router(services.keys))
    app.include_router(
        jobs_api.build_router(
            services.jobs,
            services.worker,
            max_attempts=settings.jobs.max_attempts,
            max_body=settings.inference.default_max_request_bytes,
        )
    )
    app.add_middleware(AuthMiddleware, authenticator=services.authenticator)
    app.add_middleware(RequestIdMiddleware)
    return app
