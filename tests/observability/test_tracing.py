"""OpenTelemetry tracing: the no-op tracer, spans of the request path recorded by the real SDK
(in-memory exporter), the ``traceparent`` honoured by the request middleware and sent with
webhooks, and a real server exporting over OTLP/HTTP to a loopback collector."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from modelhost.api.middleware import RequestIdMiddleware
from modelhost.app import Services, build_services, close_services
from modelhost.config import DemoSettings, Settings, TracingSettings
from modelhost.errors import InvalidInput
from modelhost.inference import InferenceRequest
from modelhost.jobs import SqlQueue
from modelhost.jobs.webhooks import WebhookDeliverer
from modelhost.observability.tracing import OtelTracer, Tracer, build_tracer, current_ids
from modelhost.registry import Stage, make_engine
from modelhost.webhooks.egress import Egress
from tests.conftest import Server, run_cli, start_server, stop_server, write_python_model
from tests.jobs.test_webhooks import FAST, LOOPBACK, MASTER, Receiver, Reply, finished, settle

ON = TracingSettings(enabled=True, service_name="modelhost-tests")
PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"


def names(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> list[str]:
    return [span.name for span in spans]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_tracing_off_is_the_no_op_tracer() -> None:
    tracer = build_tracer(TracingSettings())
    assert type(tracer) is Tracer
    assert not tracer.enabled
    assert tracer.span("a") is tracer.span("b")  # one shared null context: nothing allocated
    with tracer.span("a") as span, tracer.request("GET", "/", [], "rid") as request:
        assert span is None
        request.status(200)
        request.route("/")
    headers: dict[str, str] = {}
    tracer.inject(headers)
    tracer.record("queue", 1.0)
    tracer.shutdown()
    assert headers == {}
    assert current_ids() is None


def test_tracing_on_without_the_extra_names_it() -> None:
    script = (
        "import sys\n"
        "sys.modules['opentelemetry.sdk'] = None  # as if the otel extra were not installed\n"
        "from modelhost.config import TracingSettings\n"
        "from modelhost.errors import MissingDependencyError\n"
        "from modelhost.observability.tracing import build_tracer\n"
        "try:\n"
        "    build_tracer(TracingSettings(enabled=True))\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc.extra, exc.message)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.startswith("otel ")
    assert "pip install 'modelhost[otel]'" in done.stdout


def test_record_places_a_span_of_the_given_length_under_the_current_one() -> None:
    exporter = InMemorySpanExporter()
    tracer = OtelTracer(ON, exporter)
    with tracer.span("outer"):
        tracer.record("queue", 2.5, {"modelhost.job_id": "job_1"})
    queue, outer = exporter.get_finished_spans()
    assert (queue.name, outer.name) == ("queue", "outer")
    assert parent_of(queue) == outer.context.span_id
    assert queue.end_time is not None
    assert queue.start_time is not None
    assert (queue.end_time - queue.start_time) / 1e9 == pytest.approx(2.5, abs=1e-6)
    assert queue.attributes == {"modelhost.job_id": "job_1"}
    assert outer.resource.attributes["service.name"] == "modelhost-tests"
    tracer.shutdown()


# -- the data plane ------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[Services, InMemorySpanExporter]]:
    """The composition root's services with a tracer exporting to memory, serving ``echo``
    (plain) and ``batched`` (adaptive batching)."""
    exporter = InMemorySpanExporter()
    settings = Settings(home=tmp_path / "home", demo=DemoSettings(enabled=False), tracing=ON)
    services = build_services(settings, tracer=OtelTracer(ON, exporter))
    for directory in (
        write_python_model(tmp_path / "models", "echo"),
        write_python_model(
            tmp_path / "models",
            "batched",
            batching={"max_batch_size": 8, "max_batch_delay_ms": 20},
        ),
    ):
        services.registry.push(directory, actor="test", stage=Stage.PRODUCTION)
    await services.manager.refresh()
    await services.manager.wait_loaded(timeout=60)
    yield services, exporter
    await close_services(services)
    services.registry.engine.dispose()


@pytest.mark.asyncio
async def test_each_step_of_a_request_is_a_child_span(
    traced: tuple[Services, InMemorySpanExporter],
) -> None:
    services, exporter = traced
    with services.plane.tracer.span("request"):
        await services.plane.infer(InferenceRequest(model="echo", inputs=[{"text": "hi"}]))
    spans = exporter.get_finished_spans()
    assert names(spans) == ["validation", "auth", "inference", "guards", "request"]
    request = spans[-1]
    assert {parent_of(span) for span in spans[:-1]} == {request.context.span_id}
    assert len({span.context.trace_id for span in spans}) == 1
    assert spans[3].attributes == {"modelhost.guards": "output"}


@pytest.mark.asyncio
async def test_a_failed_step_is_recorded_with_its_error(
    traced: tuple[Services, InMemorySpanExporter],
) -> None:
    services, exporter = traced
    with pytest.raises(InvalidInput, match=r"inputs\[0\]\.text"):
        await services.plane.infer(
            InferenceRequest(model="echo", inputs=[{"text": "far too long for the schema"}])
        )
    (validation,) = exporter.get_finished_spans()
    assert validation.name == "validation"
    assert not validation.status.is_ok
    assert [event.name for event in validation.events] == ["exception"]


@pytest.mark.asyncio
async def test_batched_requests_wait_in_batch_spans_around_one_merged_inference(
    traced: tuple[Services, InMemorySpanExporter],
) -> None:
    services, exporter = traced
    requests = [InferenceRequest(model="batched", inputs=[{"text": f"t{n}"}]) for n in range(3)]
    await asyncio.gather(*(services.plane.infer(r) for r in requests))
    spans = exporter.get_finished_spans()
    batches = [s for s in spans if s.name == "batch"]
    (inference,) = [s for s in spans if s.name == "inference"]
    assert len(batches) == 3
    # the merged call runs once, under the batch span of the request that opened the batch
    assert parent_of(inference) in {b.context.span_id for b in batches}


@pytest.mark.asyncio
async def test_a_job_batch_is_one_trace_with_its_queue_waits(
    traced: tuple[Services, InMemorySpanExporter],
) -> None:
    services, exporter = traced
    requests = [
        InferenceRequest(
            model="echo", inputs=[{"text": "a"}], protocol="jobs", request_id=f"job_{n}", queued_s=n
        )
        for n in (1, 2)
    ]
    await services.plane.infer_many(requests)
    spans = exporter.get_finished_spans()
    (jobs,) = [s for s in spans if s.name == "jobs"]
    assert jobs.parent is None
    assert jobs.attributes == {"modelhost.jobs": 2}
    queues = sorted((s for s in spans if s.name == "queue"), key=lambda s: s.start_time or 0)
    assert [q.attributes for q in queues] == [
        {"modelhost.job_id": "job_2"},
        {"modelhost.job_id": "job_1"},
    ]
    waits = [((q.end_time or 0) - (q.start_time or 0)) / 1e9 for q in queues]
    assert waits == [pytest.approx(2.0, abs=1e-3), pytest.approx(1.0, abs=1e-3)]
    assert {s.context.trace_id for s in spans} == {jobs.context.trace_id}
    assert {"validation", "auth", "inference", "guards"} <= set(names(spans))


# -- the request middleware -----------------------------------------------------------------------


def _app(tracer: Tracer) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{name}")
    async def item(name: str) -> dict[str, Any]:
        with tracer.span("work"):
            ids = current_ids()
        return {"name": name, "ids": ids}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_middleware(RequestIdMiddleware, tracer=tracer)
    return app


@pytest.mark.asyncio
async def test_the_request_span_continues_the_callers_traceparent() -> None:
    exporter = InMemorySpanExporter()
    tracer = OtelTracer(ON, exporter)
    transport = httpx.ASGITransport(app=_app(tracer))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        answer = await client.get(
            "/items/a", headers={"traceparent": TRACEPARENT, "x-request-id": "rid-7"}
        )
    assert answer.status_code == 200
    work, request = exporter.get_finished_spans()
    assert request.name == "GET /items/{name}"
    assert request.context.trace_id == int(PARENT_TRACE, 16)
    assert parent_of(request) == int(PARENT_SPAN, 16)
    assert request.parent is not None
    assert request.parent.is_remote
    assert request.attributes is not None
    assert request.attributes["http.route"] == "/items/{name}"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["modelhost.request_id"] == "rid-7"
    assert request.attributes["url.path"] == "/items/a"
    assert parent_of(work) == request.context.span_id
    # what a log line inside the handler would carry
    assert answer.json()["ids"] == [PARENT_TRACE, format(work.context.span_id, "016x")]


@pytest.mark.asyncio
async def test_without_traceparent_a_new_trace_starts_and_a_500_is_an_error() -> None:
    exporter = InMemorySpanExporter()
    tracer = OtelTracer(ON, exporter)
    transport = httpx.ASGITransport(app=_app(tracer), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/boom")).status_code == 500
    (request,) = exporter.get_finished_spans()
    assert request.parent is None
    assert request.context.trace_id != int(PARENT_TRACE, 16)
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 500
    assert not request.status.is_ok


# -- webhooks -------------------------------------------------------------------------------------


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[SqlQueue]:
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    yield SqlQueue(engine)
    engine.dispose()


@pytest.mark.asyncio
async def test_a_webhook_carries_the_traceparent_of_its_delivery_span(queue: SqlQueue) -> None:
    exporter = InMemorySpanExporter()
    receiver = Receiver([Reply(200)])
    try:
        job = finished(queue, receiver.url())
        egress = Egress(LOOPBACK, tracer=OtelTracer(ON, exporter))
        hooks = WebhookDeliverer(queue, egress, MASTER, FAST, worker="tests")
        delivered = await settle(hooks, queue, job.id)
    finally:
        receiver.close()
    assert delivered.webhook is not None
    assert delivered.webhook["state"] == "delivered"
    (span,) = exporter.get_finished_spans()
    assert span.name == "webhook"
    assert span.attributes == {"server.address": "127.0.0.1"}
    sent = receiver.received[0].headers["traceparent"]
    trace_id, span_id = format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")
    version, sent_trace, sent_span, flags = sent.split("-")
    assert (version, sent_trace, sent_span) == ("00", trace_id, span_id)
    assert int(flags, 16) & 1  # sampled


# -- a real server exporting over OTLP/HTTP ----------------------------------------------------


def collected_spans(receiver: Receiver) -> list[Any]:
    """Every span the loopback collector received, decoded from OTLP protobuf."""
    spans: list[Any] = []
    for request in list(receiver.received):
        export = ExportTraceServiceRequest()
        export.ParseFromString(request.body)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                spans.extend(scope.spans)
    return spans


@pytest.fixture(scope="module")
def collector() -> Iterator[Receiver]:
    """A loopback OTLP/HTTP collector: keeps every export request it receives."""
    receiver = Receiver([Reply(200)])
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def traced_server(
    tmp_path_factory: pytest.TempPathFactory, collector: Receiver
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("traced")
    directory = write_python_model(home / "src", "echo")
    assert run_cli(home, "models", "push", str(directory), "--stage", "production").returncode == 0
    env = {
        "MODELHOST_TRACING__ENABLED": "true",
        "MODELHOST_TRACING__OTLP_ENDPOINT": collector.url("/v1/traces"),
        "MODELHOST_LOG_FORMAT": "json",
        "MODELHOST_SERVER__ACCESS_LOG": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    server = start_server(home, home / "server.log", "--no-demo", env=env)
    yield server
    stop_server(server)


def test_a_real_server_continues_the_trace_and_exports_it_over_otlp(
    traced_server: Server, collector: Receiver
) -> None:
    with traced_server.client() as client:
        answer = client.post(
            "/v1/models/echo/predict",
            json={"inputs": [{"text": "hi"}]},
            headers={"traceparent": TRACEPARENT, "x-request-id": "traced-1"},
        )
    assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 30
    mine: list[Any] = []
    while time.monotonic() < deadline:
        mine = [s for s in collected_spans(collector) if s.trace_id.hex() == PARENT_TRACE]
        if {"inference", "POST /v1/models/{model}/predict"} <= {s.name for s in mine}:
            break
        time.sleep(0.1)
    by_name = {s.name: s for s in mine}
    request = by_name["POST /v1/models/{model}/predict"]
    assert request.parent_span_id.hex() == PARENT_SPAN
    for step in ("validation", "auth", "inference", "guards"):
        assert by_name[step].parent_span_id == request.span_id, step
    text = traced_server.log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("request_id") == "traced-1"]
    assert access, lines[-5:]
    assert access[0]["logger"] == "uvicorn.access"
    assert access[0]["trace_id"] == PARENT_TRACE
    assert access[0]["span_id"] == request.span_id.hex()
