"""Live token events of running jobs: the worker publishes, ``/v1/jobs/{id}/events`` listens.

Status changes are durable (the store's history, which the events route follows); tokens are
live only: a listener sees the tokens generated while it is connected, and the job's result
holds the whole text. In one process the :class:`MemoryBus` carries them; across processes
(separate ``modelhost worker`` machines, several server workers) the :class:`RedisBus` does,
through Redis pub/sub.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from modelhost.errors import MissingDependencyError


class TokenBus(ABC):
    """Publish a job's live events; subscribe to one job's."""

    @abstractmethod
    async def publish(self, job_id: str, event: dict[str, Any]) -> None:
        """Send ``event`` to whoever listens to ``job_id`` now (nobody: dropped)."""

    @abstractmethod
    def subscribe(self, job_id: str) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[Any]]:
        """Listen to ``job_id``: a queue receiving its events while the context is open."""

    async def close(self) -> None:  # noqa: B027 - optional hook; the memory bus holds nothing
        """Release connections."""


class MemoryBus(TokenBus):
    """Events within this process."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[asyncio.Queue[Any]]] = {}

    async def publish(self, job_id: str, event: dict[str, Any]) -> None:
        """Hand ``event`` to this process's listeners of ``job_id``."""
        for queue in self._listeners.get(job_id, ()):
            queue.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[asyncio.Queue[Any]]:
        """Listen to ``job_id`` until the context closes."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._listeners.setdefault(job_id, set()).add(queue)
        try:
            yield queue
        finally:
            listeners = self._listeners.get(job_id, set())
            listeners.discard(queue)
            if not listeners:
                self._listeners.pop(job_id, None)


class RedisBus(TokenBus):
    """Events through Redis pub/sub, one channel per job.

    Args:
        url: the Redis URL.
        prefix: channel name prefix.
    """

    def __init__(self, url: str, prefix: str = "modelhost:jobs:live") -> None:
        try:
            from redis import asyncio as aioredis
        except ImportError:
            raise MissingDependencyError("redis", extra="redis") from None
        self._redis = aioredis.Redis.from_url(url)
        self._prefix = prefix

    def _channel(self, job_id: str) -> str:
        return f"{self._prefix}:{job_id}"

    async def publish(self, job_id: str, event: dict[str, Any]) -> None:
        """Publish ``event`` on the job's channel."""
        await self._redis.publish(self._channel(job_id), orjson.dumps(event))

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[asyncio.Queue[Any]]:
        """Listen to the job's channel until the context closes."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._channel(job_id))

        async def pump() -> None:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    queue.put_nowait(orjson.loads(message["data"]))

        task = asyncio.create_task(pump())
        try:
            yield queue
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            closing: Callable[[], Awaitable[None]] = pubsub.aclose  # untyped in redis-py
            await closing()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
