"""``GET /v1/usage``: requests, errors, tokens, compute seconds and cost, summed per tenant,
principal, model or version over a time window.

A caller sees its own tenant. An admin of tenant ``system`` (as for keys and audit) sees every
tenant and may pick one with ``tenant=``; anyone else asking for another tenant gets 403.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from modelhost.accounting.usage import (
    DIMENSIONS,
    Totals,
    UsageComponent,
    UsageGroup,
    UsageQuery,
    columns_of,
)
from modelhost.api.auth import principal_of
from modelhost.api.http import json_response
from modelhost.errors import Forbidden, InvalidInput
from modelhost.protocol.v1 import ErrorBody
from modelhost.security.keys import Principal

#: The window when ``since`` is not given: the last 30 days.
DEFAULT_WINDOW_S = 30 * 24 * 3600
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403)}


def parse_time(value: str | None, name: str, default: float) -> float:
    """Seconds since the epoch from an ISO 8601 time (UTC unless it says otherwise) or a
    number of seconds; ``default`` when absent.

    Raises:
        InvalidInput: neither.
    """
    if value is None or not value.strip():
        return default
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"'{name}' must be an ISO 8601 time (2025-06-01T00:00:00Z) or unix seconds",
            param=name,
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_group_by(value: str | None) -> tuple[str, ...]:
    """The dimensions of ``group_by`` (comma-separated); ``model`` when absent.

    Raises:
        InvalidInput: an unknown dimension.
    """
    if value is None or not value.strip():
        return ("model",)
    wanted = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [part for part in wanted if part not in DIMENSIONS]
    if unknown:
        raise InvalidInput(
            f"'group_by' may hold {', '.join(DIMENSIONS)}; not {unknown[0]!r}", param="group_by"
        )
    return columns_of(wanted)


def tenant_filter(who: Principal, asked: str | None) -> str | None:
    """The tenant a caller's report is limited to (None: every tenant).

    Raises:
        Forbidden: a caller asks for another tenant without being a system admin.
    """
    if who.confined_to() is None:
        return asked
    if asked is not None and asked != who.tenant:
        raise Forbidden(
            f"principal {who.id} may only see the usage of tenant {who.tenant!r}", param="tenant"
        )
    return who.tenant


def _iso(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


def report_body(query: UsageQuery, groups: list[UsageGroup]) -> dict[str, Any]:
    """The JSON answer: one line per group and currency, and totals per currency."""
    totals: dict[str | None, Totals] = {}
    for group in groups:
        totals.setdefault(group.currency, Totals()).add(group.totals)
    return {
        "object": "usage",
        "since": _iso(query.since),
        "until": _iso(query.until),
        "group_by": list(query.group_by),
        "tenant": query.tenant,
        "data": [{**g.keys, "currency": g.currency, **g.totals.as_dict()} for g in groups],
        "totals": [
            {"currency": currency, **sums.as_dict()}
            for currency, sums in sorted(totals.items(), key=lambda kv: kv[0] or "")
        ],
    }


def build_router(usage: UsageComponent) -> APIRouter:
    """``GET /v1/usage`` over one usage component."""
    router = APIRouter(tags=["usage"])

    @router.get(
        "/v1/usage",
        summary="Usage and cost per tenant, principal, model or version",
        responses=_ERRORS,
    )
    async def get_usage(
        request: Request,
        since: str | None = Query(
            None, description="ISO 8601 or unix seconds; default 30 days ago."
        ),
        until: str | None = Query(None, description="ISO 8601 or unix seconds; default now."),
        group_by: str | None = Query(
            None, description="Comma-separated: tenant, principal, model, version (default model)."
        ),
        model: str | None = Query(None, description="Only this model."),
        principal: str | None = Query(None, description="Only this principal (subject)."),
        tenant: str | None = Query(None, description="Only this tenant (system admins only)."),
    ) -> Response:
        who = principal_of(request.scope)
        end = parse_time(until, "until", time.time())
        start = parse_time(since, "since", end - DEFAULT_WINDOW_S)
        if start >= end:
            raise InvalidInput("'since' must be before 'until'", param="since")
        query = UsageQuery(
            since=start,
            until=end,
            group_by=parse_group_by(group_by),
            tenant=tenant_filter(who, tenant),
            principal=principal,
            model=model,
        )
        return json_response(report_body(query, await usage.report(query)))

    return router
