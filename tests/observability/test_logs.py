"""Log lines: JSON with the request and trace ids, or text; one dictConfig for modelhost and
uvicorn."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from types import TracebackType

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from modelhost.config import TracingSettings
from modelhost.observability.logs import REQUEST_ID, JsonFormatter, LogFormat, logging_config
from modelhost.observability.tracing import OtelTracer

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def record(message: str = "hello %s", exc_info: ExcInfo | None = None) -> logging.LogRecord:
    args = ("world",) if "%s" in message else ()
    return logging.getLogger("modelhost.tests").makeRecord(
        "modelhost.tests", logging.WARNING, __file__, 1, message, args, exc_info
    )


def test_a_json_line_has_time_level_logger_and_message() -> None:
    line = json.loads(JsonFormatter().format(record()))
    assert set(line) == {"time", "level", "logger", "message"}
    assert (line["level"], line["logger"], line["message"]) == (
        "WARNING",
        "modelhost.tests",
        "hello world",
    )
    assert line["time"].endswith("Z")
    assert len(line["time"]) == len("2025-06-01T12:00:00.123Z")


def test_the_request_id_and_the_trace_are_on_the_line_while_they_are_current() -> None:
    tracer = OtelTracer(TracingSettings(enabled=True), InMemorySpanExporter())
    token = REQUEST_ID.set("rid-42")
    try:
        with tracer.span("work"):
            inside = json.loads(JsonFormatter().format(record()))
    finally:
        REQUEST_ID.reset(token)
    outside = json.loads(JsonFormatter().format(record()))
    assert inside["request_id"] == "rid-42"
    assert len(inside["trace_id"]) == 32
    assert len(inside["span_id"]) == 16
    assert "request_id" not in outside
    assert "trace_id" not in outside
    tracer.shutdown()


def test_an_exception_is_kept_on_its_line() -> None:
    try:
        raise ValueError("broken")
    except ValueError as exc:
        failed = record("it failed", (ValueError, exc, exc.__traceback__))
    line = json.loads(JsonFormatter().format(failed))
    assert line["message"] == "it failed"
    assert "ValueError: broken" in line["exception"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "_granian", "granian.access"):
        logging.getLogger(name).handlers.clear()


@pytest.mark.parametrize("log_format", ["json", "text"])
@pytest.mark.usefixtures("restore_logging")
def test_the_config_sends_modelhost_and_uvicorn_lines_to_one_handler(
    log_format: LogFormat,
) -> None:
    config = logging_config("info", log_format)
    config["handlers"]["modelhost"]["stream"] = stream = io.StringIO()
    logging.config.dictConfig(config)
    logging.getLogger("modelhost.tests").info("from modelhost")
    logging.getLogger("uvicorn.access").info("from uvicorn")
    logging.getLogger("modelhost.tests").debug("not at info")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    if log_format == "json":
        assert [json.loads(line)["logger"] for line in lines] == [
            "modelhost.tests",
            "uvicorn.access",
        ]
    else:
        assert lines[1].endswith("INFO uvicorn.access: from uvicorn")
