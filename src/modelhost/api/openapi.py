"""The OpenAPI document (``GET /openapi.json``): what FastAPI derives from the routes, made
complete and true.

FastAPI documents what a route's signature declares. modelhost's routes read most bodies by
hand (so their error messages name the field in modelhost's words) and answer errors through
one handler (:mod:`modelhost.api.errors`), so the derived document needs four repairs, made
here once for every router rather than in each:

* request bodies documented with ``openapi_extra`` carry pydantic's ``$defs``: they move to
  ``components/schemas`` and every ``#/$defs/...`` reference follows them;
* FastAPI's default 422 answer (``HTTPValidationError``) is never sent: a request that fails
  validation is a 400 with modelhost's error body, so the 422 goes and a 400 takes its place;
* the answers every route can give by construction are added where the route did not list
  them: 400 (a parameter or the body is wrong), 404 (a path names something unknown), 401 and
  403 (the route needs a credential), 413 and 415 (the route reads a body);
* every error answer's body is the one modelhost sends: ``ErrorBody``, or ``V2ErrorBody``
  from a handler of the Open Inference Protocol routes (authentication answers come from the
  middleware and keep ``ErrorBody`` there too).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.routing import compile_path

from modelhost.protocol.v1 import ErrorBody
from modelhost.protocol.v2 import V2ErrorBody
from modelhost.security.auth import required_scope

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_UPPER = {m.upper() for m in _METHODS}
_JSON = "application/json"
#: A server-sent event, as a client parses it.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "description": "JSON"},
        "id": {"type": "string"},
    },
}
_DEFS = "#/$defs/"
_COMPONENTS = "#/components/schemas/"
_ERROR_REF = f"{_COMPONENTS}ErrorBody"
_V2_ERROR_REF = f"{_COMPONENTS}V2ErrorBody"
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")

#: What each error status means, in every operation that can answer it.
DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: a parameter or the body is wrong (``param`` names it)",
    401: "No credential, or one that is unknown, expired or revoked",
    403: "The credential lacks the scope this route needs",
    404: "The model, version, job or record named does not exist",
    409: "Conflicts with the current state (a gate refused, a duplicate, an illegal change)",
    413: "The body is larger than this route accepts",
    415: "The body's Content-Type is not one this route reads",
    422: "Refused by a guard or a feature policy (content blocked, features unavailable)",
    429: "Over a rate limit or budget; Retry-After says when to try again",
    503: "Not ready, or no capacity now; Retry-After when a wait will help",
    504: "The model did not answer within its timeout",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer"},
    }
}


def error_responses(*codes: int, v2: bool = False) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route for ``codes``, each with modelhost's error body."""
    model: type[BaseModel] = V2ErrorBody if v2 else ErrorBody
    return {code: {"model": model, "description": DESCRIPTIONS[code]} for code in codes}


def json_body(
    schema: dict[str, Any], *, required: bool = True, more: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``openapi_extra=`` documenting a JSON request body (``more``: other media types, such
    as ``{"application/x-ndjson": {"schema": {"type": "string"}}}``)."""
    content = {_JSON: {"schema": schema}, **(more or {})}
    return {"requestBody": {"required": required, "content": content}}


def body_of(model: type[BaseModel], **options: Any) -> dict[str, Any]:
    """``openapi_extra=`` documenting a request body by a pydantic model."""
    return json_body(model.model_json_schema(), **options)


# -- repairs ---------------------------------------------------------------------------------


def _lift(node: Any, defs: dict[str, Any]) -> Any:
    """``node`` with every ``$defs`` moved into ``defs`` and its references rewritten."""
    if isinstance(node, list):
        return [_lift(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    for name, definition in node.get("$defs", {}).items():
        defs.setdefault(name, _lift(definition, defs))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$defs":
            continue
        if key == "$ref" and isinstance(value, str) and value.startswith(_DEFS):
            out[key] = _COMPONENTS + value.removeprefix(_DEFS)
        else:
            out[key] = _lift(value, defs)
    return out


def _error(code: int, ref: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": DESCRIPTIONS[code],
        "content": {_JSON: {"schema": {"$ref": ref}}},
    }
    if code in (429, 503):
        answer["headers"] = _RETRY_AFTER
    return answer


def _is_fastapi_422(answer: dict[str, Any]) -> bool:
    schema = answer.get("content", {}).get(_JSON, {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def _complete_operation(path: str, method: str, op: dict[str, Any]) -> None:
    responses: dict[str, Any] = op.setdefault("responses", {})
    if "422" in responses and _is_fastapi_422(responses["422"]):
        del responses["422"]
    handler_ref = _V2_ERROR_REF if path.startswith("/v2") else _ERROR_REF
    wanted: list[tuple[int, str]] = []
    if op.get("parameters") or "requestBody" in op:
        wanted.append((400, handler_ref))
    if "{" in path:
        wanted.append((404, handler_ref))
    if required_scope(method.upper(), path) is not None:
        wanted += [(401, _ERROR_REF), (403, _ERROR_REF)]
    if "requestBody" in op:
        wanted += [(413, handler_ref), (415, handler_ref)]
    for code, ref in wanted:
        responses.setdefault(str(code), _error(code, ref))
    for retried in ("429", "503"):
        if retried in responses:
            responses[retried].setdefault("headers", _RETRY_AFTER)


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """Repair a FastAPI-derived document in place (see the module docstring); returns it."""
    components = doc.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    defs: dict[str, Any] = {}
    doc["paths"] = _lift(doc.get("paths", {}), defs)
    for name, definition in defs.items():
        schemas.setdefault(name, definition)
    schemas.setdefault("ErrorBody", _lift(ErrorBody.model_json_schema(), schemas))
    schemas.setdefault("V2ErrorBody", V2ErrorBody.model_json_schema())
    for path, item in doc["paths"].items():
        for method in _METHODS:
            if method in item:
                _complete_operation(path, method, item[method])
    for name in _FASTAPI_VALIDATION:
        schemas.pop(name, None)
    return doc


def allowed_methods(app: FastAPI, path: str) -> set[str]:
    """The methods the document lists for the resource at ``path`` (upper case).

    Where several templates match, the most literal wins: ``/v1/batch/predict`` is the
    ``POST`` resource, not a batch named ``predict``.
    """
    table: list[tuple[int, re.Pattern[str], set[str]]] | None = getattr(
        app.state, "allowed_methods", None
    )
    if table is None:
        table = [
            (template.count("{"), compile_path(template)[0], {m.upper() for m in item})
            for template, item in app.openapi().get("paths", {}).items()
        ]
        table = [(params, pattern, methods & _UPPER) for params, pattern, methods in table]
        app.state.allowed_methods = table
    matching = [(params, methods) for params, pattern, methods in table if pattern.match(path)]
    if not matching:
        return set()
    fewest = min(params for params, _ in matching)
    return set().union(*(methods for params, methods in matching if params == fewest))


def install(app: FastAPI) -> None:
    """Serve the repaired document at ``app.openapi_url`` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = complete(doc)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
