"""REST v1 async jobs: submit, list, poll, follow (server-sent events), cancel.

The ``jobs`` scope is checked by the auth middleware; a job also needs ``predict``, because the
worker runs it as the submitter. Every lookup is scoped by the caller's tenant: another
tenant's job id answers 404, exactly like an id that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from modelhost.api.auth import principal_of
from modelhost.api.http import json_response, parse_json, read_body
from modelhost.api.openapi import SSE_EVENT, body_of
from modelhost.errors import InvalidInput, JobNotFound
from modelhost.jobs.base import EventKind, Job, JobStatus, NewJob, QueueBackend
from modelhost.jobs.events import TokenBus
from modelhost.jobs.webhooks import CallbackPolicy
from modelhost.jobs.worker import Worker
from modelhost.protocol.jobs import event_view, job_view, poll_after
from modelhost.protocol.v1 import ErrorBody, JobRequest
from modelhost.registry import storable
from modelhost.security.keys import Principal, Scope

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413)
}
_FIELDS = frozenset(
    {"model", "inputs", "parameters", "callback_url", "priority", "idempotency_key"}
)
#: Events after which a job does not change.
_FINAL = frozenset({EventKind.SUCCEEDED, EventKind.FAILED, EventKind.CANCELLED, EventKind.EXPIRED})
_EVENTS_DOC: dict[str, Any] = {
    "description": "Server-sent events until the job finishes",
    "content": {"text/event-stream": {"schema": SSE_EVENT}},
}
#: Seconds between keep-alive comments on an idle event stream.
_KEEPALIVE_S = 15.0


def _string(payload: dict[str, Any], name: str, limit: int) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidInput(f"'{name}' must be a string of 1 to {limit} characters", param=name)
    if not storable(value):  # a NUL would reach the database (PostgreSQL refuses it)
        raise InvalidInput(f"'{name}' must not contain control characters", param=name)
    return value


def _priority(payload: dict[str, Any]) -> int:
    value = payload.get("priority", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not -100 <= value <= 100:
        raise InvalidInput("'priority' must be an integer from -100 to 100", param="priority")
    return value


def principal_record(who: Principal) -> dict[str, Any]:
    """What a job stores of its submitter, for the worker to act as them."""
    return {
        "subject": who.subject,
        "scopes": sorted(who.scopes),
        "key_id": who.key_id,
        "rpm": who.rpm,
        "tpm": who.tpm,
        "budget": who.budget,
    }


class Submitter:
    """Turns job submissions into queued jobs: checks the body and the callback target,
    enqueues, wakes the local worker. Shared by ``POST /v1/jobs`` and ``"async": true`` on
    predict.

    Args:
        backend: the queue.
        worker: this process's worker, woken on submit (None: another process runs jobs).
        policy: the SSRF guard callback URLs must pass.
        max_attempts: attempts of each job.
    """

    def __init__(
        self,
        backend: QueueBackend,
        worker: Worker | None,
        policy: CallbackPolicy,
        max_attempts: int,
    ) -> None:
        self.backend = backend
        self.worker = worker
        self.policy = policy
        self.max_attempts = max_attempts

    def parse(self, payload: Any, who: Principal) -> NewJob:
        """Check a ``POST /v1/jobs`` body and turn it into a job for ``who``."""
        if not isinstance(payload, dict):
            raise InvalidInput(
                "the body must be a JSON object with 'model' and 'inputs'", param="body"
            )
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
        name, _, version = model.partition("@")
        return NewJob(
            tenant=who.tenant,
            model=name,
            version=version or None,
            inputs=inputs,
            parameters=parameters,
            principal=principal_record(who),
            priority=_priority(payload),
            idempotency_key=_string(payload, "idempotency_key", 128),
            max_attempts=self.max_attempts,
            callback_url=_string(payload, "callback_url", 2048),
        )

    async def submit(self, payload: Any, who: Principal) -> Response:
        """Queue the job (or find the idempotent first one): 202, or 200 for a repeat."""
        who.require(Scope.PREDICT)
        who.require(Scope.JOBS)
        new = self.parse(payload, who)
        if new.callback_url is not None:
            await asyncio.to_thread(self.policy.check, new.callback_url)
        job, created = await asyncio.to_thread(self.backend.enqueue, new)
        if created and self.worker is not None:
            self.worker.notify()
        return job_response(job, 202 if created else 200)


def job_response(job: Job, status: int = 200) -> Response:
    """A job's body, with ``Location`` and, until it finishes, the polling advice."""
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not job.status.terminal:
        wait = poll_after(max(0.0, time.time() - job.created_at))
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return json_response(job_view(job), status, headers)


def _sse(event: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


def _after(request: Request) -> int:
    """Where a reconnecting client resumes: ``Last-Event-ID`` or ``?after=``."""
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    if not raw.isdigit():
        raise InvalidInput("Last-Event-ID / 'after' must be an event number", param="after")
    return int(raw)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidInput(f"'{name}' must be an integer from {low} to {high}", param=name)
    return int(raw)


class EventStream:
    """``GET /v1/jobs/{id}/events``: the job's history as server-sent events, then its changes
    as they happen and its live tokens, until it finishes.

    Status events come from the store's history (durable, resumable with ``Last-Event-ID``);
    token events from the bus (live only). The stream ends after the finishing event, whose
    data carries the whole job (result or error).
    """

    def __init__(self, backend: QueueBackend, bus: TokenBus, poll: float = 0.25) -> None:
        self.backend = backend
        self.bus = bus
        self.poll = poll

    async def __call__(self, tenant: str, job_id: str, after: int) -> AsyncIterator[bytes]:
        """The event stream of a job known to exist."""
        last_beat = time.monotonic()
        async with self.bus.subscribe(job_id) as tokens:
            while True:
                events = await asyncio.to_thread(self.backend.events, tenant, job_id, after)
                for event in events:
                    after = event.seq
                    data = event_view(event)
                    if event.kind in _FINAL:
                        job = await asyncio.to_thread(self.backend.get, tenant, job_id)
                        data["job"] = job_view(job) if job is not None else None
                        yield _sse(event.kind.value, data, event.seq)
                        return
                    yield _sse(event.kind.value, data, event.seq)
                with contextlib.suppress(TimeoutError):
                    token = await asyncio.wait_for(tokens.get(), self.poll)
                    yield _sse("token", {"job_id": job_id, **token})
                    while not tokens.empty():
                        yield _sse("token", {"job_id": job_id, **tokens.get_nowait()})
                if time.monotonic() - last_beat > _KEEPALIVE_S:
                    last_beat = time.monotonic()
                    yield b": keep-alive\n\n"


def build_router(submitter: Submitter, stream: EventStream, *, max_body: int) -> APIRouter:
    """The job routes over one queue."""
    router = APIRouter(tags=["jobs"])
    backend = submitter.backend

    @router.post(
        "/v1/jobs",
        summary="Submit an async job",
        status_code=202,
        responses={**_ERRORS, 200: {"description": "A repeated idempotency_key: the first job"}},
        openapi_extra=body_of(JobRequest),
    )
    async def submit(request: Request) -> Response:
        who = principal_of(request.scope)
        return await submitter.submit(parse_json(await read_body(request, max_body)), who)

    @router.get("/v1/jobs", summary="List your jobs, newest first", responses=_ERRORS)
    async def list_jobs(request: Request) -> Response:
        tenant = principal_of(request.scope).tenant
        raw_status = request.query_params.get("status")
        try:
            status = JobStatus(raw_status) if raw_status else None
        except ValueError:
            names = ", ".join(s.value for s in JobStatus)
            raise InvalidInput(f"'status' must be one of {names}", param="status") from None
        limit = _int_param(request, "limit", 50, 1, 100)
        jobs = await asyncio.to_thread(
            backend.list_jobs,
            tenant,
            status=status,
            model=request.query_params.get("model") or None,
            limit=limit,
            before=request.query_params.get("before") or None,
        )
        body = {
            "object": "list",
            "data": [job_view(job) for job in jobs],
            "has_more": len(jobs) == limit,
            "next_before": jobs[-1].id if len(jobs) == limit else None,
        }
        return json_response(body)

    @router.get("/v1/jobs/{job_id}", summary="A job's status and result", responses=_ERRORS)
    async def get_job(job_id: str, request: Request) -> Response:
        tenant = principal_of(request.scope).tenant
        job = await asyncio.to_thread(backend.get, tenant, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}", param="job_id")
        return job_response(job)

    @router.get(
        "/v1/jobs/{job_id}/events",
        summary="Follow a job: status changes and LLM tokens as server-sent events",
        responses={**_ERRORS, 200: _EVENTS_DOC},
    )
    async def job_events(job_id: str, request: Request) -> Response:
        tenant = principal_of(request.scope).tenant
        after = _after(request)
        if await asyncio.to_thread(backend.get, tenant, job_id) is None:
            raise JobNotFound(f"no job {job_id!r}", param="job_id")
        return StreamingResponse(
            stream(tenant, job_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.delete("/v1/jobs/{job_id}", summary="Cancel a job", responses=_ERRORS)
    async def cancel_job(job_id: str, request: Request) -> Response:
        tenant = principal_of(request.scope).tenant
        job = await asyncio.to_thread(backend.cancel, tenant, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}", param="job_id")
        return job_response(job)

    return router
