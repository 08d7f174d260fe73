"""Admin endpoints: API keys and the audit trail (scope ``admin``).

An admin of tenant ``system`` manages every tenant; any other admin manages its own tenant,
and another tenant's keys answer 404.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from modelhost.api.auth import principal_of
from modelhost.api.http import json_response, parse_json, read_body
from modelhost.api.openapi import body_of, error_responses
from modelhost.errors import InvalidInput, invalid_input
from modelhost.security.keys import SYSTEM_TENANT, KeyStore, NewKey, Principal


class KeyRequest(BaseModel):
    """Body of ``POST /v1/keys``."""

    model_config = ConfigDict(extra="forbid")

    principal: str = Field(min_length=1, max_length=128)
    tenant: str | None = Field(default=None, min_length=1, max_length=64)
    scopes: list[str] = Field(default_factory=lambda: ["predict"])
    description: str = Field(default="", max_length=256)
    expires_in_days: float | None = Field(default=None, gt=0, le=36500)
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    budget: float | None = Field(default=None, ge=0)


def source_of(request: Request) -> str:
    """Where a request came from, for the audit trail."""
    client = request.client
    return f"{client.host}:{client.port}" if client else "unknown"


def _tenant_scope(principal: Principal) -> str | None:
    return None if principal.tenant == SYSTEM_TENANT else principal.tenant


def build_router(keys: KeyStore) -> APIRouter:
    """Key management and audit routes."""
    router = APIRouter(tags=["admin"])

    @router.post(
        "/v1/keys",
        summary="Create an API key (shown once)",
        status_code=201,
        responses=error_responses(400, 413, 415),
        openapi_extra=body_of(KeyRequest),
    )
    async def create(request: Request) -> Response:
        principal = principal_of(request.scope)
        try:
            body = KeyRequest.model_validate(parse_json(await read_body(request, 65536)))
        except ValidationError as exc:
            raise invalid_input(exc, where="invalid key request") from None
        tenant = body.tenant or principal.tenant
        if _tenant_scope(principal) not in (None, tenant):
            raise InvalidInput("an admin creates keys in its own tenant only", param="tenant")
        expires = (
            datetime.now(UTC) + timedelta(days=body.expires_in_days)
            if body.expires_in_days
            else None
        )
        spec = NewKey(
            tenant=tenant,
            principal=body.principal,
            scopes=body.scopes,
            description=body.description,
            expires_at=expires,
            rpm=body.rpm,
            tpm=body.tpm,
            budget=body.budget,
        )
        secret, info = keys.create(spec, actor=principal.id, source=source_of(request))
        return json_response({"key": secret, **info.as_dict()}, 201)

    @router.get("/v1/keys", summary="List API keys (never their secrets)")
    async def list_keys(request: Request) -> Response:
        principal = principal_of(request.scope)
        data = [k.as_dict() for k in keys.list_keys(_tenant_scope(principal))]
        return json_response({"object": "list", "data": data})

    @router.delete("/v1/keys/{key_id}", summary="Revoke an API key")
    async def revoke(key_id: str, request: Request) -> Response:
        principal = principal_of(request.scope)
        info = keys.revoke(
            key_id, actor=principal.id, tenant=_tenant_scope(principal), source=source_of(request)
        )
        return json_response(info.as_dict())

    @router.get("/v1/audit", summary="Audit trail of administrative actions")
    async def audit(request: Request, limit: int = 100) -> Response:
        principal = principal_of(request.scope)
        entries: list[dict[str, Any]] = [
            {
                "at": e.at.isoformat(),
                "actor": e.actor,
                "tenant": e.tenant,
                "action": e.action,
                "target": e.target,
                "source": e.source,
                "detail": e.detail,
            }
            for e in keys.audit_log(_tenant_scope(principal), min(max(limit, 1), 1000))
        ]
        return json_response({"object": "list", "data": entries})

    return router
