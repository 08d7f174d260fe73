"""Log lines for people (``text``, the default) or for log pipelines (``json``).

``MODELHOST_LOG_FORMAT=json`` makes every line one JSON object::

    {"time":"2025-06-01T12:00:00.123Z","level":"INFO","logger":"uvicorn.access",
     "message":"127.0.0.1:50312 - \"POST /v1/models/iris/predict HTTP/1.1\" 200",
     "request_id":"4f1c…","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331"}

``request_id`` is the id of the HTTP request being answered (the request-id middleware sets
:data:`REQUEST_ID` for the time it runs); ``trace_id`` and ``span_id`` are there while a span is
recording (tracing on). :func:`logging_config` is a :func:`logging.config.dictConfig` mapping
that also configures uvicorn's loggers, so the server's own lines are JSON too, in every worker
process.
"""

from __future__ import annotations

import logging
import logging.config
import time
from contextvars import ContextVar
from typing import Any, Literal

import orjson

from modelhost.observability.tracing import current_ids

#: The id of the HTTP request being answered, for log lines (set by the request-id middleware).
REQUEST_ID: ContextVar[str | None] = ContextVar("modelhost_request_id", default=None)

LogFormat = Literal["text", "json"]
#: The layout of ``text`` lines.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access", "_granian", "granian.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ms), level, logger, message, request_id,
    trace_id and span_id when known, and the formatted exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        ids = current_ids()
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def logging_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """A ``dictConfig`` mapping: one stderr handler in ``log_format`` on the root logger, and
    uvicorn's (and Granian's) loggers sent to it rather than to their own handlers."""
    formatter: dict[str, Any] = (
        {"()": f"{JsonFormatter.__module__}.{JsonFormatter.__qualname__}"}
        if log_format == "json"
        else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"modelhost": formatter},
        "handlers": {
            "modelhost": {
                "class": "logging.StreamHandler",
                "formatter": "modelhost",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["modelhost"]},
        "loggers": {
            name: {"handlers": [], "propagate": True, "level": level.upper()} for name in _UVICORN
        },
    }


def configure_logging(level: str, log_format: LogFormat) -> dict[str, Any]:
    """Configure this process's logging; returns the mapping, for servers that configure
    their worker processes themselves (uvicorn's ``log_config``)."""
    config = logging_config(level, log_format)
    logging.config.dictConfig(config)
    return config
