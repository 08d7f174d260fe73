"""Liveness and readiness."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from modelhost.api.http import json_response
from modelhost.serving.models import ModelManager, ModelState

#: The body of ``/readyz``, ready or not.
_READINESS: dict[str, Any] = {
    "type": "object",
    "required": ["status", "models", "failed"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "starting"]},
        "models": {"type": "object", "additionalProperties": {"type": "string"}},
        "failed": {"type": "array", "items": {"type": "string"}},
        "error": {"type": "string", "description": "What went wrong at start-up, if anything."},
    },
}


class Readiness:
    """Set once start-up (demo build, registry read, first loads) has finished."""

    def __init__(self) -> None:
        self.ready = False
        self.error: str | None = None


def build_router(manager: ModelManager, readiness: Readiness) -> APIRouter:
    """``/healthz`` (the process answers) and ``/readyz`` (start-up loading is over)."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness")
    async def healthz() -> Response:
        return json_response({"status": "ok", "pid": os.getpid()})

    @router.get(
        "/readyz",
        summary="Readiness: start-up loading finished",
        responses={
            200: {"content": {"application/json": {"schema": _READINESS}}},
            503: {
                "description": "Still starting (Retry-After: 1)",
                "content": {"application/json": {"schema": _READINESS}},
            },
        },
    )
    async def readyz() -> Response:
        states = {d.ref: d.state.value for d in manager.deployments()}
        body = {
            "status": "ready" if readiness.ready else "starting",
            "models": states,
            "failed": [ref for ref, s in states.items() if s == ModelState.FAILED.value],
        }
        if readiness.error:
            body["error"] = readiness.error
        if readiness.ready:
            return json_response(body)
        return json_response(body, 503, headers={"Retry-After": "1"})

    return router
