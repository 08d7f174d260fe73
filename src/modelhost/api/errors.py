"""The only place where errors become HTTP responses.

Every error body is ``{"error": {"type", "message", "param", "code", "request_id"}}`` — the
shape of seed 004 and, field for field, of the OpenAI API, so one body serves every surface.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from modelhost.api.openapi import allowed_methods
from modelhost.errors import (
    BudgetExceeded,
    ConfigError,
    Conflict,
    FeaturesUnavailable,
    Forbidden,
    GateRefused,
    InferenceTimeout,
    InvalidInput,
    ModelhostError,
    ModelNotReady,
    NotFound,
    OutputMismatch,
    PayloadTooLarge,
    RateLimited,
    RegistryError,
    ServiceError,
    Unauthenticated,
    UnsupportedMediaType,
)
from modelhost.security.guards import ContentBlocked

#: (status, type) per error class; the first match along the MRO wins.
_STATUS: dict[type[ModelhostError], tuple[int, str]] = {
    ContentBlocked: (422, "content_blocked"),
    FeaturesUnavailable: (422, "features_unavailable"),
    Unauthenticated: (401, "authentication_error"),
    Forbidden: (403, "permission_error"),
    BudgetExceeded: (429, "budget_exceeded"),
    RateLimited: (429, "rate_limit_exceeded"),
    UnsupportedMediaType: (415, "unsupported_media_type"),
    InvalidInput: (400, "invalid_request_error"),
    PayloadTooLarge: (413, "payload_too_large"),
    NotFound: (404, "not_found_error"),
    ModelNotReady: (503, "model_not_ready"),
    InferenceTimeout: (504, "timeout_error"),
    ServiceError: (503, "service_unavailable"),
    OutputMismatch: (503, "output_mismatch"),
    GateRefused: (409, "gate_refused"),
    Conflict: (409, "conflict_error"),
    ConfigError: (400, "invalid_request_error"),
    RegistryError: (500, "server_error"),
}

_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request_error",
}


def request_id(request: Request) -> str:
    """The request's id, set by the request-id middleware."""
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_body(
    status: int,
    kind: str,
    message: str,
    *,
    param: str | None,
    rid: str,
    code: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    """A JSON error response (``extra`` adds fields to the error object, such as the
    ``report`` of a refused promotion)."""
    error: dict[str, Any] = {
        "type": kind,
        "message": message,
        "param": param,
        "code": code or kind,
        "request_id": rid,
    }
    if extra:
        error.update(extra)
    body = {"error": error}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def status_for(exc: ModelhostError) -> tuple[int, str]:
    """HTTP status and error type of a modelhost error."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500, "server_error"


def modelhost_response(exc: ModelhostError, rid: str) -> Response:
    """The HTTP response of a modelhost error, with Retry-After where it applies."""
    status, kind = status_for(exc)
    extra = {"report": exc.report} if isinstance(exc, GateRefused) else None
    response = error_body(status, kind, exc.message, param=exc.param, rid=rid, extra=extra)
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry)))
    if isinstance(exc, RateLimited):
        response.headers["X-RateLimit-Limit"] = str(exc.limit)
        response.headers["X-RateLimit-Remaining"] = str(exc.remaining)
        response.headers["X-RateLimit-Reset"] = str(math.ceil(exc.reset))
    return response


async def _modelhost(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ModelhostError)
    return modelhost_response(exc, request_id(request))


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    kind = _HTTP_TYPES.get(exc.status_code, "http_error")
    message = str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route whose path matched; a path served by
        # several routes (GET and POST /v1/keys) accepts the methods of all of them
        routed = {m.strip() for m in headers.get("Allow", "").split(",") if m.strip()}
        every = routed | allowed_methods(request.app, request.url.path)
        headers["Allow"] = ", ".join(sorted(every))
        message = f"method {request.method} is not allowed here; use {headers['Allow']}"
    response = error_body(exc.status_code, kind, message, param=None, rid=request_id(request))
    for key, value in headers.items():
        response.headers[key] = value
    return response


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = _loc(tuple(first.get("loc", ())))
    message = f"{param}: {first.get('msg', 'invalid')}"
    return error_body(400, "invalid_request_error", message, param=param, rid=request_id(request))


def internal_error(rid: str) -> Response:
    """The 500 answer to a bug of ours (never to a caller's mistake)."""
    return error_body(
        500,
        "server_error",
        "internal error; the request id identifies it in the server log",
        param=None,
        rid=rid,
    )


def install(app: FastAPI) -> None:
    """Register every exception handler on ``app``."""
    app.add_exception_handler(ModelhostError, _modelhost)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
