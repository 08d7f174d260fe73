"""The authentication middleware: every HTTP route but the public ones needs a credential
with the route's scope (``security.auth.required_scope``)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from modelhost.api.errors import modelhost_response
from modelhost.errors import Forbidden, Unauthenticated
from modelhost.security.auth import Authenticator, bearer, required_scope
from modelhost.security.keys import ANONYMOUS, Principal

_AUTHORIZATION = b"authorization"
_API_KEY = b"x-api-key"


def principal_of(scope: Scope) -> Principal:
    """The principal the middleware put on the request (anonymous with auth off)."""
    found = scope.get("state", {}).get("principal")
    return found if isinstance(found, Principal) else ANONYMOUS


class AuthMiddleware:
    """Authenticates the caller, checks the route's scope, and stores the principal in the
    request state for the data plane (which counts limits and budgets by it)."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    def _credential(self, scope: Scope) -> str | None:
        for key, value in scope["headers"]:
            if key == _AUTHORIZATION:
                return bearer(value.decode("latin-1"))
            if key == _API_KEY:
                return value.decode("latin-1").strip() or None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        needed = required_scope(scope["method"], scope["path"])
        if needed is None or not self.authenticator.enabled:
            state["principal"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.authenticator.authenticate(self._credential(scope))
            principal.require(needed)
        except (Unauthenticated, Forbidden) as exc:
            response = modelhost_response(exc, str(state.get("request_id", "")))
            if isinstance(exc, Unauthenticated):
                response.headers["WWW-Authenticate"] = 'Bearer realm="modelhost"'
            await response(scope, receive, send)
            return
        state["principal"] = principal
        await self.app(scope, receive, send)
