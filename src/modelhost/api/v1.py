"""REST v1: model listing and metadata, predict, and load/unload while serving."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelhost.api.auth import principal_of
from modelhost.api.errors import request_id
from modelhost.api.http import (
    INFER_ERRORS,
    LeanRoute,
    SubmitJob,
    answer_headers,
    json_response,
    no_cache,
    parse_json,
    read_body,
    submit_async,
    version_header,
    wants_async,
)
from modelhost.api.openapi import error_responses
from modelhost.errors import InvalidInput
from modelhost.inference import InferenceRequest
from modelhost.protocol.v1 import PredictRequest, PredictResponse
from modelhost.registry import ModelInfo, Stage, VersionInfo
from modelhost.security.keys import Auditor
from modelhost.serving.dataplane import DataPlane
from modelhost.serving.models import Deployment, ModelManager
from modelhost.serving.router import SESSION_HEADER

_JSON = "application/json"
_META_ERRORS = error_responses(400, 404)
_LOAD_ERRORS = error_responses(404, 503)


def parse_envelope(payload: Any) -> tuple[list[Any], dict[str, Any]]:
    """Check ``{"inputs": [...], "parameters": {...}}`` and return its two parts."""
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object with 'inputs'", param="body")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("'inputs' is required and must be an array", param="inputs")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object", param="parameters")
    unknown = set(payload) - {"inputs", "parameters"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidInput(
            f"unknown field {name!r}; the body has 'inputs' and 'parameters'", param=name
        )
    return inputs, parameters


def _state(dep: Deployment | None) -> dict[str, Any]:
    if dep is None:
        return {"state": "unloaded"}
    out: dict[str, Any] = {"state": dep.state.value}
    if dep.error:
        out["error"] = dep.error
    if dep.load_seconds is not None:
        out["load_seconds"] = round(dep.load_seconds, 3)
    return out


def version_metadata(info: VersionInfo, dep: Deployment | None) -> dict[str, Any]:
    """Everything a caller may want to know about one version."""
    manifest = info.manifest
    meta: dict[str, Any] = {
        "version": info.version,
        "stage": info.stage.value,
        "runtime": info.runtime,
        "task": manifest.task.value,
        "created": info.created_at.isoformat(),
        "created_by": info.created_by,
        "size_bytes": info.size_bytes,
        "limits": manifest.limits.model_dump(),
        "batching": manifest.batching.model_dump(),
        **_state(dep),
    }
    if dep is not None and dep.runtime is not None:
        meta["runtime_info"] = dep.runtime.metadata()
    return meta


def model_metadata(model: ModelInfo, info: VersionInfo, manager: ModelManager) -> dict[str, Any]:
    """Seed 004 §3.3.D metadata of ``info``, with every version, stage and alias."""
    manifest = info.manifest
    return {
        "id": model.name,
        "object": "model",
        "version": info.version,
        "created": info.created_at.date().isoformat(),
        "input_schema": manifest.input_schema,
        "output_schema": manifest.output_schema,
        "parameters": manifest.parameters,
        "max_tokens": manifest.max_tokens,
        "supported_languages": manifest.supported_languages,
        "pricing": manifest.pricing.model_dump() if manifest.pricing else None,
        "limits": manifest.limits.model_dump(),
        "model_card": manifest.card.model_dump(),
        "evaluation": manifest.evaluation,
        "lineage": manifest.lineage.model_dump(exclude_none=True),
        "aliases": model.aliases,
        "stages": {s.value: v.version for s in Stage if (v := model.stage_version(s)) is not None},
        "versions": [version_metadata(v, manager.deployment(v.ref)) for v in model.versions],
    }


def _listing(model: ModelInfo, manager: ModelManager) -> dict[str, Any]:
    current = model.stage_version(Stage.PRODUCTION) or (
        model.versions[0] if model.versions else None
    )
    entry: dict[str, Any] = {
        "id": model.name,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": "modelhost",
        "version": current.version if current else None,
        "versions": [v.version for v in model.versions],
        "aliases": model.aliases,
    }
    if current is not None:
        entry["task"] = current.manifest.task.value
        entry["runtime"] = current.runtime
        entry.update(_state(manager.deployment(current.ref)))
    return entry


def build_router(
    plane: DataPlane, audit: Auditor | None = None, submit_job: SubmitJob | None = None
) -> APIRouter:
    """The v1 routes, bound to one data plane; ``audit`` records load and unload;
    ``submit_job`` takes predict calls sent with ``"async": true``."""
    manager = plane.manager
    router = APIRouter(tags=["v1"])

    async def record(request: Request, action: str, target: str) -> None:
        if audit is not None:
            who = principal_of(request.scope)
            client = request.client
            source = f"{client.host}:{client.port}" if client else "unknown"
            await asyncio.to_thread(audit, who.id, who.tenant, action, target, source)

    @router.get("/v1/models", summary="List models (OpenAI list shape, with modelhost fields)")
    async def list_models() -> Response:
        data = [_listing(m, manager) for m in sorted(manager.models(), key=lambda m: m.name)]
        return json_response({"object": "list", "data": data})

    @router.get("/v1/models/{model}", summary="Model metadata", responses=_META_ERRORS)
    async def get_model(model: str, request: Request) -> Response:
        name, _, pinned = model.partition("@")
        info = await manager.resolve(name, version_header(model, request) or pinned or None)
        return json_response(model_metadata(await manager.model(name), info, manager))

    async def predict(model: str, request: Request) -> Response:
        version = version_header(model, request)
        ireq = InferenceRequest.for_reference(
            model,
            version=version,
            request_id=request_id(request),
            protocol="v1",
            principal=principal_of(request.scope),
            session=request.headers.get(SESSION_HEADER),
            no_cache=no_cache(request),
        )
        route = await plane.route(ireq)
        body = await read_body(request, plane.max_request_bytes(route.info))
        payload = parse_json(body)
        if isinstance(payload, dict) and wants_async(payload):
            return await submit_async(submit_job, payload, model, version, request)
        ireq.inputs, ireq.parameters = parse_envelope(payload)
        ireq.body_bytes = len(body)
        response = await plane.infer(ireq)
        return json_response(response.as_v1(), headers=answer_headers(response))

    router.add_api_route(
        "/v1/models/{model}/predict",
        predict,
        methods=["POST"],
        summary="Predict",
        response_model=PredictResponse,
        responses={
            **INFER_ERRORS,
            202: {"description": 'Queued as a job ("async": true): the job, as POST /v1/jobs'},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": PredictRequest.model_json_schema()}},
            }
        },
        route_class_override=LeanRoute,
    )

    @router.post(
        "/v1/models/{model}/versions/{version}/load",
        summary="Load a version",
        responses=_LOAD_ERRORS,
    )
    async def load(model: str, version: str, request: Request) -> Response:
        info = await manager.resolve(model, version)
        await record(request, "model.load", info.ref)
        dep = await manager.load(info)
        status = 200 if dep.error is None else 503
        return json_response({"model": model, **version_metadata(info, dep)}, status)

    @router.post(
        "/v1/models/{model}/versions/{version}/unload",
        summary="Unload a version",
        responses=_LOAD_ERRORS,
    )
    async def unload(model: str, version: str, request: Request) -> Response:
        info = await manager.resolve(model, version)
        await record(request, "model.unload", info.ref)
        dep = await manager.unload(info.ref)
        return json_response({"model": model, **version_metadata(info, dep)})

    return router
