"""Prometheus metrics: recorded by the DataPlane for every protocol, served at /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from modelhost.app import Services, build_services, close_services
from modelhost.config import DemoSettings, InferenceSettings, Settings
from modelhost.demo import IRIS_FEATURES
from modelhost.errors import (
    InferenceTimeout,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    RuntimeFailure,
    VersionNotFound,
)
from modelhost.inference import InferenceRequest
from modelhost.jobs import NewJob, SqlQueue
from modelhost.observability import Metrics, outcome_of
from modelhost.registry import Stage
from tests.conftest import write_python_model


def scraped(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.deployment("iris", "1.0.0", "v1").answered(0.01)
    labels = {"model": "iris", "version": "1.0.0", "protocol": "v1", "outcome": "ok"}
    assert first.registry.get_sample_value("modelhost_requests_total", labels) == 1.0
    assert second.registry.get_sample_value("modelhost_requests_total", labels) is None
    assert prometheus_client.REGISTRY.get_sample_value("modelhost_requests_total", labels) is None


def test_deployment_recorders_are_cached() -> None:
    metrics = Metrics()
    assert metrics.deployment("iris", "1.0.0") is metrics.deployment("iris", "1.0.0")
    assert metrics.deployment("iris", "1.0.0") is not metrics.deployment("iris", "1.0.0", "v2")


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (InvalidInput("bad"), "invalid_input"),
        (ModelNotFound("gone"), "not_found"),
        (VersionNotFound("gone"), "not_found"),
        (ModelNotReady("loading"), "not_ready"),
        (InferenceTimeout("slow"), "timeout"),
        (RuntimeFailure("broken"), "runtime_error"),
        (ValueError("user code"), "error"),
        (asyncio.CancelledError(), "cancelled"),
    ],
)
def test_outcome_labels_are_a_small_fixed_set(exc: BaseException, outcome: str) -> None:
    assert outcome_of(exc) == outcome


def test_model_versions_gauge_is_read_at_scrape_time() -> None:
    metrics = Metrics()
    counts = {"ready": 1, "loading": 0}
    metrics.watch_model_versions(lambda: counts)
    text = metrics.exposition().decode()
    assert scraped(text, "modelhost_model_versions", state="ready") == 1.0
    counts["ready"], counts["loading"] = 3, 2
    text = metrics.exposition().decode()
    assert scraped(text, "modelhost_model_versions", state="ready") == 3.0
    assert scraped(text, "modelhost_model_versions", state="loading") == 2.0


@pytest_asyncio.fixture
async def echo(tmp_path: Path) -> AsyncIterator[Services]:
    """A DataPlane serving the echo model with batching on, built by the composition root."""
    settings = Settings(
        home=tmp_path / "home", demo=DemoSettings(enabled=False), inference=InferenceSettings()
    )
    services = build_services(settings)
    directory = write_python_model(
        tmp_path / "models", "echo", batching={"max_batch_size": 4, "max_batch_delay_ms": 20}
    )
    services.registry.push(directory, actor="test", stage=Stage.PRODUCTION)
    await services.manager.refresh()
    await services.manager.wait_loaded(timeout=60)
    yield services
    await services.manager.close()
    services.plane.close()
    services.registry.engine.dispose()


def _sample(services: Services, name: str, **labels: str) -> float | None:
    return services.metrics.registry.get_sample_value(name, labels)


@pytest.mark.asyncio
async def test_dataplane_records_requests_outcomes_latency_and_batch_sizes(
    echo: Services,
) -> None:
    plane = echo.plane

    def request(model: str = "echo", **kwargs: Any) -> InferenceRequest:
        kwargs.setdefault("inputs", [{"text": "hi"}])
        return InferenceRequest.for_reference(model, protocol="v2", **kwargs)

    await asyncio.gather(*(plane.infer(request()) for _ in range(3)))
    failures = await asyncio.gather(
        plane.infer(request(inputs=[{"text": 1}])),
        plane.infer(request("nosuchmodel")),
        plane.infer(request("echo@9.9.9")),
        plane.stream(request()),  # echo does not stream
        return_exceptions=True,
    )
    assert [type(f) for f in failures] == [
        InvalidInput,
        ModelNotFound,
        VersionNotFound,
        InvalidInput,
    ]
    echo_v2 = {"model": "echo", "version": "1.0.0", "protocol": "v2"}
    assert _sample(echo, "modelhost_requests_total", **echo_v2, outcome="ok") == 3.0
    assert _sample(echo, "modelhost_requests_total", **echo_v2, outcome="invalid_input") == 2.0
    unknown = {"model": "_unknown", "version": "_unknown", "protocol": "v2"}
    assert _sample(echo, "modelhost_requests_total", **unknown, outcome="not_found") == 1.0
    bad_version = {"model": "echo", "version": "_unknown", "protocol": "v2"}
    assert _sample(echo, "modelhost_requests_total", **bad_version, outcome="not_found") == 1.0
    assert _sample(echo, "modelhost_request_duration_seconds_count", **echo_v2) == 3.0
    deployment = {"model": "echo", "version": "1.0.0"}
    # The three concurrent requests were merged into one runtime call of three inputs.
    assert _sample(echo, "modelhost_batch_size_count", **deployment) == 1.0
    assert _sample(echo, "modelhost_batch_size_sum", **deployment) == 3.0
    assert _sample(echo, "modelhost_batch_size_bucket", **deployment, le="2.0") == 0.0
    assert _sample(echo, "modelhost_batch_size_bucket", **deployment, le="4.0") == 1.0
    assert _sample(echo, "modelhost_inference_duration_seconds_count", **deployment) == 1.0
    assert _sample(echo, "modelhost_model_versions", state="ready") == 1.0


def _flower(value: float) -> dict[str, float]:
    return dict.fromkeys(IRIS_FEATURES, value)


def test_metrics_endpoint_over_http_shows_counters_and_batch_sizes(
    client: httpx.Client,
) -> None:
    before = client.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"] == Metrics.content_type  # text/plain; version=...
    iris = {"model": "iris", "version": "1.0.0"}
    for inputs in ([_flower(1.0)], [_flower(2.0), _flower(3.0)], [_flower(4.0)]):
        response = client.post("/v1/models/iris/predict", json={"inputs": inputs})
        assert response.status_code == 200, response.text
    invalid = client.post("/v1/models/iris/predict", json={"inputs": [{"petal": 1}]})
    assert invalid.status_code == 400
    after = client.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        return scraped(after, name, **labels) - scraped(before.text, name, **labels)

    assert delta("modelhost_requests_total", **iris, outcome="ok") == 3.0
    assert delta("modelhost_requests_total", **iris, outcome="invalid_input") == 1.0
    assert delta("modelhost_request_duration_seconds_count", **iris) == 3.0
    assert delta("modelhost_batch_size_count", **iris) == 3.0
    assert delta("modelhost_batch_size_sum", **iris) == 4.0
    assert delta("modelhost_batch_size_bucket", **iris, le="1.0") == 2.0
    assert delta("modelhost_inference_duration_seconds_count", **iris) == 3.0
    assert "# TYPE modelhost_batch_size histogram" in after
    assert scraped(after, "modelhost_model_versions", state="ready") >= 1.0


# -- tokens, cost, jobs, model states ------------------------------------------------------------


@pytest_asyncio.fixture
async def priced(tmp_path: Path) -> AsyncIterator[Services]:
    """The composition root's services serving ``priced`` (1 token per input, pricing in EUR)."""
    settings = Settings(home=tmp_path / "home", demo=DemoSettings(enabled=False))
    services = build_services(settings)
    pricing = {"input": 1.0, "unit": "1k_tokens", "per_request": 0.25, "currency": "EUR"}
    directory = write_python_model(tmp_path / "models", "priced", pricing=pricing)
    services.registry.push(directory, actor="test", stage=Stage.PRODUCTION)
    await services.manager.refresh()
    await services.manager.wait_loaded(timeout=60)
    yield services
    await close_services(services)
    services.registry.engine.dispose()


@pytest.mark.asyncio
async def test_tokens_and_cost_of_live_traffic_are_counted(priced: Services) -> None:
    plane = priced.plane
    await plane.infer(InferenceRequest(model="priced", inputs=[{"text": "a"}, {"text": "b"}]))
    replay = InferenceRequest(model="priced", inputs=[{"text": "a"}], replay_of="rid-0")
    await plane.infer(replay)
    labels = {"model": "priced", "version": "1.0.0"}
    assert _sample(priced, "modelhost_tokens_total", **labels, kind="input") == 2.0
    assert _sample(priced, "modelhost_tokens_total", **labels, kind="output") == 0.0
    cost = _sample(priced, "modelhost_cost_total", **labels, currency="EUR")
    assert cost == pytest.approx(2 / 1000 + 0.25)


@pytest.mark.asyncio
async def test_jobs_record_their_queue_wait_and_latency_by_outcome(priced: Services) -> None:
    def job(text: Any) -> InferenceRequest:
        return InferenceRequest(
            model="priced", inputs=[{"text": text}], protocol="jobs", queued_s=2.0
        )

    await priced.plane.infer_many([job("a"), job("b"), job(1)])
    labels = {"model": "priced", "version": "1.0.0"}
    assert _sample(priced, "modelhost_job_queue_wait_seconds_count", **labels) == 3.0
    assert _sample(priced, "modelhost_job_queue_wait_seconds_sum", **labels) == 6.0
    assert _sample(priced, "modelhost_job_queue_wait_seconds_bucket", **labels, le="1.0") == 0
    ok = _sample(priced, "modelhost_job_latency_seconds_count", **labels, outcome="ok")
    assert ok == 2.0
    bad = {**labels, "outcome": "invalid_input"}
    assert _sample(priced, "modelhost_job_latency_seconds_count", **bad) == 1.0
    latency = _sample(priced, "modelhost_job_latency_seconds_sum", **labels, outcome="ok")
    assert latency is not None
    assert latency >= 4.0


@pytest.mark.asyncio
async def test_model_states_are_published_per_version(priced: Services) -> None:
    text = priced.metrics.exposition().decode()
    assert scraped(text, "modelhost_model_state", model="priced", state="ready") == 1.0
    assert scraped(text, "modelhost_model_state", model="priced", state="loading") == 0.0
    await priced.manager.unload("priced@1.0.0")
    text = priced.metrics.exposition().decode()
    assert scraped(text, "modelhost_model_state", model="priced", state="unloaded") == 1.0


def test_queue_depth_is_read_from_the_queue_at_scrape_time(engine: Engine) -> None:
    queue = SqlQueue(engine)
    metrics = Metrics()
    metrics.watch_jobs(queue.depth)
    text = metrics.exposition().decode()
    assert scraped(text, "modelhost_jobs", status="queued") == 0.0
    assert scraped(text, "modelhost_jobs", status="running") == 0.0
    for n in range(3):
        queue.enqueue(NewJob(tenant="acme", model="m", inputs=[n]))
    assert queue.claim("w", 30) is not None
    text = metrics.exposition().decode()
    assert scraped(text, "modelhost_jobs", status="queued") == 2.0
    assert scraped(text, "modelhost_jobs", status="running") == 1.0


def test_a_source_that_fails_leaves_its_family_empty_not_the_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()

    def down() -> dict[str, int]:
        raise ConnectionError("the database is down")

    metrics.watch_jobs(down)
    metrics.watch_model_versions(lambda: {"ready": 2})
    text = metrics.exposition().decode()
    assert "# TYPE modelhost_jobs gauge" in text
    assert scraped(text, "modelhost_model_versions", state="ready") == 2.0
    assert "reading modelhost_jobs failed" in caplog.text
