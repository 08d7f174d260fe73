"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task per request)."""

from __future__ import annotations

import logging
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelhost.api.errors import internal_error

log = logging.getLogger("modelhost.api")
_HEADER = b"x-request-id"


class RequestIdMiddleware:
    """Give every HTTP request an id (the caller's ``X-Request-ID`` or a new one) and echo it.

    It also turns an unhandled exception into a JSON 500 that still carries the id, and logs
    the traceback under that id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
        scope.setdefault("state", {})["request_id"] = rid.decode("latin-1")
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (_HEADER, rid)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # a bug of ours: log it with the id, answer 500 if we still can
            log.exception("unhandled error, request id %s", rid.decode("latin-1"))
            if started:
                raise
            await internal_error(rid.decode("latin-1"))(scope, receive, send_with_id)
