"""REST v1 batch jobs: submit a list or a JSONL file, follow progress, page or download
results, cancel.

A batch is a set of ordinary jobs (its *items*), one per input instance, stored in one
transaction with the batch row. Items run through the same worker and data plane as
``POST /v1/jobs``, as the submitter, at the batch's priority (``low`` by default, so
interactive jobs go first). An item is not checked at submit: a bad one fails alone when it
runs, and the others carry on.

The ``jobs`` scope is checked by the auth middleware; submitting also needs ``predict``.
Every lookup is scoped by the caller's tenant: another tenant's batch id answers 404, exactly
like an id that does not exist.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from modelhost.api.auth import principal_of
from modelhost.api.http import json_response, parse_json, read_body
from modelhost.api.jobs import principal_record
from modelhost.api.openapi import body_of
from modelhost.config import JobSettings
from modelhost.errors import InvalidInput, JobNotFound, PayloadTooLarge, UnsupportedMediaType
from modelhost.jobs.base import Batch, BatchStatus, Job, JobStatus, NewBatch, NewJob, QueueBackend
from modelhost.jobs.worker import Worker
from modelhost.protocol.jobs import iso, poll_after
from modelhost.protocol.v1 import BatchRequest, ErrorBody
from modelhost.security.keys import Principal, Scope

#: Batch priority names and the job priority their items run at (interactive jobs: 0).
PRIORITIES: dict[str, int] = {"low": -50, "normal": 0, "high": 50}
#: Content types of a JSONL upload.
JSONL_MEDIA = ("application/x-ndjson", "application/jsonl")
_JSON_MEDIA = ("application/json",)
_MULTIPART = "multipart/form-data"
#: Most results one ``GET /v1/batch/{id}/results`` page holds.
RESULTS_MAX_LIMIT = 1000
#: Items read from the store per query while streaming a JSONL download.
STREAM_CHUNK = 500
#: Most batches one ``GET /v1/batch`` page holds.
LIST_MAX_LIMIT = 100

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 415)
}
_INLINE_FIELDS = frozenset(
    {"model", "inputs", "parameters", "priority", "idempotency_key", "metadata"}
)
_JSONL_OPTIONS = frozenset({"model", "priority", "idempotency_key"})
_LINE_FIELDS = frozenset({"custom_id", "input", "parameters"})
_METADATA_MAX_BYTES = 16 * 1024
_JSONL_DOC: dict[str, Any] = {
    "schema": {
        "type": "string",
        "description": 'One {"custom_id", "input", "parameters"} object per line; the options '
        "go in the query string.",
    }
}
_SUBMIT_DOC: dict[str, Any] = {
    **body_of(BatchRequest, more={media: _JSONL_DOC for media in JSONL_MEDIA}),
    "parameters": [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": f"{name} of a JSONL upload (a JSON body names it in the body).",
            "schema": schema,
        }
        for name, schema in (
            ("model", {"type": "string", "minLength": 1, "maxLength": 200}),
            ("priority", {"type": "string", "enum": list(PRIORITIES)}),
            ("idempotency_key", {"type": "string", "minLength": 1, "maxLength": 128}),
        )
    ],
}
_OVER = frozenset({BatchStatus.COMPLETED.value, BatchStatus.CANCELLED.value})


@dataclass(slots=True)
class Item:
    """One instance of a batch, before it becomes a job."""

    input: Any
    parameters: dict[str, Any]
    custom_id: str | None = None


@dataclass(slots=True)
class Submission:
    """A checked batch submission, whatever form it came in."""

    model: str
    priority: int
    items: list[Item]
    idempotency_key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


# -- checking a submission ----------------------------------------------------------------------


def _text(value: Any, name: str, limit: int) -> str | None:
    """An optional string field of 1 to ``limit`` characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidInput(f"'{name}' must be a string of 1 to {limit} characters", param=name)
    return value


def _model(value: Any) -> str:
    model = _text(value, "model", 200)
    if model is None:
        raise InvalidInput("'model' is required (a name, or name@version)", param="model")
    return model


def _priority(value: Any) -> int:
    if value is None:
        return PRIORITIES["low"]
    if not isinstance(value, str) or value not in PRIORITIES:
        raise InvalidInput(
            f"'priority' must be one of {', '.join(PRIORITIES)} (got {value!r})", param="priority"
        )
    return PRIORITIES[value]


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}'parameters' must be an object", param="parameters")
    return value


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("'metadata' must be an object", param="metadata")
    if len(orjson.dumps(value)) > _METADATA_MAX_BYTES:
        raise InvalidInput(
            f"'metadata' is over {_METADATA_MAX_BYTES} bytes as JSON", param="metadata"
        )
    return value


def _check_count(count: int, max_items: int) -> None:
    if count == 0:
        raise InvalidInput("the batch has no items; send at least one", param="inputs")
    if count > max_items:
        raise InvalidInput(
            f"the batch has {count} items; one batch takes at most {max_items}", param="inputs"
        )


def parse_inline(payload: Any, max_items: int) -> Submission:
    """Check a JSON ``POST /v1/batch/predict`` body: every instance of ``inputs`` is an item."""
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object with 'model' and 'inputs'", param="body")
    unknown = sorted(set(payload) - _INLINE_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}", param=unknown[0])
    model = _model(payload.get("model"))
    inputs = payload.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("'inputs' is required and must be an array of instances", param="inputs")
    _check_count(len(inputs), max_items)
    parameters = _parameters(payload.get("parameters"), "")
    return Submission(
        model=model,
        priority=_priority(payload.get("priority")),
        items=[Item(instance, parameters) for instance in inputs],
        idempotency_key=_text(payload.get("idempotency_key"), "idempotency_key", 128),
        metadata=_metadata(payload.get("metadata")),
    )


def _line_item(raw: bytes, number: int, seen: set[str]) -> Item:
    """One JSONL line ``{"custom_id", "input", "parameters"}`` as an item."""
    where = f"line {number}: "
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{where}not valid JSON: {exc}", param=f"line {number}") from None
    if not isinstance(line, dict):
        raise InvalidInput(
            f"{where}each line must be a JSON object with 'input'", param=f"line {number}"
        )
    unknown = sorted(set(line) - _LINE_FIELDS)
    if unknown:
        raise InvalidInput(
            f"{where}unknown field {unknown[0]!r}; a line has custom_id, input and parameters",
            param=f"line {number}",
        )
    if "input" not in line:
        raise InvalidInput(f"{where}'input' is required", param=f"line {number}")
    custom_id = line.get("custom_id")
    if custom_id is not None:
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 256:
            raise InvalidInput(
                f"{where}'custom_id' must be a string of 1 to 256 characters",
                param=f"line {number}",
            )
        if custom_id in seen:
            raise InvalidInput(
                f"{where}custom_id {custom_id!r} is used twice", param=f"line {number}"
            )
        seen.add(custom_id)
    return Item(line["input"], _parameters(line.get("parameters"), where), custom_id)


def parse_jsonl(body: bytes, max_items: int) -> list[Item]:
    """The items of a JSONL upload, one per non-blank line (numbered from 1 in errors)."""
    lines = [(n, raw) for n, raw in enumerate(body.splitlines(), 1) if raw.strip()]
    _check_count(len(lines), max_items)
    seen: set[str] = set()
    return [_line_item(raw, number, seen) for number, raw in lines]


def jsonl_submission(options: dict[str, Any], body: bytes, max_items: int) -> Submission:
    """A JSONL upload with its options (``model``, ``priority``, ``idempotency_key``) taken
    from the query string or the form."""
    unknown = sorted(set(options) - _JSONL_OPTIONS)
    if unknown:
        raise InvalidInput(f"unknown option {unknown[0]!r}", param=unknown[0])
    model = _model(options.get("model"))
    priority = _priority(options.get("priority"))
    key = _text(options.get("idempotency_key"), "idempotency_key", 128)
    return Submission(model, priority, parse_jsonl(body, max_items), key)


def to_jobs(sub: Submission, who: Principal, max_attempts: int) -> tuple[NewBatch, list[NewJob]]:
    """The batch row and its item jobs, each carrying the submitter's identity."""
    name, _, pinned = sub.model.partition("@")
    version = pinned or None
    principal = principal_record(who)
    batch = NewBatch(
        tenant=who.tenant,
        model=name,
        version=version,
        priority=sub.priority,
        idempotency_key=sub.idempotency_key,
        metadata=sub.metadata,
    )
    items = [
        NewJob(
            tenant=who.tenant,
            model=name,
            version=version,
            inputs=[item.input],
            parameters=item.parameters,
            principal=principal,
            priority=sub.priority,
            max_attempts=max_attempts,
            item=n,
            custom_id=item.custom_id,
        )
        for n, item in enumerate(sub.items)
    ]
    return batch, items


# -- reading the request -------------------------------------------------------------------------


def _media(request: Request) -> str:
    value = request.headers.get("content-type") or ""
    return value.split(";", 1)[0].strip().lower()


async def _bounded_body(request: Request, limit: int, accepted: tuple[str, ...]) -> bytes:
    try:
        return await read_body(request, limit, accepted)
    except PayloadTooLarge:
        raise PayloadTooLarge(
            f"the batch upload is over {limit} bytes, the most one batch takes", param="body"
        ) from None


@dataclass(frozen=True, slots=True)
class Upload:
    """A submission's raw body, read but not parsed yet (parsing a big one takes a while, so
    it happens off the event loop)."""

    body: bytes
    options: dict[str, str] | None = None
    """The query options of a JSONL upload; None for a JSON body."""

    def parse(self, max_items: int) -> Submission:
        """The checked submission."""
        if self.options is None:
            return parse_inline(parse_json(self.body), max_items)
        return jsonl_submission(self.options, self.body, max_items)


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """The submission's body in whichever form the request sends it: JSON or JSONL."""
    media = _media(request)
    if media in JSONL_MEDIA:
        body = await _bounded_body(request, max_bytes, JSONL_MEDIA)
        return Upload(body, dict(request.query_params))
    if media == _MULTIPART:
        raise UnsupportedMediaType(
            "multipart uploads are not supported (python-multipart is not installed); send "
            "the file as application/x-ndjson with ?model=... (curl --data-binary @file.jsonl)",
            param="content-type",
        )
    try:
        body = await _bounded_body(request, max_bytes, _JSON_MEDIA)
    except UnsupportedMediaType:
        raise UnsupportedMediaType(
            f"content type {media!r} is not accepted here; send application/json, or "
            "application/x-ndjson for a JSONL file",
            param="content-type",
        ) from None
    misplaced = sorted(set(request.query_params) & _JSONL_OPTIONS)
    if misplaced:  # silently ignoring them would run the batch with other options
        raise InvalidInput(
            f"{misplaced[0]!r} in the query string is an option of a JSONL upload; "
            "a JSON body names it in the body",
            param=misplaced[0],
        )
    return Upload(body)


def _int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidInput(f"'{name}' must be an integer from {low} to {high}", param=name)
    return value


# -- answers -------------------------------------------------------------------------------------


def _eta(batch: Batch, now: float) -> float | None:
    """When the batch should finish at the rate its items finished so far; None before any
    item finished and once the batch is over."""
    done = batch.completed + batch.failed
    if batch.started_at is None or done == 0 or batch.status.value in _OVER:
        return None
    elapsed = max(now - batch.started_at, 1e-3)
    return now + (batch.total - done) * elapsed / done


def batch_view(batch: Batch, now: float | None = None) -> dict[str, Any]:
    """The JSON body describing a batch and its progress."""
    now = time.time() if now is None else now
    link = f"/v1/batch/{batch.id}"
    priority = next((k for k, v in PRIORITIES.items() if v == batch.priority), batch.priority)
    return {
        "batch_id": batch.id,
        "object": "batch",
        "status": batch.status.value,
        "model": batch.model,
        "version": batch.version,
        "priority": priority,
        "idempotency_key": batch.idempotency_key,
        "progress": {
            "completed": batch.completed,
            "failed": batch.failed,
            "running": batch.counts.get(JobStatus.RUNNING.value, 0),
            "queued": batch.counts.get(JobStatus.QUEUED.value, 0),
            "total": batch.total,
            "cancelled": batch.counts.get(JobStatus.CANCELLED.value, 0),
        },
        "created_at": iso(batch.created_at),
        "started_at": iso(batch.started_at),
        "finished_at": iso(batch.finished_at),
        "cancelled_at": iso(batch.cancelled_at),
        "estimated_completion_at": iso(_eta(batch, now)),
        "metadata": batch.metadata,
        "links": {"self": link, "results": f"{link}/results", "cancel": link},
    }


def item_view(job: Job) -> dict[str, Any]:
    """One line of a batch's results: the item's one result, or its error."""
    result = None
    version = job.version
    if job.status is JobStatus.SUCCEEDED and job.result is not None:
        version = job.result.get("version", version)
        results = job.result.get("results") or [None]
        result = results[0]
    return {
        "item": job.item,
        "custom_id": job.custom_id,
        "job_id": job.id,
        "status": job.status.value,
        "version": version,
        "result": result,
        "error": job.error if job.status is not JobStatus.SUCCEEDED else None,
    }


def _batch_response(batch: Batch, status: int = 200) -> Response:
    headers = {"Location": f"/v1/batch/{batch.id}"}
    if batch.status.value not in _OVER:
        wait = poll_after(max(0.0, time.time() - batch.created_at))
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return json_response(batch_view(batch), status, headers)


def _not_found(batch_id: str) -> JobNotFound:
    return JobNotFound(f"no batch {batch_id!r}", param="batch_id")


def _wants_jsonl(request: Request) -> bool:
    fmt = request.query_params.get("format")
    if fmt is not None and fmt not in ("json", "jsonl"):
        raise InvalidInput("'format' must be json or jsonl", param="format")
    if fmt is not None:
        return fmt == "jsonl"
    accept = request.headers.get("accept", "").lower()
    return any(media in accept for media in JSONL_MEDIA)


async def _stream_items(backend: QueueBackend, tenant: str, batch_id: str) -> AsyncIterator[bytes]:
    """Every item as one JSONL line, in input order, read from the store a chunk at a time."""
    offset = 0
    while True:
        page = await asyncio.to_thread(backend.batch_items, tenant, batch_id, offset, STREAM_CHUNK)
        if page:
            yield b"".join(orjson.dumps(item_view(job)) + b"\n" for job in page)
        if len(page) < STREAM_CHUNK:
            return
        offset += len(page)


async def results_response(backend: QueueBackend, request: Request, batch_id: str) -> Response:
    """A page of results, or with JSONL asked for, every item streamed."""
    tenant = principal_of(request.scope).tenant
    jsonl = _wants_jsonl(request)
    offset = _int_query(request, "offset", 0, 0, 2**31)
    limit = _int_query(request, "limit", 100, 1, RESULTS_MAX_LIMIT)
    batch = await asyncio.to_thread(backend.get_batch, tenant, batch_id)
    if batch is None:
        raise _not_found(batch_id)
    if jsonl:
        return StreamingResponse(
            _stream_items(backend, tenant, batch_id),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{batch_id}.jsonl"'},
        )
    page = await asyncio.to_thread(backend.batch_items, tenant, batch_id, offset, limit)
    end = offset + len(page)
    return json_response(
        {
            "object": "list",
            "batch_id": batch_id,
            "data": [item_view(job) for job in page],
            "offset": offset,
            "limit": limit,
            "total": batch.total,
            "next_offset": end if end < batch.total else None,
        }
    )


# -- routes --------------------------------------------------------------------------------------


def build_router(backend: QueueBackend, worker: Worker | None, settings: JobSettings) -> APIRouter:
    """The batch routes over one queue; ``worker`` (when this process runs one) is woken on
    every submit."""
    router = APIRouter(tags=["batch"])

    @router.post(
        "/v1/batch/predict",
        summary="Submit a batch",
        status_code=202,
        responses={**_ERRORS, 200: {"description": "A repeated idempotency_key: the first batch"}},
        openapi_extra=_SUBMIT_DOC,
    )
    async def submit(request: Request) -> Response:
        who = principal_of(request.scope)
        who.require(Scope.PREDICT)
        upload = await read_upload(request, settings.batch_max_bytes)

        def accept() -> tuple[Batch, bool]:  # in a thread: parsing 100k lines takes a while
            sub = upload.parse(settings.batch_max_items)
            return backend.enqueue_batch(*to_jobs(sub, who, settings.max_attempts))

        batch, created = await asyncio.to_thread(accept)
        if created and worker is not None:
            worker.notify()
        return _batch_response(batch, 202 if created else 200)

    @router.get("/v1/batch", summary="The tenant's batches, newest first", responses=_ERRORS)
    async def list_batches(request: Request) -> Response:
        tenant = principal_of(request.scope).tenant
        limit = _int_query(request, "limit", 20, 1, LIST_MAX_LIMIT)
        before = request.query_params.get("before") or None
        found = await asyncio.to_thread(backend.list_batches, tenant, limit + 1, before)
        page = found[:limit]
        now = time.time()
        return json_response(
            {
                "object": "list",
                "data": [batch_view(batch, now) for batch in page],
                "has_more": len(found) > limit,
                "next_before": page[-1].id if len(found) > limit else None,
            }
        )

    @router.get("/v1/batch/{batch_id}", summary="A batch's progress", responses=_ERRORS)
    async def get_batch(batch_id: str, request: Request) -> Response:
        tenant = principal_of(request.scope).tenant
        batch = await asyncio.to_thread(backend.get_batch, tenant, batch_id)
        if batch is None:
            raise _not_found(batch_id)
        return _batch_response(batch)

    @router.get("/v1/batch/{batch_id}/results", summary="A batch's results", responses=_ERRORS)
    async def results(batch_id: str, request: Request) -> Response:
        return await results_response(backend, request, batch_id)

    @router.delete("/v1/batch/{batch_id}", summary="Cancel a batch", responses=_ERRORS)
    async def cancel(batch_id: str, request: Request) -> Response:
        """A completed batch is answered unchanged (it stays ``completed``)."""
        tenant = principal_of(request.scope).tenant
        batch = await asyncio.to_thread(backend.get_batch, tenant, batch_id)
        if batch is not None and batch.status is not BatchStatus.COMPLETED:
            batch = await asyncio.to_thread(backend.cancel_batch, tenant, batch_id)
        if batch is None:
            raise _not_found(batch_id)
        return _batch_response(batch)

    return router
