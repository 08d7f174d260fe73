"""The model manager: routing facts kept in memory, loading in the background, states, a
failed load, unloading that waits for calls in flight, the versions a deployment keeps warm."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from modelhost.errors import ModelNotFound, ModelNotReady, VersionNotFound
from modelhost.inference import InferenceRequest
from modelhost.registry import ArtifactStore, Registry, Stage, make_engine
from modelhost.serving.models import Deployment, ModelManager, ModelState
from modelhost.serving.router import Router
from tests.conftest import write_python_model


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    return Registry(engine, ArtifactStore(tmp_path / "artifacts"))


@pytest_asyncio.fixture
async def manager(registry: Registry) -> AsyncIterator[ModelManager]:
    built = ModelManager(registry, threads=1, drain_timeout_s=5)
    yield built
    await built.close()
    registry.engine.dispose()


def _push(
    registry: Registry,
    root: Path,
    name: str,
    version: str = "1.0.0",
    stage: Stage = Stage.PRODUCTION,
) -> None:
    registry.push(write_python_model(root, name, version), actor="t", stage=stage)


@pytest.mark.asyncio
async def test_refresh_loads_live_versions_and_reports_changes_once(
    manager: ModelManager, registry: Registry, tmp_path: Path
) -> None:
    await manager.refresh()
    assert manager.models() == []
    _push(registry, tmp_path, "echo")
    assert await manager.refresh() is True
    assert await manager.refresh() is False  # nothing changed: one generation query
    await manager.wait_loaded(30)
    info = await manager.resolve("echo", None)
    dep = manager.ready_runtime(info)
    assert dep.state is ModelState.READY
    assert dep.load_seconds is not None
    assert dep.load_seconds >= 0
    assert dep.runtime is not None
    assert dep.runtime.predict([{"text": "hi"}], {}).results == [{"echo": {"text": "hi"}}]
    assert dep.input_validator is not None
    assert dep.parameters_validator is not None
    assert manager.production_runtime("echo") is dep.runtime
    assert manager.state_counts() == {"loading": 0, "ready": 1, "failed": 0, "unloaded": 0}


@pytest.mark.asyncio
async def test_a_model_pushed_after_the_last_refresh_is_found_on_first_ask(
    manager: ModelManager, registry: Registry, tmp_path: Path
) -> None:
    await manager.refresh()
    _push(registry, tmp_path, "late")
    found = await manager.model("late")  # a miss re-reads the registry once
    assert found.name == "late"
    with pytest.raises(ModelNotFound) as missing:
        await manager.model("nobody")
    assert missing.value.param == "model"
    with pytest.raises(VersionNotFound):
        await manager.resolve("late", "9.9.9")


@pytest.mark.asyncio
async def test_a_version_that_fails_to_load_keeps_its_error(
    manager: ModelManager, registry: Registry, tmp_path: Path
) -> None:
    directory = write_python_model(tmp_path, "broken", cls="Broken")
    registry.push(directory, actor="t", stage=Stage.STAGING)
    await manager.refresh(load=False)
    info = await manager.resolve("broken", "1.0.0")
    dep = await manager.load(info)
    assert dep.state is ModelState.FAILED
    assert "weights are corrupt" in (dep.error or "")
    with pytest.raises(ModelNotReady) as refused:
        manager.ready_runtime(info)
    assert "failed to load" in refused.value.message
    assert manager.production_runtime("broken") is None


@pytest.mark.asyncio
async def test_asking_for_an_unloaded_version_starts_loading_and_says_retry(
    manager: ModelManager, registry: Registry, tmp_path: Path
) -> None:
    _push(registry, tmp_path, "echo", stage=Stage.STAGING)
    await manager.refresh(load=False)
    info = await manager.resolve("echo", "staging")
    assert manager.deployment(info.ref) is None
    with pytest.raises(ModelNotReady) as first:
        manager.ready_runtime(info)
    assert first.value.retry_after == 2
    assert "loading started" in first.value.message
    assert manager.start_loading(info) is manager.deployment(info.ref)  # idempotent
    await manager.wait_loaded(30)
    assert manager.ready_runtime(info).state is ModelState.READY


@pytest.mark.asyncio
async def test_unload_waits_for_calls_in_flight(
    manager: ModelManager, registry: Registry, tmp_path: Path
) -> None:
    _push(registry, tmp_path, "echo")
    await manager.refresh()
    await manager.wait_loaded(30)
    info = await manager.resolve("echo", None)
    dep = manager.ready_runtime(info)
    dep.inflight = 1
    unloading = asyncio.create_task(manager.unload(info.ref))
    await asyncio.sleep(0.05)
    assert not unloading.done()  # the call holding the runtime has not ended
    assert dep.state is ModelState.UNLOADED  # but no new call gets it
    with pytest.raises(ModelNotReady):
        manager.ready_runtime(info)
    dep.inflight = 0
    assert await asyncio.wait_for(unloading, 5) is dep
    assert dep.runtime is None
    assert await manager.unload("nobody@1.0.0") is None
    await manager.wait_loaded(30)  # the refused call above started loading it again
    again = manager.ready_runtime(info)
    assert again is not dep
    assert again.runtime is not None


def _state(dep: Deployment) -> ModelState:
    return dep.state


@pytest.mark.asyncio
async def test_archived_versions_unload_unless_a_deployment_keeps_them_warm(
    registry: Registry, tmp_path: Path
) -> None:
    manager = ModelManager(registry, threads=1, keep_warm=1)
    try:
        _push(registry, tmp_path, "echo", "1.0.0")
        await manager.refresh()
        await manager.wait_loaded(30)
        _push(registry, tmp_path, "echo", "2.0.0")  # archives 1.0.0
        spec = manager.spec("echo")
        assert spec.model == "echo"
        assert spec.canary is None
        registry.deployments.update(
            dataclasses.replace(spec, previous=("1.0.0",)), actor="t", action="promote"
        )
        await manager.refresh()
        await manager.wait_loaded(30)
        first = manager.deployment("echo@1.0.0")
        assert first is not None
        assert first.state is ModelState.READY
        assert manager.spec("echo").previous == ("1.0.0",)
        registry.deployments.update(
            dataclasses.replace(manager.spec("echo"), previous=()), actor="t", action="forget"
        )
        await manager.refresh()
        await asyncio.wait_for(asyncio.gather(*manager._tasks), 10)  # the unload it started
        assert _state(first) is ModelState.UNLOADED
        second = manager.deployment("echo@2.0.0")
        assert second is not None
        assert second.state is ModelState.READY
    finally:
        await manager.close()
        registry.engine.dispose()


@pytest.mark.asyncio
async def test_a_refresh_in_the_middle_of_a_push_leaves_no_stale_answer(
    manager: ModelManager, registry: Registry, tmp_path: Path
) -> None:
    """``models push --stage production`` registers the version (staging), then moves it: a
    refresh between the two commits saw a model with no production version, and a request
    right after the push got 404 until the next periodic refresh (run 1 of session 9)."""
    directory = write_python_model(tmp_path, "fresh")
    registry.push(directory, actor="t", stage=Stage.STAGING)  # the first commit of the push
    await manager.refresh(load=False)  # the periodic refresh lands here
    registry.set_stage("fresh", "1.0.0", Stage.PRODUCTION, actor="t")  # the second commit
    info = await manager.resolve("fresh", None)
    assert info.stage is Stage.PRODUCTION
    route = await Router(manager).route(InferenceRequest(model="fresh", inputs=[]))
    assert route.info.ref == "fresh@1.0.0"
    with pytest.raises(VersionNotFound):
        await manager.resolve("fresh", "2.0.0")  # a real miss is still one


@pytest.mark.asyncio
async def test_the_router_re_reads_the_registry_once_after_a_stale_miss(
    manager: ModelManager, registry: Registry, tmp_path: Path
) -> None:
    registry.push(write_python_model(tmp_path, "later"), actor="t", stage=Stage.STAGING)
    await manager.refresh(load=False)
    registry.set_stage("later", "1.0.0", Stage.PRODUCTION, actor="t")
    route = await Router(manager).route(InferenceRequest(model="later", inputs=[]))
    assert route.info.stage is Stage.PRODUCTION
