"""``GET /metrics``: every Prometheus metric of this process, in the text exposition format."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.responses import PlainTextResponse, Response

from modelhost.observability.metrics import Metrics


def build_router(metrics: Metrics) -> APIRouter:
    """The ``/metrics`` route, bound to one :class:`Metrics`."""
    router = APIRouter(tags=["monitoring"])

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def scrape() -> Response:
        # in a thread: some families are read at scrape time from the database (job counts)
        body = await asyncio.to_thread(metrics.exposition)
        return Response(body, media_type=metrics.content_type)

    return router
