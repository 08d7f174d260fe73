"""The data plane's hook for response caches.

The :class:`~modelhost.serving.dataplane.DataPlane` asks a :class:`ResponseCache` (built by
the composition root from :mod:`modelhost.cache`) for an answer after a request passed its
checks (auth, limits, validation, input guards) and before the runtime runs: a cached answer
never skips a check, and it is the answer callers got (output guards applied). What may be
cached, and under which key, is the cache's business; the data plane only asks and stores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelhost.inference import Usage
    from modelhost.registry import VersionInfo


class CacheState(StrEnum):
    """What the cache did for one request (the ``X-Cache`` header)."""

    HIT = "hit"  #: answered from the cache; the runtime did not run
    MISS = "miss"  #: cacheable, not cached yet: the answer is stored
    BYPASS = "bypass"  #: not cacheable (sampled output, opted out) or the caller said no-cache


@dataclass(slots=True)
class CacheLookup:
    """The outcome of one lookup: on a hit the answer, on a miss what to store it under."""

    state: CacheState
    key: Any = None
    """Where a miss's answer goes (opaque to the data plane); None: do not store."""
    results: list[Any] | None = None
    usage: dict[str, Any] | None = None
    """The cached call's usage (``input_tokens``, ``output_tokens``, ``cost``, ...)."""
    kind: str = "exact"
    """Which cache answered: ``exact`` or ``semantic``."""


class ResponseCache(ABC):
    """Answers repeated requests without running the model."""

    @abstractmethod
    async def lookup(
        self,
        info: VersionInfo,
        tenant: str,
        inputs: list[Any],
        parameters: dict[str, Any],
        *,
        bypass: bool,
    ) -> CacheLookup:
        """Find the answer of this request (``bypass``: the caller sent
        ``Cache-Control: no-cache``: do not answer from the cache, do store)."""

    @abstractmethod
    async def store(self, lookup: CacheLookup, results: list[Any], usage: Usage) -> None:
        """Keep the answer of a miss (never raises: a cache failure is logged)."""

    async def close(self) -> None:  # noqa: B027 - a hook with nothing to do by default
        """Release the cache's store (its connections, files)."""
