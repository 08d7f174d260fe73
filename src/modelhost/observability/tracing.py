"""OpenTelemetry tracing, behind the ``otel`` extra.

The composition root builds one :class:`Tracer` from ``Settings.tracing`` and hands it to what
records spans: the request middleware (``request``: one server span per HTTP request, a child
of the caller's W3C ``traceparent`` when it sends one), the data plane (``auth``,
``validation``, ``guards``, ``batch``, ``inference``, and for async jobs ``jobs`` and
``queue``) and the webhook deliverer (``webhook``, whose ``traceparent`` goes out with the
callback).

With tracing off the tracer is the base class: every method is a no-op that returns at once
(a span is a shared ``nullcontext``), so the request path pays a method call per span and
nothing else. With tracing on, spans go to an OTLP/HTTP exporter in batches; the provider is
this object's own (never OpenTelemetry's global one), so two apps in one process never mix.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from modelhost import __version__
from modelhost.config import TracingSettings
from modelhost.errors import MissingDependencyError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

AttributeValue = str | bool | int | float
Attributes = Mapping[str, AttributeValue]

_NULL: AbstractContextManager[Any] = contextlib.nullcontext()
_TRACE_HEADERS = (b"traceparent", b"tracestate")


class RequestSpan:
    """The handle of a request's span: what the middleware learns while it answers."""

    def status(self, code: int) -> None:
        """Record the HTTP status code sent."""

    def route(self, template: str) -> None:
        """Name the span after the matched route template (``POST /v1/models/{model}/...``)."""


_NULL_REQUEST: AbstractContextManager[RequestSpan] = contextlib.nullcontext(RequestSpan())


class Tracer:
    """Where spans go; this base class is the no-op tracer of a process with tracing off."""

    #: True when spans are recorded.
    enabled: bool = False

    def span(self, name: str, attributes: Attributes | None = None) -> AbstractContextManager[Any]:
        """A span around a block, the current span inside it (its children attach to it)."""
        return _NULL

    def record(self, name: str, seconds: float, attributes: Attributes | None = None) -> None:
        """A span that ends now and lasted ``seconds``: time measured before it could be
        traced (how long a job waited in the queue)."""

    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        request_id: str,
    ) -> AbstractContextManager[RequestSpan]:
        """The server span of one HTTP request, child of its ``traceparent`` when sent."""
        return _NULL_REQUEST

    def inject(self, headers: dict[str, str]) -> None:
        """Add ``traceparent`` (and ``tracestate``) of the current span to outgoing headers."""

    def shutdown(self) -> None:
        """Export what is buffered and stop; called once when the process stops."""


class _OtelRequestSpan(RequestSpan):
    def __init__(self, span: Span, method: str) -> None:
        self._span = span
        self._method = method

    def status(self, code: int) -> None:
        self._span.set_attribute("http.response.status_code", code)
        if code >= 500:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR))

    def route(self, template: str) -> None:
        self._span.set_attribute("http.route", template)
        self._span.update_name(f"{self._method} {template}")


class OtelTracer(Tracer):
    """Spans through the OpenTelemetry SDK, sampled by trace id ratio (a sampled incoming
    parent is always followed), exported over OTLP/HTTP in batches.

    Args:
        settings: ``Settings.tracing``.
        exporter: where finished spans go, each at once (tests pass the SDK's in-memory
            exporter); None: OTLP/HTTP to ``settings.otlp_endpoint``, batched.

    Raises:
        MissingDependencyError: the ``otel`` extra is not installed.
    """

    enabled = True

    def __init__(self, settings: TracingSettings, exporter: SpanExporter | None = None) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
            from opentelemetry.trace import SpanKind
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:
            raise MissingDependencyError("opentelemetry-sdk", extra="otel") from None
        resource = Resource.create(
            {"service.name": settings.service_name, "service.version": __version__}
        )
        self._provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio))
        )
        if exporter is None:
            self._provider.add_span_processor(BatchSpanProcessor(_otlp(settings.otlp_endpoint)))
        else:
            self._provider.add_span_processor(SimpleSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("modelhost", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._server = SpanKind.SERVER

    def span(self, name: str, attributes: Attributes | None = None) -> AbstractContextManager[Any]:
        """A span around a block, current inside it; an exception escaping it is recorded."""
        return self._tracer.start_as_current_span(name, attributes=attributes)

    def record(self, name: str, seconds: float, attributes: Attributes | None = None) -> None:
        """A span that ends now and lasted ``seconds``, child of the current span."""
        end = time.time_ns()
        span = self._tracer.start_span(
            name, start_time=end - int(max(0.0, seconds) * 1e9), attributes=attributes
        )
        span.end(end_time=end)

    @contextlib.contextmanager
    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        request_id: str,
    ) -> Iterator[RequestSpan]:
        """The server span of one HTTP request, child of its ``traceparent`` when sent."""
        carrier = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in headers
            if key in _TRACE_HEADERS
        }
        parent = self._propagator.extract(carrier) if carrier else None
        attributes: dict[str, AttributeValue] = {
            "http.request.method": method,
            "url.path": path,
            "modelhost.request_id": request_id,
        }
        with self._tracer.start_as_current_span(
            method, context=parent, kind=self._server, attributes=attributes
        ) as span:
            yield _OtelRequestSpan(span, method)

    def inject(self, headers: dict[str, str]) -> None:
        """Add the current span's ``traceparent`` (and ``tracestate``) to ``headers``."""
        self._propagator.inject(headers)

    def shutdown(self) -> None:
        """Export the buffered spans and stop the exporter."""
        self._provider.shutdown()


def _otlp(endpoint: str | None) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise MissingDependencyError("opentelemetry-exporter-otlp-proto-http", "otel") from None
    return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()


def build_tracer(settings: TracingSettings, exporter: SpanExporter | None = None) -> Tracer:
    """The tracer ``settings`` ask for: the no-op one unless tracing is enabled.

    Raises:
        MissingDependencyError: tracing is enabled without the ``otel`` extra.
    """
    if not settings.enabled:
        return Tracer()
    return OtelTracer(settings, exporter)


def current_ids() -> tuple[str, str] | None:
    """The current trace and span ids (hex) when a span is recording, for log lines."""
    try:
        from opentelemetry.trace import get_current_span
    except ImportError:
        return None
    context = get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
