"""Provenance over REST: list and read records, replay one or a window of them.

The routes need the ``provenance`` scope (checked by the auth middleware), because records hold
payloads. A caller sees its own tenant's records only (another tenant's record answers 404,
like one that does not exist); an administrator of the system tenant sees every tenant's and
may filter by ``tenant`` (an administrator of any other tenant sees its own tenant's only).
A replay is an inference run as the caller, so it also needs ``predict`` and counts
against the caller's limits and budget.

Records are written in the background: one appears about ``provenance.flush_interval_s`` (1 s
by default) after its inference ended.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from datetime import UTC, datetime
from typing import Any, Literal, cast

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelhost.api.auth import principal_of
from modelhost.api.http import json_response, parse_json, read_body
from modelhost.api.openapi import body_of
from modelhost.errors import InvalidInput, NotFound
from modelhost.protocol.v1 import ErrorBody, ReplayRequest, ReplayWindowRequest
from modelhost.provenance.replay import Replayer, Window
from modelhost.provenance.store import ProvenanceStore, Query, Record
from modelhost.security.keys import Principal

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 422, 429, 503, 504)
}
_FILTERS = frozenset(
    {
        "model",
        "version",
        "since",
        "until",
        "status",
        "principal",
        "protocol",
        "replays",
        "replay_of",
        "tenant",
        "limit",
        "before",
    }
)
_WINDOW_FIELDS = frozenset({"model", "against", "since", "until", "limit", "tolerance", "examples"})
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: Largest body of a replay request.
_MAX_BODY = 64 * 1024
#: Most records one window replay runs.
MAX_WINDOW = 1000


def parse_time(value: Any, param: str, now: float | None = None) -> float:
    """Seconds since the epoch from a unix time (number or digits), an ISO 8601 time (UTC
    when it names no zone), or a duration before now (``90s``, ``15m``, ``1h``, ``7d``, ``2w``).

    Raises:
        InvalidInput: none of those.
    """
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        relative = _RELATIVE.match(text)
        if relative:
            ago = float(relative.group(1)) * _UNIT_S[relative.group(2)]
            return (time.time() if now is None else now) - ago
        try:
            return float(text)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    raise InvalidInput(
        f"'{param}' must be a unix time, an ISO 8601 time (2024-06-01T12:00:00Z) or a duration "
        "before now (30s, 15m, 1h, 7d)",
        param=param,
    )


def _tenant_of(who: Principal) -> str | None:
    """The tenant a caller is confined to; None for the system tenant's administrators."""
    return who.confined_to()


def _choice(params: dict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = params.get(name)
    if value is None or value in allowed:
        return value
    raise InvalidInput(f"'{name}' must be one of {', '.join(allowed)}", param=name)


def _limit(raw: str | None, default: int, high: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise InvalidInput(f"'limit' must be an integer from 1 to {high}", param="limit")
    return int(raw)


def list_query(params: dict[str, str], who: Principal) -> Query:
    """The listing a caller asked for, confined to its tenant unless it is an administrator.

    Raises:
        InvalidInput: an unknown filter or a bad value.
    """
    unknown = sorted(set(params) - _FILTERS)
    if unknown:
        raise InvalidInput(
            f"unknown filter {unknown[0]!r}; use {', '.join(sorted(_FILTERS))}", param=unknown[0]
        )
    tenant = _tenant_of(who)
    status = _choice(params, "status", ("ok", "error"))
    replays = _choice(params, "replays", ("exclude", "include", "only")) or "exclude"
    return Query(
        tenant=tenant if tenant is not None else params.get("tenant"),
        model=params.get("model"),
        version=params.get("version"),
        status=cast(Literal["ok", "error"] | None, status),
        principal=params.get("principal"),
        protocol=params.get("protocol"),
        since=parse_time(params["since"], "since") if "since" in params else None,
        until=parse_time(params["until"], "until") if "until" in params else None,
        replays=cast(Literal["exclude", "include", "only"], replays),
        replay_of=params.get("replay_of"),
        limit=_limit(params.get("limit"), 50, 200),
        before=params.get("before"),
    )


def _number(payload: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = payload.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidInput(f"'{name}' must be a number from {low:g} to {high:g}", param=name)
    return float(value)


def _name(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value or len(value) > 128:
        raise InvalidInput(f"'{name}' is required: a string of 1 to 128 characters", param=name)
    return value


def window_of(payload: Any, who: Principal) -> Window:
    """The window replay a body asks for.

    Raises:
        InvalidInput: naming the wrong field.
    """
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object", param="body")
    unknown = sorted(set(payload) - _WINDOW_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}", param=unknown[0])
    if "since" not in payload:
        raise InvalidInput("'since' is required (e.g. \"1h\")", param="since")
    until = payload.get("until")
    return Window(
        model=_name(payload, "model"),
        against=_name(payload, "against"),
        since=parse_time(payload["since"], "since"),
        until=parse_time(until, "until") if until is not None else None,
        tenant=_tenant_of(who),
        limit=int(_number(payload, "limit", 100, 1, MAX_WINDOW)),
        tolerance=_number(payload, "tolerance", 1e-4, 0, 1e9),
        examples=int(_number(payload, "examples", 5, 0, 50)),
    )


def build_router(
    store: ProvenanceStore, replayer: Replayer, *, flush_interval_s: float = 1.0
) -> APIRouter:
    """The ``/v1/provenance`` routes (``flush_interval_s``: how long a record may take to
    appear, for the 404 message)."""
    router = APIRouter(tags=["provenance"])

    async def _record(key: str, who: Principal) -> Record:
        record = await asyncio.to_thread(store.get, key, _tenant_of(who))
        if record is None:
            raise NotFound(
                f"no provenance record {key!r} (a record appears up to {flush_interval_s:g} s "
                "after its request ended)",
                param="request_id",
            )
        return record

    @router.get("/v1/provenance", summary="Provenance records, newest first", responses=_ERRORS)
    async def list_records(request: Request) -> Response:
        query = list_query(dict(request.query_params), principal_of(request.scope))
        records = await asyncio.to_thread(store.list, query)
        more = len(records) == query.limit
        body = {
            "object": "list",
            "data": [record.view() for record in records],
            "has_more": more,
            "next_before": records[-1].id if more else None,
        }
        return json_response(body)

    @router.post(
        "/v1/provenance/replay",
        summary="Replay a time window of a model's requests against a version",
        responses=_ERRORS,
        openapi_extra=body_of(ReplayWindowRequest),
    )
    async def replay_window(request: Request) -> Response:
        who = principal_of(request.scope)
        window = window_of(parse_json(await read_body(request, _MAX_BODY)), who)
        return json_response(await replayer.window(who, window))

    @router.get("/v1/provenance/{request_id}", summary="One provenance record", responses=_ERRORS)
    async def get_record(request_id: str, request: Request) -> Response:
        record = await _record(request_id, principal_of(request.scope))
        return json_response(record.view())

    @router.post(
        "/v1/provenance/{request_id}/replay",
        summary="Run a recorded request again and compare the answers",
        responses=_ERRORS,
        openapi_extra=body_of(ReplayRequest, required=False),
    )
    async def replay_one(request_id: str, request: Request) -> Response:
        who = principal_of(request.scope)
        raw = await read_body(request, _MAX_BODY)
        payload = parse_json(raw) if raw.strip() else {}
        if not isinstance(payload, dict) or set(payload) - {"version"}:
            raise InvalidInput("the body may only hold 'version'", param="body")
        version = payload.get("version")
        if version is not None and (not isinstance(version, str) or not version):
            raise InvalidInput("'version' must be a version, alias or stage", param="version")
        record = await _record(request_id, who)
        replayed = await replayer.replay(record, who, version)
        return json_response(replayed.view())

    return router
