"""LLM features over REST: list, describe, push, invoke, and a tenant's own pins and overrides.

* ``GET /v1/features``, ``GET /v1/features/{name}`` and ``GET /v1/features/{name}/versions``:
  every feature, or one with its input and output schemas, versions, stages and what the
  caller's tenant set (``predict``);
* ``POST /v1/features``: push a spec (JSON, the same fields as the YAML file) as a new
  version in staging (``models:write``); promotion goes through the deployment routes;
* ``POST /v1/features/{name}/invoke``: ``{"input": {...}}`` (or ``"inputs": [...]``), with
  optional ``"session"`` for a conversation, ``"version"`` to name one, ``"async": true`` to
  run as a job (``predict``);
* ``GET|PUT|DELETE /v1/features/{name}/tenant[/pin|/override]``: the caller's tenant pins the
  feature to a version or overrides it, and undoes either (``features``);
* ``DELETE /v1/features/{name}/sessions/{session}``: forget a conversation (``predict``).

Every route reads a version the way invoke runs one: named in the path (``name@1.0.0``), by
the ``X-Model-Version`` header, by an invoke body's ``"version"``, else the caller's tenant's
pin, else the deployment (production, or the canary for the callers it takes). A feature with
no production version is described and invoked when a version is named or pinned; otherwise
its 404 lists the versions and the forms that name one. The tenant routes act on the caller's
own tenant; only an administrator of the system tenant may name another with ``?tenant=``.

A feature is a model version with ``runtime: feature``, so ``/v1/models/{name}/predict``,
OpenAI-style calls and jobs reach it too; these routes give it a product-shaped body.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from modelhost.api.auth import principal_of
from modelhost.api.errors import request_id
from modelhost.api.http import (
    SubmitJob,
    json_response,
    no_cache,
    parse_json,
    read_body,
    submit_async,
    version_header,
    wants_async,
)
from modelhost.errors import (
    Forbidden,
    InvalidInput,
    ModelNotFound,
    VersionNotFound,
    invalid_input,
)
from modelhost.features.component import FeaturesComponent
from modelhost.features.spec import FeatureSpec, TenantOverride, parse_spec
from modelhost.features.template import FeatureTemplate
from modelhost.inference import InferenceRequest, InferenceResponse
from modelhost.manifest import RuntimeKind
from modelhost.protocol.v1 import ErrorBody
from modelhost.registry import ModelInfo, Registry, Stage, VersionInfo, resolve_in
from modelhost.security.keys import Principal
from modelhost.serving.dataplane import DataPlane
from modelhost.serving.router import SESSION_HEADER

#: Largest spec or override body.
MAX_SPEC_BYTES = 512 * 1024
_INVOKE_FIELDS = frozenset({"input", "inputs", "session", "version", "async", "callback_url"})
_JSON = "application/json"
#: Statuses every route may answer with the error body: a bad request (and a malformed
#: path or query), auth, an unknown feature or version, a refused input, limits, not ready.
_COMMON = (400, 401, 403, 404, 422, 429, 503)
#: What routes that read a body add: too large, not JSON.
_BODY = (413, 415)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of the error body for ``codes`` (422 included, so FastAPI does not
    document its own validation body, which these routes never send)."""
    return {code: {"model": ErrorBody} for code in sorted(codes)}


class InvokeBody(BaseModel):
    """The body of ``POST /v1/features/{name}/invoke`` (documentation: the route reads it
    itself, so its 400s name the field as the data plane does)."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] | None = Field(
        default=None, description="One input (its schema is the feature's input_schema)."
    )
    inputs: list[dict[str, Any]] | None = Field(
        default=None, description="Several inputs; send exactly one of 'input' and 'inputs'."
    )
    session: str | None = Field(default=None, description="A conversation to continue.")
    version: str | None = Field(
        default=None, description="The version to run (wins over the path and the header)."
    )
    async_: bool = Field(default=False, alias="async", description="Run as a job (202).")
    callback_url: str | None = Field(default=None, description="A job's webhook (with async).")


class PinBody(BaseModel):
    """The body of ``PUT /v1/features/{name}/tenant/pin``."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="A feature version of this feature, e.g. 1.0.0.")


def _inline(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON Schema with its ``$defs`` put in place, so it stands alone inside the
    OpenAPI document (a ``#/$defs/...`` reference would point at the document's root)."""
    schema = model.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})

    def place(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**place(defs[ref.removeprefix("#/$defs/")]), **place(rest)}
            return {key: place(value) for key, value in node.items()}
        if isinstance(node, list):
            return [place(item) for item in node]
        return node

    placed: dict[str, Any] = place(schema)
    return placed


def _body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """``openapi_extra`` declaring a required JSON request body of ``model``'s schema."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {_JSON: {"schema": _inline(model)}},
        }
    }


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
    production = model.stage_version(Stage.PRODUCTION)
    latest = production or model.versions[0]  # versions are newest first
    return {
        "object": "feature",
        "name": model.name,
        "description": latest.manifest.card.description,
        "production_version": production.version if production else None,
        "versions": [_version(v) for v in model.versions],
    }


def _example(model: ModelInfo) -> str:
    """A version of ``model`` a message can name: the newest that is not archived."""
    live = [v for v in model.versions if v.stage is not Stage.ARCHIVED] or model.versions
    return live[0].version


def no_version_to_serve(model: ModelInfo) -> VersionNotFound:
    """The 404 of a feature with no production version, called with no version named or
    pinned: which versions exist, and each way to name, pin or promote one (every one works
    on these routes; tests/api/test_features.py follows them)."""
    name, example = model.name, _example(model)
    versions = ", ".join(f"{v.version} {v.stage.value}" for v in model.versions)
    pin = json.dumps({"version": example})
    return VersionNotFound(
        f"feature {name!r} has no production version (versions: {versions}). Name one in the "
        f"path (GET /v1/features/{name}@{example}, POST /v1/features/{name}@{example}/invoke), "
        f"with the header 'X-Model-Version: {example}', or as \"version\" in an invoke's body; "
        f"pin your tenant to one with PUT /v1/features/{name}/tenant/pin {pin}; or promote "
        f"one with POST /v1/models/{name}/deployment/promote {pin}",
        param="version",
    )


def named_version(name: str, request: Request, chosen: str | None = None) -> tuple[str, str | None]:
    """The feature a path names and the version the call names: ``chosen`` (an invoke body's
    ``version``), else the ``X-Model-Version`` header, else ``name@VERSION``; None for none."""
    base, _, pinned = name.partition("@")
    return base, chosen or version_header(name, request) or pinned or None


async def _feature(plane: DataPlane, name: str) -> ModelInfo:
    """The model named ``name``, which must be a feature (404 otherwise)."""
    model = await plane.manager.model(name)
    if not is_feature(model):
        raise ModelNotFound(f"{name} is a model, not a feature", param="name")
    return model


async def _named(
    plane: DataPlane, name: str, request: Request, chosen: str | None = None
) -> tuple[ModelInfo, str | None]:
    """The feature of a path and the version the call names (checked to be one of its
    feature versions: 404 listing them otherwise)."""
    base, selector = named_version(name, request, chosen)
    model = await _feature(plane, base)
    if selector is not None and resolve_in(model, selector).runtime != RuntimeKind.FEATURE.value:
        raise ModelNotFound(f"{base}@{selector} is a model version, not a feature", param="name")
    return model, selector


def tenant_of(who: Principal, asked: str | None) -> str:
    """The tenant whose pins and overrides a call reads or changes: the caller's own; only
    an administrator of the system tenant may name another (``?tenant=``).

    Raises:
        Forbidden: anyone else names another tenant.
        InvalidInput: a name no tenant can have.
    """
    if asked is None or asked == who.tenant:
        return who.tenant
    if not asked or len(asked) > 128 or not asked.isprintable():
        raise InvalidInput("'tenant' must be a tenant name", param="tenant")
    if who.confined_to() is None:
        return asked
    raise Forbidden(
        f"principal {who.id} may only see and change the feature pins and overrides of tenant "
        f"{who.tenant!r}; leave out 'tenant'",
        param="tenant",
    )


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
    version = payload.get("version")
    if version is not None and (not isinstance(version, str) or not version):
        raise InvalidInput("'version' must be a version string, e.g. 1.0.0", param="version")
    return inputs, single, {"session": session} if session else {}


def build_router(
    plane: DataPlane,
    registry: Registry,
    features: FeaturesComponent,
    submit_job: SubmitJob | None = None,
) -> APIRouter:
    """The ``/v1/features`` routes."""
    router = APIRouter(tags=["features"])
    _add_catalog(router, plane, registry, features)
    _add_invoke(router, plane, features, submit_job)
    _add_tenant_routes(router, plane, features)
    return router


def _has_version_to_serve(features: FeaturesComponent, model: ModelInfo, who: Principal) -> bool:
    """Whether a call naming no version has one to go to: its tenant's pin or production."""
    return (
        features.controls.pinned(who.tenant, model.name) is not None
        or model.stage_version(Stage.PRODUCTION) is not None
    )


async def _serving(
    plane: DataPlane,
    features: FeaturesComponent,
    model: ModelInfo,
    selector: str | None,
    who: Principal,
) -> VersionInfo | None:
    """The version the caller's calls go to now (the version it names, its tenant's pin, or
    the deployment's production or canary); None when there is none."""
    if selector is None and not _has_version_to_serve(features, model, who):
        return None
    route = await plane.route(InferenceRequest(model=model.name, version=selector, principal=who))
    return route.info


def _add_catalog(
    router: APIRouter,
    plane: DataPlane,
    registry: Registry,
    features: FeaturesComponent,
) -> None:
    """List, describe, list versions, push."""
    controls = features.controls

    @router.get("/v1/features", summary="List features", responses=_errors(*_COMMON))
    async def list_features() -> Response:
        models = await asyncio.to_thread(registry.list_models)
        data = [_summary(m) for m in models if is_feature(m)]
        return json_response({"object": "list", "data": data})

    @router.get("/v1/features/{name}", summary="Describe a feature", responses=_errors(*_COMMON))
    async def get_feature(name: str, request: Request) -> Response:
        model, selector = await _named(plane, name, request)
        who = principal_of(request.scope)
        info = await _serving(plane, features, model, selector, who)
        if info is None:
            raise no_version_to_serve(model)
        control = await asyncio.to_thread(controls.get, who.tenant, model.name)
        body = {
            **_summary(model),
            "serving_version": info.version,
            "input_schema": info.manifest.input_schema,
            "output_schema": info.manifest.output_schema,
            "tenant": control.as_dict() if control is not None else None,
        }
        return json_response(body)

    @router.get(
        "/v1/features/{name}/versions",
        summary="List a feature's versions",
        responses=_errors(*_COMMON),
    )
    async def versions(name: str, request: Request) -> Response:
        model, selector = await _named(plane, name, request)
        info = await _serving(plane, features, model, selector, principal_of(request.scope))
        body = {
            "object": "list",
            "feature": model.name,
            "production_version": _summary(model)["production_version"],
            "serving_version": info.version if info is not None else None,
            "data": [_version(v) for v in model.versions],
        }
        return json_response(body)

    @router.post(
        "/v1/features",
        summary="Push a feature spec",
        status_code=201,
        responses={
            201: {"description": "The version, registered in staging."},
            **_errors(*_COMMON, *_BODY, 409),
        },
        openapi_extra=_body(FeatureSpec, "A spec: the fields of the YAML file, as JSON."),
    )
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


def _add_invoke(
    router: APIRouter,
    plane: DataPlane,
    features: FeaturesComponent,
    submit_job: SubmitJob | None,
) -> None:
    """Invoke, and forget a conversation."""

    @router.post(
        "/v1/features/{name}/invoke",
        summary="Invoke a feature",
        responses={
            202: {"description": 'Queued as a job ("async": true).'},
            **_errors(*_COMMON, *_BODY, 504),
        },
        openapi_extra=_body(InvokeBody, "One input or several, and how to run them."),
    )
    async def invoke(name: str, request: Request) -> Response:
        await _feature(plane, named_version(name, request)[0])  # a 404 before the body's 400
        body = await read_body(request, plane.default_max_request_bytes)
        payload = parse_json(body)
        inputs, single, parameters = _invoke_parts(payload)
        model, version = await _named(plane, name, request, payload.get("version"))
        who = principal_of(request.scope)
        if version is None and not _has_version_to_serve(features, model, who):
            raise no_version_to_serve(model)
        if wants_async(payload):
            job = {"inputs": inputs, "parameters": parameters}
            if payload.get("callback_url"):
                job["callback_url"] = payload["callback_url"]
            return await submit_async(submit_job, job, model.name, version, request)
        ireq = InferenceRequest(
            model=model.name,
            version=version,
            inputs=inputs,
            parameters=parameters,
            request_id=request_id(request),
            body_bytes=len(body),
            protocol="features",
            principal=who,
            session=request.headers.get(SESSION_HEADER),
            no_cache=no_cache(request),
        )
        response = await plane.infer(ireq)
        headers = {"X-Feature-Version": response.version}
        if response.cache is not None:
            headers["X-Cache"] = response.cache
        return json_response(invocation_body(response, single), headers=headers)

    @router.delete(
        "/v1/features/{name}/sessions/{session}",
        summary="Forget a conversation",
        responses=_errors(*_COMMON),
    )
    async def forget(name: str, session: str, request: Request) -> Response:
        model, _ = await _named(plane, name, request)
        tenant = principal_of(request.scope).tenant
        if not await features.sessions.delete(tenant, model.name, session):
            raise ModelNotFound(f"no session {session!r} of {model.name}", param="session")
        return json_response({"deleted": True, "feature": model.name, "session": session})


_TENANT = Query(
    None,
    description="Another tenant's controls: administrators of the system tenant only "
    "(anyone else gets 403 naming a tenant other than its own).",
)


def _add_tenant_routes(router: APIRouter, plane: DataPlane, features: FeaturesComponent) -> None:
    """A tenant's pins and overrides (scope ``features``), for its own tenant only (a system
    administrator may name any with ``?tenant=``)."""
    controls = features.controls

    async def target(
        name: str, request: Request, tenant: str | None
    ) -> tuple[ModelInfo, str, Principal]:
        model, _ = await _named(plane, name, request)
        who = principal_of(request.scope)
        return model, tenant_of(who, tenant), who

    @router.get(
        "/v1/features/{name}/tenant",
        summary="The tenant's pin and override",
        responses=_errors(*_COMMON),
    )
    async def tenant_state(name: str, request: Request, tenant: str | None = _TENANT) -> Response:
        model, owner, _ = await target(name, request, tenant)
        control = await asyncio.to_thread(controls.get, owner, model.name)
        history = await asyncio.to_thread(controls.history, owner, model.name)
        return json_response(
            {
                "tenant": owner,
                "feature": model.name,
                "control": _dict(control),
                "history": history,
            }
        )

    @router.put(
        "/v1/features/{name}/tenant/pin",
        summary="Pin the tenant to a version",
        responses=_errors(*_COMMON, *_BODY),
        openapi_extra=_body(PinBody, "The version the tenant's calls go to."),
    )
    async def pin(name: str, request: Request, tenant: str | None = _TENANT) -> Response:
        model, owner, who = await target(name, request, tenant)
        payload = parse_json(await read_body(request, MAX_SPEC_BYTES))
        version = payload.get("version") if isinstance(payload, dict) else None
        if not isinstance(version, str):
            example = json.dumps({"version": _example(model)})
            raise InvalidInput(f"send a JSON body {example}", param="version")
        info = next((v for v in model.versions if v.version == version), None)
        if info is None or info.runtime != RuntimeKind.FEATURE.value:
            listed = ", ".join(v.version for v in model.versions)
            raise ModelNotFound(
                f"{model.name} has no feature version {version} (versions: {listed})",
                param="version",
            )
        control = await asyncio.to_thread(controls.pin, owner, model.name, version, who.id)
        return json_response(control.as_dict())

    @router.delete(
        "/v1/features/{name}/tenant/pin", summary="Unpin the tenant", responses=_errors(*_COMMON)
    )
    async def unpin(name: str, request: Request, tenant: str | None = _TENANT) -> Response:
        model, owner, who = await target(name, request, tenant)
        control = await asyncio.to_thread(controls.unpin, owner, model.name, who.id)
        return json_response({"tenant": owner, "feature": model.name, "control": _dict(control)})

    @router.put(
        "/v1/features/{name}/tenant/override",
        summary="Override the feature",
        responses=_errors(*_COMMON, *_BODY),
        openapi_extra=_body(TenantOverride, "The fields the tenant replaces."),
    )
    async def override(name: str, request: Request, tenant: str | None = _TENANT) -> Response:
        model, owner, who = await target(name, request, tenant)
        payload = parse_json(await read_body(request, MAX_SPEC_BYTES))
        try:
            parsed = TenantOverride.model_validate(payload)
        except ValidationError as exc:
            raise invalid_input(exc) from None
        if parsed.template is not None:
            FeatureTemplate(parsed.template)  # compiles, or 400 naming the line
        control = await asyncio.to_thread(controls.set_override, owner, model.name, parsed, who.id)
        return json_response(control.as_dict())

    @router.delete(
        "/v1/features/{name}/tenant/override",
        summary="Drop the tenant's override",
        responses=_errors(*_COMMON),
    )
    async def clear(name: str, request: Request, tenant: str | None = _TENANT) -> Response:
        model, owner, who = await target(name, request, tenant)
        control = await asyncio.to_thread(controls.clear_override, owner, model.name, who.id)
        return json_response({"tenant": owner, "feature": model.name, "control": _dict(control)})


def _dict(control: Any) -> dict[str, Any] | None:
    return control.as_dict() if control is not None else None
