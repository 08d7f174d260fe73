"""REST v1 drift routes: a version's drift scores, and supplying its reference data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from modelhost.api.auth import principal_of
from modelhost.api.http import json_response, read_body
from modelhost.api.openapi import json_body
from modelhost.errors import Forbidden, InvalidInput
from modelhost.protocol.v1 import ErrorBody
from modelhost.security.keys import SYSTEM_TENANT, Scope

if TYPE_CHECKING:
    from modelhost.drift.monitor import DriftMonitor

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 415)
}
#: Content types a reference upload may have.
REFERENCE_MEDIA = (
    "text/csv",
    "application/csv",
    "application/json",
    "application/x-ndjson",
    "application/jsonl",
    "application/x-jsonlines",
)

_TEXT: dict[str, Any] = {"schema": {"type": "string"}}
_REFERENCE_DOC = json_body(
    {
        "type": "array",
        "description": "The version's inputs, one per row, as sent to predict.",
    },
    more={media: _TEXT for media in REFERENCE_MEDIA if media != "application/json"},
)


def build_router(monitor: DriftMonitor) -> APIRouter:
    """The drift routes over ``monitor``."""
    router = APIRouter(tags=["drift"])

    @router.get(
        "/v1/models/{model}/drift",
        summary="Drift of a version's live inputs from its reference",
        responses=_ERRORS,
    )
    async def get_drift(
        model: str,
        request: Request,
        version: str | None = None,
        detail: str | None = Query(None, json_schema_extra={"enum": ["histograms", ""]}),
    ) -> Response:
        if detail not in (None, "", "histograms"):
            raise InvalidInput("'detail' is 'histograms' or absent", param="detail")
        who = principal_of(request.scope)
        if detail == "histograms" and who.tenant != SYSTEM_TENANT:
            # scores are model metadata; live shares describe every tenant's requests
            raise Forbidden(
                f"principal {who.id} may read the drift scores but not the live histograms: "
                f"they mix every tenant's requests, so only tenant {SYSTEM_TENANT!r} reads them",
                param="detail",
            )
        name, _, pinned = model.partition("@")
        info = await monitor.manager.resolve(name, version or pinned or None)
        body = await monitor.describe(info, histograms=detail == "histograms")
        return json_response(body, headers={"Cache-Control": "no-store"})

    @router.put(
        "/v1/models/{model}/versions/{version}/drift/reference",
        summary="Supply a version's reference data (CSV, JSONL or JSON rows)",
        responses=_ERRORS,
        openapi_extra=_REFERENCE_DOC,
    )
    async def put_reference(model: str, version: str, request: Request) -> Response:
        who = principal_of(request.scope)
        who.require(Scope.MODELS_WRITE)
        info = await monitor.manager.resolve(model, version)
        body = await read_body(request, monitor.settings.max_reference_bytes, REFERENCE_MEDIA)
        if not body.strip():
            raise InvalidInput("the body is empty; send CSV, JSONL or JSON rows", param="body")
        stored = await monitor.supply(info, body, request.headers.get("content-type"), actor=who.id)
        return json_response(
            {
                "object": "drift_reference",
                "model": info.model,
                "version": info.version,
                **stored.describe(),
            }
        )

    return router
