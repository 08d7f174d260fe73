"""Deployments over REST: canary, shadows, guards, ramp, promotion, rollback, history.

Every route needs the ``deploy`` scope (checked by the auth middleware) and every change is
audited and written to the deployment history with the caller as actor. Changes go to the
database; each replica applies them within ``inference.refresh_interval_s``.

``GET /v1/models/{m}/deployment`` is the status a person reads before and during a rollout:
the spec, the live window of each side (requests, errors, p50/p95 from every replica), online
accuracy from feedback, the shadow reports, and the newest history entries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelhost.api.auth import principal_of
from modelhost.api.batch import JSONL_MEDIA
from modelhost.api.http import JSON_MEDIA, json_response, parse_json, read_body
from modelhost.api.openapi import body_of
from modelhost.errors import Conflict, InvalidInput
from modelhost.protocol.v1 import (
    DeploymentPatch,
    ErrorBody,
    GoldenItemBody,
    GoldenSetRequest,
    PromoteRequest,
    RollbackRequest,
)
from modelhost.registry import (
    DeploymentSpec,
    GuardPolicy,
    RampPlan,
    Registry,
    RolloutState,
    Stage,
    Sticky,
)
from modelhost.registry.golden import read_jsonl, register_golden
from modelhost.rollouts.promotion import Promoter
from modelhost.security.keys import Auditor

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409)
}
_MAX_BODY = 64 * 1024
#: Largest golden set body (JSON or JSONL).
_MAX_GOLDEN = 16 * 1024 * 1024
_PATCH_FIELDS = frozenset(
    {"canary", "weight", "ramp", "guards", "sticky", "shadows", "add_shadow", "remove_shadow"}
)

#: ``(model, version, since) -> {requests, errors, error_rate, p50_ms, p95_ms}``.
LiveStats = Callable[[str, str, datetime], dict[str, Any]]
#: ``(model, since) -> [shadow report, ...]``.
ShadowReports = Callable[[str, datetime], list[dict[str, Any]]]
#: ``(model, since) -> {version: {"n", "accuracy"}}``.
FeedbackSummary = Callable[[str, datetime], dict[str, Any]]


def _weight(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise InvalidInput("weight must be a number of percent in [0, 100]", param="weight")
    return float(value)


def _versions(value: Any, param: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidInput(f"{param} must be a list of versions", param=param)
    return list(value)


class _Patch:
    """Applies a PATCH body to a spec, checking versions against the registry."""

    def __init__(self, registry: Registry, spec: DeploymentSpec) -> None:
        self.registry = registry
        self.spec = spec
        self.production = registry.get_model(spec.model).stage_version(Stage.PRODUCTION)

    def version(self, name: Any, param: str) -> str:
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{param} must be a version such as 1.1.0", param=param)
        info = self.registry.get_version(self.spec.model, name)
        if self.production is not None and info.version == self.production.version:
            raise InvalidInput(f"{info.ref} is the production version already", param=param)
        return info.version

    def apply(self, body: dict[str, Any]) -> DeploymentSpec:
        unknown = sorted(set(body) - _PATCH_FIELDS)
        if unknown:
            raise InvalidInput(
                f"unknown field {unknown[0]!r}; known: {', '.join(sorted(_PATCH_FIELDS))}",
                param=unknown[0],
            )
        spec = self.spec
        if "guards" in body:
            spec = replace(spec, guards=GuardPolicy.parse(body["guards"]))
        if "sticky" in body:
            spec = replace(spec, sticky=self._sticky(body["sticky"]))
        spec = self._shadows(spec, body)
        if "canary" in body:
            spec = self._canary(spec, body)
        elif "ramp" in body or "weight" in body:
            spec = self._reweight(spec, body)
        return spec

    @staticmethod
    def _sticky(value: Any) -> Sticky:
        try:
            return Sticky(value)
        except ValueError:
            raise InvalidInput("sticky must be 'principal' or 'session'", param="sticky") from None

    def _shadows(self, spec: DeploymentSpec, body: dict[str, Any]) -> DeploymentSpec:
        shadows = list(spec.shadows)
        if "shadows" in body:
            shadows = [self.version(v, "shadows") for v in _versions(body["shadows"], "shadows")]
        if "add_shadow" in body:
            added = self.version(body["add_shadow"], "add_shadow")
            shadows += [] if added in shadows else [added]
        if "remove_shadow" in body:
            removed = body["remove_shadow"]
            if removed not in shadows:
                raise InvalidInput(f"{removed!r} is not a shadow", param="remove_shadow")
            shadows.remove(removed)
        return replace(spec, shadows=tuple(dict.fromkeys(shadows)))

    def _canary(self, spec: DeploymentSpec, body: dict[str, Any]) -> DeploymentSpec:
        if body["canary"] is None:
            return replace(
                spec, canary=None, weight=0.0, ramp=None, ramp_step=0, state=RolloutState.STABLE
            )
        if self.production is None:
            raise Conflict(
                f"{spec.model} has no production version to compare a canary with: promote one",
                param="canary",
            )
        canary = self.version(body["canary"], "canary")
        ramp = RampPlan.parse(body.get("ramp"))
        first = ramp.steps[0] if ramp else 0.0
        weight = _weight(body["weight"]) if "weight" in body else first
        return replace(
            spec,
            canary=canary,
            weight=weight,
            ramp=ramp,
            ramp_step=0,
            state=RolloutState.CANARY,
            reason=None,
        )

    def _reweight(self, spec: DeploymentSpec, body: dict[str, Any]) -> DeploymentSpec:
        if spec.canary is None:
            raise InvalidInput("there is no canary: set 'canary' first", param="canary")
        ramp = RampPlan.parse(body["ramp"]) if "ramp" in body else spec.ramp
        weight = _weight(body["weight"]) if "weight" in body else spec.weight
        if "ramp" in body and "weight" not in body and ramp is not None:
            weight = ramp.steps[0]
        state = RolloutState.CANARY if weight > 0 else spec.state
        return replace(spec, weight=weight, ramp=ramp, ramp_step=0, state=state, reason=None)


def _jsonl_registration(raw: bytes, query: Mapping[str, str]) -> dict[str, Any]:
    """A JSONL golden set as a registration body: the lines are the items, the query string
    holds the gate (``?accuracy=0.9&field=label``; ``mae``, ``rmse`` are maximums)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise InvalidInput("the golden set must be UTF-8 JSON Lines", param="body") from None
    items = [{"input": i.input, "expected": i.expected} for i in read_jsonl(text)]
    payload: dict[str, Any] = {"items": items}
    thresholds = {}
    for metric in ("accuracy", "mae", "rmse"):
        if metric in query:
            try:
                thresholds[metric] = float(query[metric])
            except ValueError:
                raise InvalidInput(f"{metric} must be a number", param=metric) from None
    if thresholds:
        payload["thresholds"] = thresholds
    if "field" in query:
        payload["field"] = query["field"]
    return payload


def _body_doc(model: Any) -> dict[str, Any]:
    """An optional JSON body (an empty body is ``{}``)."""
    return body_of(model, required=False)


_JSONL_LINES: dict[str, Any] = {
    "schema": {"type": "string", "description": 'One {"input", "expected"} per line.'}
}
_GOLDEN_DOC: dict[str, Any] = {
    **body_of(
        GoldenSetRequest,
        more={media: _JSONL_LINES for media in JSONL_MEDIA},
    ),
    "parameters": [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": f"The gate of a JSONL golden set: {text}.",
            "schema": {"type": "string"} if name == "field" else {"type": "number"},
        }
        for name, text in (
            ("accuracy", "least accuracy"),
            ("mae", "largest mean absolute error"),
            ("rmse", "largest root mean squared error"),
            ("field", "the result field compared"),
        )
    ],
}
# a bare array of items is accepted too
_GOLDEN_DOC["requestBody"]["content"]["application/json"]["schema"] = {
    "anyOf": [
        GoldenSetRequest.model_json_schema(),
        {"type": "array", "minItems": 1, "items": GoldenItemBody.model_json_schema()},
    ]
}


def _since(request: Request, spec: DeploymentSpec) -> datetime:
    raw = request.query_params.get("window_s")
    try:
        seconds = float(raw) if raw is not None else spec.guards.window_s
    except ValueError:
        raise InvalidInput("window_s must be a number of seconds", param="window_s") from None
    if seconds <= 0:
        raise InvalidInput("window_s must be > 0", param="window_s")
    return datetime.now(UTC) - timedelta(seconds=seconds)


class _Routes:
    """The handlers, bound to the registry, the promoter and the status sources."""

    def __init__(
        self,
        registry: Registry,
        promoter: Promoter,
        audit: Auditor | None,
        sources: dict[str, Any],
    ) -> None:
        self.registry = registry
        self.deployments = registry.deployments
        self.promoter = promoter
        self.audit = audit
        self.live_stats: LiveStats | None = sources.get("live_stats")
        self.shadow_reports: ShadowReports | None = sources.get("shadow_reports")
        self.feedback: FeedbackSummary | None = sources.get("feedback")

    async def record(self, request: Request, action: str, target: str) -> str:
        who = principal_of(request.scope)
        if self.audit is not None:
            client = request.client
            source = f"{client.host}:{client.port}" if client else "unknown"
            await asyncio.to_thread(self.audit, who.id, who.tenant, action, target, source)
        return who.id

    @staticmethod
    async def body_of(request: Request) -> dict[str, Any]:
        raw = await read_body(request, _MAX_BODY)
        payload = parse_json(raw) if raw.strip() else {}
        if not isinstance(payload, dict):
            raise InvalidInput("the body must be a JSON object", param="body")
        return payload

    def status(self, model: str, since: datetime) -> dict[str, Any]:
        info = self.registry.get_model(model)
        spec = self.deployments.get(model)
        production = info.stage_version(Stage.PRODUCTION)
        sides = {"production": production.version if production else None}
        if spec.canary is not None:
            sides["canary"] = spec.canary
        body: dict[str, Any] = {
            "object": "deployment",
            "production": sides["production"],
            **spec.as_dict(),
            "window": {"since": since.isoformat()},
        }
        if self.live_stats is not None:
            stats = self.live_stats
            body["live"] = {
                side: stats(model, version, since)
                for side, version in sides.items()
                if version is not None
            }
        if self.feedback is not None:
            body["feedback"] = self.feedback(model, since)
        if self.shadow_reports is not None:
            body["shadow_reports"] = self.shadow_reports(model, since)
        body["history"] = [e.as_dict() for e in self.deployments.history(model, limit=10)]
        return body

    async def list_deployments(self) -> Response:
        specs = await asyncio.to_thread(self.deployments.all)
        data = [spec.as_dict() for _, spec in sorted(specs.items())]
        return json_response({"object": "list", "data": data})

    async def get_deployment(self, model: str, request: Request) -> Response:
        spec = await asyncio.to_thread(self.deployments.get, model)
        since = _since(request, spec)
        return json_response(await asyncio.to_thread(self.status, model, since))

    def _apply(self, model: str, body: dict[str, Any], actor: str) -> DeploymentSpec:
        for _ in range(10):
            current = self.deployments.get(model)
            changed = _Patch(self.registry, current).apply(body)
            stored = self.deployments.update(changed, actor=actor, action="change", detail=body)
            if stored is not None:
                return stored
        raise Conflict(f"the deployment of {model!r} keeps changing; try again")

    async def patch_deployment(self, model: str, request: Request) -> Response:
        body = await self.body_of(request)
        actor = await self.record(request, "deployment.change", model)
        stored = await asyncio.to_thread(self._apply, model, body, actor)
        return json_response(stored.as_dict())

    async def promote(self, model: str, request: Request) -> Response:
        body = await self.body_of(request)
        if set(body) - {"version", "force"}:
            raise InvalidInput("the body may hold 'version' and 'force'", param="body")
        version = body.get("version")
        if version is None:
            version = (await asyncio.to_thread(self.deployments.get, model)).canary
        if not isinstance(version, str) or not version:
            raise InvalidInput(
                "name the version to promote (there is no canary to default to)",
                param="version",
            )
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise InvalidInput("force must be true or false", param="force")
        action = "deployment.promote.forced" if force else "deployment.promote"
        actor = await self.record(request, action, f"{model}@{version}")
        started = time.perf_counter()
        report = await self.promoter.promote(model, version, actor=actor, force=force)
        seconds = round(time.perf_counter() - started, 3)
        return json_response({**report.as_dict(), "seconds": seconds})

    async def rollback(self, model: str, request: Request) -> Response:
        body = await self.body_of(request)
        if set(body) - {"to"}:
            raise InvalidInput("the body may only hold 'to'", param="body")
        target = body.get("to")
        if target is not None and not isinstance(target, str):
            raise InvalidInput("'to' must be a version", param="to")
        actor = await self.record(request, "deployment.rollback", model)
        started = time.perf_counter()
        report = await self.promoter.rollback(model, actor=actor, to=target)
        seconds = round(time.perf_counter() - started, 3)
        return json_response({**report.as_dict(), "seconds": seconds})

    async def put_golden(self, model: str, version: str, request: Request) -> Response:
        raw = await read_body(request, _MAX_GOLDEN, (*JSON_MEDIA, *JSONL_MEDIA))
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        payload: Any = (
            _jsonl_registration(raw, request.query_params)
            if media in JSONL_MEDIA
            else parse_json(raw)
        )
        actor = await self.record(request, "golden.register", f"{model}@{version}")
        golden = await register_golden(
            self.registry, self.promoter.golden, model, version, payload, actor=actor
        )
        return json_response(golden.describe())

    async def history(self, model: str, request: Request) -> Response:
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise InvalidInput("limit must be a whole number in [1, 1000]", param="limit")
        await asyncio.to_thread(self.registry.get_model, model)  # 404 for an unknown model
        events = await asyncio.to_thread(self.deployments.history, model, int(raw))
        return json_response({"object": "list", "data": [e.as_dict() for e in events]})


def build_router(
    registry: Registry,
    promoter: Promoter,
    *,
    audit: Auditor | None = None,
    live_stats: LiveStats | None = None,
    shadow_reports: ShadowReports | None = None,
    feedback: FeedbackSummary | None = None,
) -> APIRouter:
    """The deployment routes; the optional sources fill the status with numbers."""
    sources = {"live_stats": live_stats, "shadow_reports": shadow_reports, "feedback": feedback}
    routes = _Routes(registry, promoter, audit, sources)
    router = APIRouter(tags=["deployments"])
    base = "/v1/models/{model}/deployment"
    table: list[tuple[str, str, Callable[..., Any], str]] = [
        ("GET", "/v1/deployments", routes.list_deployments, "Every model's deployment"),
        ("GET", base, routes.get_deployment, "Deployment status"),
        (
            "PATCH",
            base,
            routes.patch_deployment,
            "Set the canary, its weight or ramp, shadows, guards, stickiness",
        ),
        (
            "POST",
            f"{base}/promote",
            routes.promote,
            "Promote a version (the canary by default) through the promotion gates",
        ),
        (
            "POST",
            f"{base}/rollback",
            routes.rollback,
            "Return production to the previous production version",
        ),
        ("GET", f"{base}/history", routes.history, "Every change of a deployment, newest first"),
        (
            "PUT",
            "/v1/models/{model}/versions/{version}/golden",
            routes.put_golden,
            "Register the golden set a version's promotion gate evaluates (JSON or JSONL)",
        ),
    ]
    bodies = {
        routes.patch_deployment: _body_doc(DeploymentPatch),
        routes.promote: _body_doc(PromoteRequest),
        routes.rollback: _body_doc(RollbackRequest),
        routes.put_golden: _GOLDEN_DOC,
    }
    for method, path, handler, summary in table:
        router.add_api_route(
            path,
            handler,
            methods=[method],
            summary=summary,
            responses=_ERRORS,
            openapi_extra=bodies.get(handler),
        )
    return router
