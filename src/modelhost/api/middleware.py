"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task per request)."""

from __future__ import annotations

import logging
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelhost.api.errors import internal_error
from modelhost.observability.logs import REQUEST_ID
from modelhost.observability.tracing import RequestSpan, Tracer

log = logging.getLogger("modelhost.api")
_HEADER = b"x-request-id"


class RequestIdMiddleware:
    """Give every HTTP request an id (the caller's ``X-Request-ID`` or a new one) and echo it.

    The id is also put in :data:`~modelhost.observability.logs.REQUEST_ID` while the request runs,
    so log lines carry it. With tracing on, the request runs inside its server span (a child of
    the caller's ``traceparent``), named after the matched route once routing found it.

    It also turns an unhandled exception into a JSON 500 that still carries the id, and logs
    the traceback under that id.
    """

    def __init__(self, app: ASGIApp, tracer: Tracer | None = None) -> None:
        self.app = app
        self.tracer = tracer if tracer is not None else Tracer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        for key, value in scope["headers"]:
            if key == _HEADER:
                rid = value[:128]
                break
        if not rid:
            rid = secrets.token_hex(12).encode()
        text = rid.decode("latin-1")
        scope.setdefault("state", {})["request_id"] = text
        token = REQUEST_ID.set(text)
        try:
            if self.tracer.enabled:
                with self.tracer.request(
                    scope["method"], scope["path"], scope["headers"], text
                ) as span:
                    await self._answer(scope, receive, send, rid, span)
            else:
                await self._answer(scope, receive, send, rid, None)
        finally:
            REQUEST_ID.reset(token)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, rid: bytes, span: RequestSpan | None
    ) -> None:
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (_HEADER, rid)]
                if span is not None:
                    span.status(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # a bug of ours: log it with the id, answer 500 if we still can
            log.exception("unhandled error, request id %s", rid.decode("latin-1"))
            if started:
                raise
            await internal_error(rid.decode("latin-1"))(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            if span is not None and route is not None:
                span.route(getattr(route, "path", "") or scope["path"])
