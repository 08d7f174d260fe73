"""REST v1 async jobs: submit, poll, cancel.

The ``jobs`` scope is checked by the auth middleware; a job also needs ``predict``, because the
worker runs it as the submitter. Every lookup is scoped by the caller's tenant: another
tenant's job id answers 404, exactly like an id that does not exist.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelhost.api.auth import principal_of
from modelhost.api.v1 import json_response, parse_json, read_body
from modelhost.errors import InvalidInput, JobNotFound
from modelhost.jobs.base import Job, NewJob, QueueBackend
from modelhost.jobs.worker import Worker
from modelhost.protocol.v1 import ErrorBody
from modelhost.security.keys import Principal, Scope

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413)
}
_FIELDS = frozenset(
    {"model", "inputs", "parameters", "callback_url", "priority", "idempotency_key"}
)
#: The polling advice: first poll after 0.5 s, then double the wait, never more than 5 s.
POLL_FIRST_S = 0.5
POLL_MAX_S = 5.0


def poll_after(elapsed: float) -> float:
    """Seconds until the next poll of a job ``elapsed`` seconds old, following the advice
    (0.5, 1, 2, 4, 5, 5, … seconds between polls counted from submission)."""
    wait, waited = POLL_FIRST_S, 0.0
    while waited + wait <= elapsed and wait < POLL_MAX_S:
        waited += wait
        wait = min(POLL_MAX_S, wait * 2)
    return wait


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat()


def job_view(job: Job) -> dict[str, Any]:
    """The JSON body describing a job."""
    link = f"/v1/jobs/{job.id}"
    return {
        "job_id": job.id,
        "object": "job",
        "status": job.status.value,
        "model": job.model,
        "version": job.version,
        "priority": job.priority,
        "idempotency_key": job.idempotency_key,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "next_attempt_at": _iso(job.run_at) if job.attempts and not job.status.terminal else None,
        "result": job.result,
        "error": job.error,
        "links": {"self": link, "cancel": link},
    }


def _string(payload: dict[str, Any], name: str, limit: int) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidInput(f"'{name}' must be a string of 1 to {limit} characters", param=name)
    return value


def _priority(payload: dict[str, Any]) -> int:
    value = payload.get("priority", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not -100 <= value <= 100:
        raise InvalidInput("'priority' must be an integer from -100 to 100", param="priority")
    return value


def parse_submission(payload: Any, who: Principal, max_attempts: int) -> NewJob:
    """Check a ``POST /v1/jobs`` body and turn it into a job for ``who``."""
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object with 'model' and 'inputs'", param="body")
    unknown = sorted(set(payload) - _FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}", param=unknown[0])
    model = _string(payload, "model", 200)
    if model is None:
        raise InvalidInput("'model' is required", param="model")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("'inputs' is required and must be a non-empty array", param="inputs")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object", param="parameters")
    if payload.get("callback_url") is not None:
        raise InvalidInput(
            "'callback_url' is not supported yet (webhooks are not built); poll GET /v1/jobs/{id}",
            param="callback_url",
        )
    name, _, version = model.partition("@")
    return NewJob(
        tenant=who.tenant,
        model=name,
        version=version or None,
        inputs=inputs,
        parameters=parameters,
        principal={
            "subject": who.subject,
            "scopes": sorted(who.scopes),
            "key_id": who.key_id,
            "rpm": who.rpm,
            "tpm": who.tpm,
            "budget": who.budget,
        },
        priority=_priority(payload),
        idempotency_key=_string(payload, "idempotency_key", 128),
        max_attempts=max_attempts,
    )


def _job_response(job: Job, status: int = 200) -> Response:
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not job.status.terminal:
        wait = poll_after(max(0.0, time.time() - job.created_at))
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return json_response(job_view(job), status, headers)


def build_router(
    backend: QueueBackend, worker: Worker | None, *, max_attempts: int, max_body: int
) -> APIRouter:
    """The job routes over one queue; ``worker`` (when this process runs one) is woken on
    every submit."""
    router = APIRouter(tags=["jobs"])

    @router.post("/v1/jobs", summary="Submit an async job", status_code=202, responses=_ERRORS)
    async def submit(request: Request) -> Response:
        who = principal_of(request.scope)
        who.require(Scope.PREDICT)
        new = parse_submission(parse_json(await read_body(request, max_body)), who, max_attempts)
        job, created = await asyncio.to_thread(backend.enqueue, new)
        if created and worker is not None:
            worker.notify()
        return _job_response(job, 202 if created else 200)

    @router.get("/v1/jobs/{job_id}", summary="A job's status and result", responses=_ERRORS)
    async def get_job(job_id: str, request: Request) -> Response:
        tenant = principal_of(request.scope).tenant
        job = await asyncio.to_thread(backend.get, tenant, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}", param="job_id")
        return _job_response(job)

    @router.delete("/v1/jobs/{job_id}", summary="Cancel a job", responses=_ERRORS)
    async def cancel_job(job_id: str, request: Request) -> Response:
        tenant = principal_of(request.scope).tenant
        job = await asyncio.to_thread(backend.cancel, tenant, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}", param="job_id")
        return _job_response(job)

    return router
