"""REST v1 feature-store routes of a model that reads stored features.

* ``GET /v1/models/{m}/feature-store``: what the version reads (repository, service,
  features, entities, policy) and its training-set lineage.
* ``POST /v1/models/{m}/feature-store/materialize``: load the online store now.
* ``POST /v1/models/{m}/feature-store/skew``: recompute served rows offline and report the
  mismatch rate per feature (``since``: ``1h``, ISO time or unix seconds; ``sample``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from modelhost.api.auth import principal_of
from modelhost.api.http import json_response
from modelhost.api.provenance import parse_time
from modelhost.errors import InvalidInput
from modelhost.protocol.v1 import ErrorBody
from modelhost.registry import VersionInfo
from modelhost.security.keys import Scope

if TYPE_CHECKING:
    from modelhost.featurestore.component import FeatureStoreComponent

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 503)
}
#: Most served rows one skew request may recompute.
_MAX_SAMPLE = 100_000


def build_router(component: FeatureStoreComponent) -> APIRouter:
    """The feature-store routes over ``component``."""
    router = APIRouter(tags=["feature store"])
    manager = component.manager

    async def _resolve(model: str, version: str | None) -> VersionInfo:
        name, _, pinned = model.partition("@")
        info = await manager.resolve(name, version or pinned or None)
        if info.manifest.feature_store is None:
            raise InvalidInput(f"{info.ref} reads no stored features", param="model")
        return info

    @router.get(
        "/v1/models/{model}/feature-store",
        summary="What a version reads from its feature store",
        responses=_ERRORS,
    )
    async def describe(model: str, version: str | None = None) -> Response:
        info = await _resolve(model, version)
        config = info.manifest.feature_store
        assert config is not None
        chosen = await asyncio.to_thread(component.online.selection, info)
        store = await asyncio.to_thread(component.stores.get, config.repo)
        body = {
            "object": "feature_store",
            "model": info.model,
            "version": info.version,
            **config.model_dump(),
            "names": list(chosen.names),
            "views": list(chosen.views),
            "request_fields": list(chosen.request_fields),
            "definitions_sha256": chosen.digest,
            "project": store.project,
            "online_store": store.config.online_store.type,
            "lineage": info.manifest.lineage.model_dump(),
        }
        return json_response(body, headers={"Cache-Control": "no-store"})

    @router.post(
        "/v1/models/{model}/feature-store/materialize",
        summary="Load the online store from the offline store now",
        responses=_ERRORS,
    )
    async def materialize(model: str, request: Request, version: str | None = None) -> Response:
        principal_of(request.scope).require(Scope.DEPLOY)
        info = await _resolve(model, version)
        config = info.manifest.feature_store
        assert config is not None
        started = time.perf_counter()
        until = await component.materialize(config.repo)
        body = {
            "object": "materialization",
            "repository": config.repo,
            "end": until.isoformat(),
            "seconds": round(time.perf_counter() - started, 3),
        }
        return json_response(body)

    @router.post(
        "/v1/models/{model}/feature-store/skew",
        summary="Compare served feature values with their offline recomputation",
        responses=_ERRORS,
    )
    async def skew(
        model: str,
        request: Request,
        since: str = "1h",
        sample: int = Query(200, json_schema_extra={"minimum": 1, "maximum": _MAX_SAMPLE}),
        version: str | None = None,
    ) -> Response:
        who = principal_of(request.scope)
        who.require(Scope.PROVENANCE)
        if not 1 <= sample <= _MAX_SAMPLE:
            raise InvalidInput(f"'sample' must be 1 to {_MAX_SAMPLE}", param="sample")
        info = await _resolve(model, version)
        # the report's examples hold served values: a caller compares its own tenant's
        report = await component.skew(info, parse_time(since, "since"), sample, who.confined_to())
        return json_response(report.as_dict(), headers={"Cache-Control": "no-store"})

    return router
