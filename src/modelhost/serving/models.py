"""Which model versions are loaded, and loading and unloading them while serving.

The manager keeps the registry's routing facts (stages, aliases) in memory so that a request
never queries the database; a background task refreshes them when the registry changes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import fastjsonschema

from modelhost.errors import ModelhostError, ModelNotFound, ModelNotReady, VersionNotFound
from modelhost.registry import (
    DeploymentSpec,
    ModelInfo,
    Registry,
    Stage,
    VersionInfo,
    resolve_in,
)
from modelhost.runtimes import Runtime, RuntimeContext, create_runtime

if TYPE_CHECKING:
    from modelhost.serving.batching import AdaptiveBatcher

log = logging.getLogger("modelhost.models")

Validator = Callable[[Any], Any]


class ModelState(StrEnum):
    """Where a model version is in its serving life."""

    LOADING = "loading"  #: being loaded; requests get 503 with Retry-After
    READY = "ready"  #: serving
    FAILED = "failed"  #: loading failed; the error is kept and requests get 503
    UNLOADED = "unloaded"  #: known but not in memory


@dataclass(slots=True)
class Deployment:
    """One model version in this server: its state, runtime and compiled validators."""

    info: VersionInfo
    state: ModelState = ModelState.UNLOADED
    runtime: Runtime | None = None
    error: str | None = None
    load_seconds: float | None = None
    input_validator: Validator | None = None
    parameters_validator: Validator | None = None
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    batcher: AdaptiveBatcher | None = None
    """Wraps ``runtime`` when the manifest asks for batching; set by the data plane on first
    use, closed (drained) here on unload."""
    inflight: int = 0
    """Runtime calls running now; an unload waits for them (a switch loses no request)."""

    @property
    def ref(self) -> str:
        """``name@version``."""
        return self.info.ref


def _freeze_long_lived() -> None:
    """Move every object alive now (modules, app, loaded models) out of the cyclic GC's reach.

    They live as long as the process, yet a full collection re-scans all of them: with
    ~170,000 objects after start-up that is an ~80 ms pause of the event loop every few
    thousand requests, which set the p99 latency. Frozen objects are still freed by reference
    counting; :meth:`ModelManager.unload` unfreezes so an unloaded model's cycles can go.
    """
    gc.collect()
    gc.freeze()


def _compile(schema: dict[str, Any]) -> Validator | None:
    return fastjsonschema.compile(schema) if schema else None


class ModelManager:
    """Loads, unloads and finds model versions; one per server process."""

    def __init__(
        self,
        registry: Registry,
        *,
        threads: int,
        keep_warm: int = 1,
        drain_timeout_s: float = 30.0,
    ) -> None:
        self.registry = registry
        self.threads = threads
        self.keep_warm = keep_warm
        """Former production versions kept loaded, so a rollback switches at once."""
        self.drain_timeout_s = drain_timeout_s
        self._models: dict[str, ModelInfo] = {}
        self._specs: dict[str, DeploymentSpec] = {}
        self._deployments: dict[str, Deployment] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelhost-load")
        self._generation = -1
        self._tasks: set[asyncio.Task[None]] = set()

    # -- routing -----------------------------------------------------------------------------

    async def refresh(self, *, load: bool = True) -> bool:
        """Re-read the registry if it changed; start loading new live versions.

        Returns:
            True when something changed.
        """
        generation = await asyncio.to_thread(self.registry.generation)
        if generation == self._generation:
            return False
        models = await asyncio.to_thread(self.registry.list_models)
        specs = await asyncio.to_thread(self.registry.deployments.all)
        self._models = {m.name: m for m in models}
        self._specs = specs
        self._generation = generation
        for model in models:
            wanted = self._wanted(specs.get(model.name))
            for version in model.versions:
                self._sync_version(version, load=load, wanted=version.version in wanted)
        return True

    def _wanted(self, spec: DeploymentSpec | None) -> set[str]:
        """Versions a deployment names that must stay loaded whatever their stage: its
        canary, its shadows and the ``keep_warm`` newest former production versions."""
        if spec is None:
            return set()
        wanted = {*spec.shadows, *spec.previous[: self.keep_warm]}
        if spec.canary is not None:
            wanted.add(spec.canary)
        return wanted

    def spec(self, name: str) -> DeploymentSpec:
        """The deployment of ``name`` as last read (production only when none is stored)."""
        found = self._specs.get(name)
        return found if found is not None else DeploymentSpec(model=name)

    def _sync_version(self, version: VersionInfo, *, load: bool, wanted: bool = False) -> None:
        current = self._deployments.get(version.ref)
        if current is not None:
            current.info = version
        live = version.stage is not Stage.ARCHIVED or wanted
        if load and live and (current is None or current.state is ModelState.UNLOADED):
            self.start_loading(version)
        elif not live and current is not None and current.state is ModelState.READY:
            self._spawn(self.unload(version.ref))

    def models(self) -> list[ModelInfo]:
        """Every model known to this server."""
        return list(self._models.values())

    async def model(self, name: str) -> ModelInfo:
        """One model; a miss re-reads the registry once (it may have been pushed just now).

        Raises:
            ModelNotFound: not registered.
        """
        found = self._models.get(name)
        if found is None:
            await self.refresh()
            found = self._models.get(name)
        if found is None:
            raise ModelNotFound(f"model {name!r} is not registered", param="model")
        return found

    async def resolve(self, name: str, selector: str | None) -> VersionInfo:
        """The version a request means (see :func:`modelhost.registry.resolve_in`); a miss
        re-reads the registry once, as :meth:`model` does: a refresh that ran in the middle of
        a push (the version registered, its stage not yet set) leaves no stale answer.

        Raises:
            ModelNotFound: not registered.
            VersionNotFound: nothing matches ``selector``, after the re-read.
        """
        try:
            return resolve_in(await self.model(name), selector)
        except VersionNotFound:
            if not await self.refresh():
                raise
            return resolve_in(await self.model(name), selector)

    def deployment(self, ref: str) -> Deployment | None:
        """The deployment of ``name@version``, if this server knows it."""
        return self._deployments.get(ref)

    def production_runtime(self, name: str) -> Runtime | None:
        """The loaded runtime of ``name``'s production version on this server, or None (a
        helper model such as the embeddings one may be absent or still loading)."""
        model = self._models.get(name)
        production = model.stage_version(Stage.PRODUCTION) if model is not None else None
        dep = self._deployments.get(production.ref) if production is not None else None
        if dep is None or dep.state is not ModelState.READY:
            return None
        return dep.runtime

    def deployments(self) -> list[Deployment]:
        """Every deployment."""
        return list(self._deployments.values())

    def state_counts(self) -> dict[str, int]:
        """How many deployments are in each state (every state listed, zeros included)."""
        counts = dict.fromkeys((state.value for state in ModelState), 0)
        for dep in self._deployments.values():
            counts[dep.state.value] += 1
        return counts

    def ready_runtime(self, info: VersionInfo) -> Deployment:
        """The deployment of a version that can serve now.

        A version that is not loaded starts loading. Raises:
            ModelNotReady: loading (with Retry-After), failed, or just started loading.
        """
        dep = self._deployments.get(info.ref)
        if dep is not None and dep.state is ModelState.READY:
            return dep
        if dep is None or dep.state is ModelState.UNLOADED:
            self.start_loading(info)
            raise ModelNotReady(
                f"{info.ref} was not loaded; loading started, retry shortly", retry_after=2
            )
        if dep.state is ModelState.LOADING:
            raise ModelNotReady(f"{info.ref} is loading; retry shortly", retry_after=2)
        raise ModelNotReady(f"{info.ref} failed to load: {dep.error}")

    # -- loading -----------------------------------------------------------------------------

    def start_loading(self, info: VersionInfo) -> Deployment:
        """Begin loading in the background (idempotent while loading or ready)."""
        dep = self._deployments.get(info.ref)
        if dep is not None and dep.state in (ModelState.LOADING, ModelState.READY):
            return dep
        dep = Deployment(info=info, state=ModelState.LOADING)
        self._deployments[info.ref] = dep
        self._spawn(self._load(dep))
        return dep

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _load_sync(self, dep: Deployment) -> Runtime:
        info = dep.info
        path = self.registry.store.materialize(info.model, info.version, info.files)
        runtime = create_runtime(
            RuntimeContext(manifest=info.manifest, path=path, threads=self.threads)
        )
        runtime.load()
        dep.input_validator = _compile(info.manifest.input_schema)
        dep.parameters_validator = _compile(info.manifest.parameters_schema)
        return runtime

    async def _load(self, dep: Deployment) -> None:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            runtime = await loop.run_in_executor(self._loader, self._load_sync, dep)
        except Exception as exc:  # any failure of user code or files marks the version FAILED
            message = exc.message if isinstance(exc, ModelhostError) else repr(exc)
            dep.state, dep.error = ModelState.FAILED, message
            log.error("%s failed to load: %s", dep.ref, message)
        else:
            dep.runtime, dep.state, dep.error = runtime, ModelState.READY, None
            dep.load_seconds = time.perf_counter() - started
            log.info("%s ready in %.2fs", dep.ref, dep.load_seconds)
            _freeze_long_lived()
        finally:
            dep.loaded.set()

    async def wait_loaded(self, timeout: float | None = None) -> None:
        """Wait until no deployment is loading."""
        pending = [d.loaded.wait() for d in self._deployments.values() if not d.loaded.is_set()]
        if pending:
            await asyncio.wait_for(asyncio.gather(*pending), timeout)

    async def load(self, info: VersionInfo) -> Deployment:
        """Load a version and wait for the outcome."""
        dep = self.start_loading(info)
        await dep.loaded.wait()
        return dep

    async def unload(self, ref: str) -> Deployment | None:
        """Unload ``name@version``; requests then get 503 until it is loaded again."""
        dep = self._deployments.get(ref)
        if dep is None or dep.state is ModelState.UNLOADED:
            return dep
        await dep.loaded.wait()
        runtime, dep.runtime = dep.runtime, None
        batcher, dep.batcher = dep.batcher, None
        dep.state = ModelState.UNLOADED
        dep.loaded = asyncio.Event()
        if batcher is not None:  # answer the requests already waiting before the model goes
            await batcher.close()
        await self._drain(dep)  # calls that started before hold the runtime: let them end
        if runtime is not None:
            await asyncio.get_running_loop().run_in_executor(self._loader, runtime.unload)
        gc.unfreeze()  # let the collector reclaim what the unloaded model leaves in cycles
        log.info("%s unloaded", ref)
        return dep

    async def _drain(self, dep: Deployment) -> None:
        """Wait (up to ``drain_timeout_s``) for the runtime calls in flight on ``dep``."""
        deadline = time.monotonic() + self.drain_timeout_s
        while dep.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Unload everything and stop the loader."""
        for ref in list(self._deployments):
            await self.unload(ref)
        self._loader.shutdown(wait=False, cancel_futures=True)
