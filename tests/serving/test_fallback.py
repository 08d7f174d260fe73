"""Fallbacks and circuit breakers: a version that fails, times out or is unavailable is
answered for by the next model its manifest names; a caller's error never falls back; a
version that keeps failing is skipped for its cool-down, and the gauge shows it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from modelhost.app import Services, build_services, close_services
from modelhost.config import BreakerSettings, Settings
from modelhost.errors import (
    InferenceTimeout,
    InvalidInput,
    ModelNotReady,
    QueueTimeout,
    RuntimeFailure,
)
from modelhost.inference import InferenceRequest, InferenceResponse
from modelhost.manifest import parse_manifest
from modelhost.observability.metrics import Metrics
from modelhost.registry import Stage, VersionInfo
from modelhost.serving.breaker import Breakers, CircuitState
from tests.conftest import write_python_model
from tests.observing import Capture
from tests.serving.iris_variants import write_iris_variant

ROW = [5.1, 3.5, 1.4, 0.2]


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    settings = Settings(
        home=tmp_path / "home",
        demo={"enabled": False},
        breaker={"failures": 2, "cooldown_s": 30, "half_open_probes": 1},
    )
    built = build_services(settings)
    registry = built.registry
    versions = [
        write_iris_variant(tmp_path, "iris-flaky", "1.0.0", fail_every=1, fallbacks=["iris-ok"]),
        write_iris_variant(tmp_path, "iris-broken", "1.0.0", fail_every=1),
        write_iris_variant(tmp_path, "iris-ok", "1.0.0"),
        write_python_model(tmp_path, "echo-slow", fallbacks=["echo-gone", "echo-patient@1.0.0"]),
        write_python_model(tmp_path, "echo-gone", cls="Broken"),
        write_python_model(
            tmp_path,
            "echo-patient",
            limits={"max_request_bytes": 2048, "max_batch_items": 4, "timeout_ms": 3000},
        ),
        write_python_model(tmp_path, "chat-down", cls="Broken", fallbacks=["chat-up"]),
        write_python_model(tmp_path, "chat-up", cls="Chatty"),
    ]
    for directory in versions:
        info = registry.push(directory, actor="test")
        registry.set_stage(info.model, info.version, Stage.PRODUCTION, actor="test")
    await built.manager.refresh(load=True)
    await built.manager.wait_loaded()
    yield built
    await close_services(built)


def _capture(services: Services) -> Capture:
    capture = Capture()
    services.plane.observers.append(capture)
    return capture


def _gauge(services: Services, model: str) -> float | None:
    return services.metrics.registry.get_sample_value(
        "modelhost_circuit_state", {"model": model, "version": "1.0.0"}
    )


@pytest.mark.asyncio
async def test_a_failing_version_is_answered_for_by_its_fallback(services: Services) -> None:
    capture = _capture(services)
    response = await services.plane.infer(InferenceRequest(model="iris-flaky", inputs=[ROW]))
    assert (response.model, response.results[0]["label"]) == ("iris-ok", "setosa")
    fallback = response.as_v1()["fallback"]
    assert fallback == {
        "from": "iris-flaky@1.0.0",
        "reason": "error",  # the model's own code raised
        "to": "iris-ok",
        "skipped": [],
    }
    (failed,) = capture.of("iris-flaky")
    assert isinstance(failed.error, RuntimeError)
    (answered,) = capture.of("iris-ok")
    assert answered.decisions["fallback"] == fallback  # the provenance record says so


@pytest.mark.asyncio
async def test_a_timeout_skips_an_unavailable_fallback_for_the_next(services: Services) -> None:
    capture = _capture(services)
    request = InferenceRequest(
        model="echo-slow", inputs=[{"text": "hi"}], parameters={"sleep": 0.5}
    )
    response = await services.plane.infer(request)
    assert response.model == "echo-patient"
    assert response.results == [{"echo": {"text": "hi"}}]
    assert response.decisions["fallback"]["reason"] == "timeout"
    assert response.decisions["fallback"]["skipped"] == ["echo-gone"]
    (gone,) = capture.of("echo-gone")
    assert isinstance(gone.error, ModelNotReady)


@pytest.mark.asyncio
async def test_a_callers_error_never_falls_back(services: Services) -> None:
    capture = _capture(services)
    with pytest.raises(InvalidInput):
        await services.plane.infer(InferenceRequest(model="iris-flaky", inputs=[[1.0]]))
    assert capture.of("iris-ok") == []


@pytest.mark.asyncio
async def test_an_open_breaker_skips_the_version_then_probes_it(services: Services) -> None:
    clock = Clock()
    services.plane.breakers = Breakers(services.settings.breaker, services.metrics, clock)
    capture = _capture(services)
    request = InferenceRequest.for_reference("iris-broken", inputs=[ROW])
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await services.plane.infer(InferenceRequest.for_reference("iris-broken", inputs=[ROW]))
    assert _gauge(services, "iris-broken") == CircuitState.OPEN
    with pytest.raises(ModelNotReady) as refused:
        await services.plane.infer(request)
    assert refused.value.retry_after == 30
    failures = [e for e in capture.of("iris-broken") if isinstance(e.error, RuntimeError)]
    assert len(failures) == 2  # the refused call never reached the model

    clock.now += 31  # cool-down over: one probe goes through, fails, and opens it again
    with pytest.raises(RuntimeError):
        await services.plane.infer(InferenceRequest.for_reference("iris-broken", inputs=[ROW]))
    assert _gauge(services, "iris-broken") == CircuitState.OPEN


@pytest.mark.asyncio
async def test_an_open_breaker_sends_callers_to_the_fallback_at_once(services: Services) -> None:
    capture = _capture(services)
    for _ in range(3):
        response = await services.plane.infer(InferenceRequest(model="iris-flaky", inputs=[ROW]))
        assert response.model == "iris-ok"
    assert response.decisions["fallback"]["reason"] == "not_ready"
    runtime_failures = [e for e in capture.of("iris-flaky") if isinstance(e.error, RuntimeError)]
    assert len(runtime_failures) == 2
    assert _gauge(services, "iris-flaky") == CircuitState.OPEN


@pytest.mark.asyncio
async def test_jobs_batched_together_fall_back_too(services: Services) -> None:
    requests = [
        InferenceRequest(model="iris-flaky", inputs=[ROW], request_id="j1"),
        InferenceRequest(model="iris-flaky", inputs=[ROW, ROW], request_id="j2"),
        InferenceRequest(model="iris-ok", inputs=[ROW], request_id="j3"),
        InferenceRequest(model="iris-flaky", inputs=[[1.0]], request_id="j4"),  # caller's error
    ]
    outcomes = await services.plane.infer_many(requests)
    first, second, third, fourth = outcomes
    assert isinstance(first, InferenceResponse)
    assert isinstance(second, InferenceResponse)
    assert (first.model, second.model) == ("iris-ok", "iris-ok")
    assert len(second.results) == 2
    assert first.decisions["fallback"]["from"] == "iris-flaky@1.0.0"
    assert isinstance(third, InferenceResponse)
    assert "fallback" not in third.decisions
    assert isinstance(fourth, InvalidInput)
    # the two flaky jobs were one merged runtime call: one failure against the breaker
    assert _gauge(services, "iris-flaky") == CircuitState.CLOSED


@pytest.mark.asyncio
async def test_a_stream_falls_back_before_its_first_chunk(services: Services) -> None:
    capture = _capture(services)
    info, chunks = await services.plane.stream(
        InferenceRequest(model="chat-down", inputs=[{"text": "one two three"}])
    )
    assert info.model == "chat-up"
    text = "".join([chunk.text async for chunk in chunks])
    assert text == "one two three "
    (answered,) = capture.of("chat-up")
    assert answered.streamed
    assert answered.decisions["fallback"]["from"] == "chat-down@1.0.0"
    assert answered.decisions["fallback"]["reason"] == "not_ready"


@pytest.mark.asyncio
async def test_a_model_that_cannot_stream_is_the_callers_error(services: Services) -> None:
    with pytest.raises(InvalidInput, match="does not stream"):
        await services.plane.stream(InferenceRequest(model="iris-ok", inputs=[ROW]))


def _fake_info() -> VersionInfo:
    manifest = parse_manifest({"name": "m", "version": "1.0.0", "runtime": "python"})
    return VersionInfo(
        model="m",
        version="1.0.0",
        runtime="python",
        stage=Stage.PRODUCTION,
        manifest=manifest,
        files={},
        size_bytes=0,
        created_at=datetime.now(UTC),
        created_by="test",
    )


def test_a_breaker_opens_half_opens_and_closes() -> None:
    clock = Clock()
    metrics = Metrics()
    breakers = Breakers(BreakerSettings(failures=3, cooldown_s=10), metrics, clock)
    info = _fake_info()

    def gauge() -> float | None:
        return metrics.registry.get_sample_value(
            "modelhost_circuit_state", {"model": info.model, "version": info.version}
        )

    broke = RuntimeFailure("boom")
    breakers.admit(info)
    for _ in range(2):
        breakers.failed(info, broke)
    breakers.succeeded(info)  # a success in between: the count starts again
    for _ in range(2):
        breakers.failed(info, broke)
    assert breakers.state(info) is CircuitState.CLOSED
    breakers.failed(info, InvalidInput("the caller's fault"))  # not counted
    assert breakers.state(info) is CircuitState.CLOSED
    breakers.failed(info, broke)
    assert (breakers.state(info), gauge()) == (CircuitState.OPEN, 1)
    with pytest.raises(ModelNotReady):
        breakers.admit(info)
    clock.now += 10.5
    breakers.admit(info)  # the probe
    assert (breakers.state(info), gauge()) == (CircuitState.HALF_OPEN, 2)
    with pytest.raises(ModelNotReady):
        breakers.admit(info)  # one probe at a time
    breakers.succeeded(info)
    assert (breakers.state(info), gauge()) == (CircuitState.CLOSED, 0)
    breakers.admit(info)


def test_queue_timeouts_do_not_count_and_an_opening_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # issue 16: a cheap model queued behind a long call judged the queue, not the model
    metrics = Metrics()
    breakers = Breakers(BreakerSettings(failures=2, cooldown_s=30), metrics, Clock())
    info = _fake_info()
    for _ in range(5):
        breakers.failed(info, QueueTimeout("did not start"))
    assert breakers.state(info) is CircuitState.CLOSED
    labels = {"model": info.model, "version": info.version}
    assert metrics.registry.get_sample_value("modelhost_circuit_opened_total", labels) is None
    with caplog.at_level("WARNING", logger="modelhost.breaker"):
        breakers.failed(info, InferenceTimeout("too slow"))
        breakers.failed(info, InferenceTimeout("too slow"))
    assert breakers.state(info) is CircuitState.OPEN
    assert metrics.registry.get_sample_value("modelhost_circuit_opened_total", labels) == 1
    assert any("m@1.0.0" in r.getMessage() and "opened" in r.getMessage() for r in caplog.records)


async def _submitted(services: Services, model: str) -> None:
    """Wait until a call of ``model`` is in an inference pool (it is submitted in the same loop
    step that counts it in flight, and a pool starts its calls in order)."""
    dep = services.manager.deployment(services.registry.resolve(model).ref)
    while dep is None or dep.inflight == 0:
        await asyncio.sleep(0.005)
        dep = services.manager.deployment(services.registry.resolve(model).ref)


@pytest.mark.asyncio
async def test_a_call_that_waits_out_its_timeout_in_the_queue_is_a_queue_timeout(
    tmp_path: Path,
) -> None:
    # one inference thread held by a slow call: the next call never starts before its timeout
    settings = Settings(home=tmp_path / "home", demo={"enabled": False}, inference={"threads": 1})
    built = build_services(settings)
    try:
        for name, limits in (
            ("echo-hog", {"timeout_ms": 5000}),
            ("echo-quick", {"timeout_ms": 200}),
        ):
            info = built.registry.push(write_python_model(tmp_path, name, limits=limits), actor="t")
            built.registry.set_stage(info.model, info.version, Stage.PRODUCTION, actor="t")
        await built.manager.refresh(load=True)
        await built.manager.wait_loaded()
        hog = asyncio.create_task(
            built.plane.infer(
                InferenceRequest(
                    model="echo-hog", inputs=[{"text": "a"}], parameters={"sleep": 1.0}
                )
            )
        )
        await _submitted(built, "echo-hog")  # first in the one thread's queue
        with pytest.raises(QueueTimeout, match="did not start"):
            await built.plane.infer(InferenceRequest(model="echo-quick", inputs=[{"text": "b"}]))
        quick = built.registry.resolve("echo-quick")
        assert built.plane.breakers.state(quick) is CircuitState.CLOSED
        assert (await hog).results == [{"echo": {"text": "a"}}]
    finally:
        await close_services(built)


@pytest.mark.asyncio
async def test_a_cheap_model_never_queues_behind_a_long_generation(tmp_path: Path) -> None:
    # one thread per lane; a streaming model (the generate lane) holds its thread for 3 s
    settings = Settings(
        home=tmp_path / "home",
        demo={"enabled": False},
        inference={"threads": 1, "generate_threads": 1},
    )
    built = build_services(settings)
    try:
        for name, cls, limits in (
            ("chat-hog", "Chatty", {"timeout_ms": 10000}),
            ("chat-next", "Chatty", {"timeout_ms": 300}),
            ("echo-quick", "Echo", {"timeout_ms": 2500}),
        ):
            directory = write_python_model(tmp_path, name, cls=cls, limits=limits)
            info = built.registry.push(directory, actor="t")
            built.registry.set_stage(info.model, info.version, Stage.PRODUCTION, actor="t")
        await built.manager.refresh(load=True)
        await built.manager.wait_loaded()
        hog = asyncio.create_task(
            built.plane.infer(
                InferenceRequest(
                    model="chat-hog", inputs=[{"text": "a"}], parameters={"sleep": 3.0}
                )
            )
        )
        await _submitted(built, "chat-hog")
        # in one shared pool this call would wait the hog's 3 s and time out at 2.5 s
        quick = await built.plane.infer(
            InferenceRequest(model="echo-quick", inputs=[{"text": "b"}])
        )
        assert quick.results == [{"echo": {"text": "b"}}]
        # another generation does queue behind the hog: a queue timeout, not the model's fault
        with pytest.raises(QueueTimeout, match="did not start"):
            await built.plane.infer(InferenceRequest(model="chat-next", inputs=[{"text": "c"}]))
        assert built.plane.breakers.state(built.registry.resolve("chat-next")) is (
            CircuitState.CLOSED
        )
        assert (await hog).results == [{"echo": {"text": "a"}}]
    finally:
        await close_services(built)
