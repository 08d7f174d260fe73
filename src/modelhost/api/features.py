"""LLM features over REST: list, describe, push, invoke, and a tenant's own pins and overrides.

* ``GET /v1/features`` and ``GET /v1/features/{name}``: every feature, or one with its input
  and output schemas, versions, stages and what the caller's tenant set (``predict``);
* ``POST /v1/features``: push a spec (JSON, the same fields as the YAML file) as a new
  version in staging (``models:write``); promotion goes through the deployment routes;
* ``POST /v1/features/{name}/invoke``: ``{"input": {...}}`` (or ``"inputs": [...]``), with
  optional ``"session"`` for a conversation, ``"version"`` to name one, ``"async": true`` to
  run as a job (``predict``);
* ``GET|PUT|DELETE /v1/features/{name}/tenant[/pin|/override]``: the caller's tenant pins the
  feature to a version or overrides it, and undoes either (``features``);
* ``DELETE /v1/features/{name}/sessions/{session}``: forget a conversation (``predict``).

A feature is a model version with ``runtime: feature``, so ``/v1/models/{name}/predict``,
OpenAI-style calls and jobs reach it too; these routes give it a product-shaped body.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from modelhost.api.auth import principal_of
from modelhost.api.errors import request_id
from modelhost.api.v1 import (
    SubmitJob,
    json_response,
    no_cache,
    parse_json,
    read_body,
    submit_async,
    wants_async,
)
from modelhost.errors import InvalidInput, ModelNotFound
from modelhost.features.component import FeaturesComponent
from modelhost.features.spec import TenantOverride, parse_spec
from modelhost.features.template import FeatureTemplate
from modelhost.manifest import RuntimeKind
from modelhost.protocol.v1 import ErrorBody
from modelhost.registry import ModelInfo, Registry, VersionInfo
from modelhost.serving.dataplane import DataPlane, InferenceRequest, InferenceResponse
from modelhost.serving.router import SESSION_HEADER

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 429, 503, 504)
}
#: Largest spec or override body.
MAX_SPEC_BYTES = 512 * 1024
_INVOKE_FIELDS = frozenset({"input", "inputs", "session", "version", "async", "callback_url"})


def is_feature(model: ModelInfo) -> bool:
    """True when some version of ``model`` is a feature."""
    return any(v.runtime == RuntimeKind.FEATURE.value for v in model.versions)


def _version(info: VersionInfo) -> dict[str, Any]:
    feature = info.manifest.feature
    return {
        "version": info.version,
        "stage": info.stage.value,
        "model": feature.model if feature else None,
        "template_digest": feature.template_digest() if feature else None,
        "created_at": info.created_at.isoformat(),
    }


def _summary(model: ModelInfo) -> dict[str, Any]:
    production = next((v for v in model.versions if v.stage.value == "production"), None)
    latest = production or model.versions[-1]
    return {
        "object": "feature",
        "name": model.name,
        "description": latest.manifest.card.description,
        "production_version": production.version if production else None,
        "versions": [_version(v) for v in model.versions],
    }


def invocation_body(response: InferenceResponse, single: bool) -> dict[str, Any]:
    """The answer of an invoke: the output(s), which version and model answered, usage."""
    decision = response.decisions.get("feature", {})
    body: dict[str, Any] = {
        "id": response.id,
        "object": "feature.invocation",
        "feature": response.model,
        "version": response.version,
        "model": decision.get("model"),
        "model_version": decision.get("model_version"),
        "created": response.created,
        "usage": response.usage.as_dict(),
        "template_digest": decision.get("template_digest"),
        "attempts": decision.get("attempts"),
    }
    if decision.get("override"):
        body["override"] = True
    if "session" in decision:
        body["session"] = decision["session"]
    if single:
        body["output"] = response.results[0]
    else:
        body["outputs"] = response.results
    return body


def _invoke_parts(payload: Any) -> tuple[list[Any], bool, dict[str, Any]]:
    """Inputs, whether one ``input`` was sent, and the parameters of an invoke body."""
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object with 'input'", param="body")
    unknown = set(payload) - _INVOKE_FIELDS
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
    if ("input" in payload) == ("inputs" in payload):
        raise InvalidInput("send exactly one of 'input' and 'inputs'", param="input")
    single = "input" in payload
    inputs = [payload["input"]] if single else payload["inputs"]
    if not isinstance(inputs, list):
        raise InvalidInput("'inputs' must be an array", param="inputs")
    session = payload.get("session")
    if session is not None and not isinstance(session, str):
        raise InvalidInput("'session' must be a string", param="session")
    return inputs, single, {"session": session} if session else {}


def build_router(
    plane: DataPlane,
    registry: Registry,
    features: FeaturesComponent,
    submit_job: SubmitJob | None = None,
) -> APIRouter:
    """The ``/v1/features`` routes."""
    router = APIRouter(tags=["features"])
    _add_catalog(router, plane, registry, features, submit_job)
    _add_tenant_routes(router, plane, features)
    return router


async def _feature(plane: DataPlane, name: str) -> ModelInfo:
    """The model named ``name``, which must be a feature (404 otherwise)."""
    model = await plane.manager.model(name)
    if not is_feature(model):
        raise ModelNotFound(f"{name} is a model, not a feature", param="name")
    return model


def _add_catalog(
    router: APIRouter,
    plane: DataPlane,
    registry: Registry,
    features: FeaturesComponent,
    submit_job: SubmitJob | None,
) -> None:
    """List, describe, push, invoke, and forget a conversation."""
    controls = features.controls

    async def feature(name: str) -> ModelInfo:
        return await _feature(plane, name)

    @router.get("/v1/features", summary="List features", responses=_ERRORS)
    async def list_features() -> Response:
        models = await asyncio.to_thread(registry.list_models)
        data = [_summary(m) for m in models if is_feature(m)]
        return json_response({"object": "list", "data": data})

    @router.get("/v1/features/{name}", summary="Describe a feature", responses=_ERRORS)
    async def get_feature(name: str, request: Request) -> Response:
        model = await feature(name)
        route = await plane.route(
            InferenceRequest(model=name, principal=principal_of(request.scope))
        )
        info = route.info
        tenant = principal_of(request.scope).tenant
        control = await asyncio.to_thread(controls.get, tenant, name)
        body = {
            **_summary(model),
            "serving_version": info.version,
            "input_schema": info.manifest.input_schema,
            "output_schema": info.manifest.output_schema,
            "tenant": control.as_dict() if control is not None else None,
        }
        return json_response(body)

    @router.post("/v1/features", summary="Push a feature spec", responses=_ERRORS)
    async def push(request: Request) -> Response:
        spec = parse_spec(parse_json(await read_body(request, MAX_SPEC_BYTES)), "body")
        actor = principal_of(request.scope).id

        def write_and_push() -> VersionInfo:
            with tempfile.TemporaryDirectory() as scratch:
                directory = spec.write_version(Path(scratch) / "version")
                return registry.push(directory, actor=actor)

        info = await asyncio.to_thread(write_and_push)
        await plane.manager.refresh(load=False)
        return json_response(
            {"object": "feature.version", "name": info.model, **_version(info)}, 201
        )

    @router.post("/v1/features/{name}/invoke", summary="Invoke a feature", responses=_ERRORS)
    async def invoke(name: str, request: Request) -> Response:
        await feature(name)
        body = await read_body(request, plane.default_max_request_bytes)
        payload = parse_json(body)
        inputs, single, parameters = _invoke_parts(payload)
        version = payload.get("version")
        if wants_async(payload):
            job = {"inputs": inputs, "parameters": parameters}
            if payload.get("callback_url"):
                job["callback_url"] = payload["callback_url"]
            return await submit_async(submit_job, job, name, version, request)
        ireq = InferenceRequest.for_reference(
            name,
            version=version,
            inputs=inputs,
            parameters=parameters,
            request_id=request_id(request),
            body_bytes=len(body),
            protocol="features",
            principal=principal_of(request.scope),
            session=request.headers.get(SESSION_HEADER),
            no_cache=no_cache(request),
        )
        response = await plane.infer(ireq)
        headers = {"X-Feature-Version": response.version}
        if response.cache is not None:
            headers["X-Cache"] = response.cache
        return json_response(invocation_body(response, single), headers=headers)

    @router.delete("/v1/features/{name}/sessions/{session}", summary="Forget a conversation")
    async def forget(name: str, session: str, request: Request) -> Response:
        await feature(name)
        tenant = principal_of(request.scope).tenant
        if not await features.sessions.delete(tenant, name, session):
            raise ModelNotFound(f"no session {session!r} of {name}", param="session")
        return json_response({"deleted": True, "feature": name, "session": session})


def _add_tenant_routes(router: APIRouter, plane: DataPlane, features: FeaturesComponent) -> None:
    """A tenant's pins and overrides (scope ``features``), for its own tenant only."""
    controls = features.controls

    async def feature(name: str) -> ModelInfo:
        return await _feature(plane, name)

    @router.get("/v1/features/{name}/tenant", summary="The tenant's pin and override")
    async def tenant_state(name: str, request: Request) -> Response:
        await feature(name)
        tenant = principal_of(request.scope).tenant
        control = await asyncio.to_thread(controls.get, tenant, name)
        history = await asyncio.to_thread(controls.history, tenant, name)
        return json_response(
            {
                "tenant": tenant,
                "feature": name,
                "control": control.as_dict() if control is not None else None,
                "history": history,
            }
        )

    @router.put("/v1/features/{name}/tenant/pin", summary="Pin the tenant to a version")
    async def pin(name: str, request: Request) -> Response:
        model = await feature(name)
        payload = parse_json(await read_body(request, MAX_SPEC_BYTES))
        version = payload.get("version") if isinstance(payload, dict) else None
        if not isinstance(version, str):
            raise InvalidInput("send {'version': '1.0.0'}", param="version")
        info = next((v for v in model.versions if v.version == version), None)
        if info is None or info.runtime != RuntimeKind.FEATURE.value:
            raise ModelNotFound(f"{name} has no feature version {version}", param="version")
        who = principal_of(request.scope)
        control = await asyncio.to_thread(controls.pin, who.tenant, name, version, who.id)
        return json_response(control.as_dict())

    @router.delete("/v1/features/{name}/tenant/pin", summary="Unpin the tenant")
    async def unpin(name: str, request: Request) -> Response:
        await feature(name)
        who = principal_of(request.scope)
        control = await asyncio.to_thread(controls.unpin, who.tenant, name, who.id)
        return json_response({"tenant": who.tenant, "feature": name, "control": _dict(control)})

    @router.put("/v1/features/{name}/tenant/override", summary="Override the feature")
    async def override(name: str, request: Request) -> Response:
        await feature(name)
        payload = parse_json(await read_body(request, MAX_SPEC_BYTES))
        try:
            parsed = TenantOverride.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            message = first["msg"].removeprefix("Value error, ")
            raise InvalidInput(f"{where}: {message}", param=where) from None
        if parsed.template is not None:
            FeatureTemplate(parsed.template)  # compiles, or 400 naming the line
        who = principal_of(request.scope)
        control = await asyncio.to_thread(controls.set_override, who.tenant, name, parsed, who.id)
        return json_response(control.as_dict())

    @router.delete("/v1/features/{name}/tenant/override", summary="Drop the tenant's override")
    async def clear(name: str, request: Request) -> Response:
        await feature(name)
        who = principal_of(request.scope)
        control = await asyncio.to_thread(controls.clear_override, who.tenant, name, who.id)
        return json_response({"tenant": who.tenant, "feature": name, "control": _dict(control)})


def _dict(control: Any) -> dict[str, Any] | None:
    return control.as_dict() if control is not None else None
