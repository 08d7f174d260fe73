"""REST v1 webhook support: a tenant reads the secret its callbacks are signed with.

The secret is derived per tenant from the master secret (``jobs.webhooks.tenant_secret``), so
the route stores nothing and every replica sharing the master secret answers the same.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelhost.api.auth import principal_of
from modelhost.api.http import json_response
from modelhost.jobs.webhooks import ALGORITHM, SIGNATURE_HEADER, TIMESTAMP_HEADER, tenant_secret
from modelhost.protocol.v1 import ErrorBody
from modelhost.security.keys import Scope

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 403)}


def build_router(master_secret: bytes) -> APIRouter:
    """The webhook routes; signing secrets derive from ``master_secret``."""
    router = APIRouter(tags=["jobs"])

    @router.get(
        "/v1/webhooks/secret",
        summary="The secret your job callbacks are signed with",
        responses=_ERRORS,
    )
    async def webhook_secret(request: Request) -> Response:
        who = principal_of(request.scope)
        who.require(Scope.JOBS)
        return json_response(
            {
                "object": "webhook_secret",
                "tenant": who.tenant,
                "secret": tenant_secret(master_secret, who.tenant),
                "signature_header": SIGNATURE_HEADER,
                "timestamp_header": TIMESTAMP_HEADER,
                "algorithm": ALGORITHM,
            },
            headers={"Cache-Control": "no-store"},
        )

    return router
