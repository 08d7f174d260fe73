"""Rate limits, token quotas and cost budgets, counted with the ``limits`` library.

Storage is in memory by default, or Redis (``MODELHOST_REDIS_URL``) so that every replica
counts against the same windows. Checks happen before inference; tokens and cost are charged
after it, when they are known.

* requests per minute per principal (the key's ``rpm``, else the default setting);
* requests and tokens per minute per principal per model (the manifest's
  ``limits.requests_per_minute`` and ``limits.tokens_per_minute``);
* tokens per minute per principal (the key's ``tpm``);
* a cost budget per principal per period, priced from the model's ``pricing``.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute, RateLimitItemPerMonth
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from modelhost.errors import BudgetExceeded, RateLimited
from modelhost.inference import Usage
from modelhost.manifest import Pricing
from modelhost.registry import VersionInfo
from modelhost.security.keys import Principal

_MICRO = 1_000_000
_PERIODS: dict[str, type[RateLimitItem]] = {
    "day": RateLimitItemPerDay,
    "month": RateLimitItemPerMonth,
}


def price_of(pricing: Pricing | None, usage: Usage, items: int, seconds: float = 0.0) -> float:
    """What a call costs under ``pricing`` (0 without a price list): the unit price of its
    tokens, items or the call, plus the per-request fee, plus ``seconds`` of compute at the
    per-second price."""
    if pricing is None:
        return 0.0
    if pricing.unit == "1k_tokens":
        cost = (usage.input_tokens * pricing.input + usage.output_tokens * pricing.output) / 1000
    elif pricing.unit == "1m_tokens":
        cost = (usage.input_tokens * pricing.input + usage.output_tokens * pricing.output) / 1e6
    elif pricing.unit == "item":
        cost = items * pricing.input
    else:
        cost = pricing.input  # per request
    return cost + pricing.per_request + pricing.per_second * max(0.0, seconds)


@dataclass(frozen=True, slots=True)
class LimitDefaults:
    """Limits that apply when neither the key nor the manifest sets one."""

    rpm: int | None = None
    """Requests per minute per principal."""
    tpm: int | None = None
    """Tokens per minute per principal."""
    budget: float | None = None
    """Spend per principal per period, in the pricing currency."""
    budget_period: str = "day"
    """``day`` or ``month``."""


class RateLimiter:
    """Admits or refuses a call before inference; charges tokens and cost after it."""

    def __init__(self, storage_uri: str, defaults: LimitDefaults) -> None:
        uri = storage_uri if storage_uri.startswith("async+") else f"async+{storage_uri}"
        options: dict[str, Any] = {}
        self._pool: Any = None
        if "redis" in uri.split("://")[0]:
            from redis.asyncio import ConnectionPool

            self._pool = ConnectionPool.from_url(uri.removeprefix("async+"))
            options = {"implementation": "redispy", "connection_pool": self._pool}
        self._storage = storage_from_string(uri, **options)
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self.defaults = defaults
        self._items: dict[tuple[str, int], RateLimitItem] = {}

    def _item(self, kind: str, amount: int) -> RateLimitItem:
        found = self._items.get((kind, amount))
        if found is None:
            cls = RateLimitItemPerMinute if kind == "minute" else _PERIODS[kind]
            found = self._items[(kind, amount)] = cls(amount)
        return found

    async def _refuse(
        self,
        item: RateLimitItem,
        key: tuple[str, ...],
        what: str,
        cls: type[RateLimited] = RateLimited,
    ) -> None:
        stats = await self._limiter.get_window_stats(item, *key)
        retry = max(0.0, stats.reset_time - time.time())
        window = item.GRANULARITY.name
        raise cls(
            f"{what}: limit {item.amount} per {window}; retry in {math.ceil(retry)}s",
            retry_after=max(1.0, retry),
            limit=item.amount,
            remaining=stats.remaining,
            reset=stats.reset_time,
        )

    async def _hit(self, amount: int | None, key: tuple[str, ...], what: str) -> None:
        if not amount:
            return
        item = self._item("minute", amount)
        if not await self._limiter.hit(item, *key):
            await self._refuse(item, key, what)

    async def _room(
        self,
        amount: int | None,
        kind: str,
        key: tuple[str, ...],
        what: str,
        cls: type[RateLimited] = RateLimited,
    ) -> None:
        if not amount:
            return
        item = self._item(kind, amount)
        if not await self._limiter.test(item, *key):
            await self._refuse(item, key, what, cls)

    async def _consume(self, item: RateLimitItem, key: tuple[str, ...], cost: int) -> None:
        """Count ``cost``; if it is more than the window has left, fill the window instead, so
        the next call is refused (a call is charged after it ran, when its size is known)."""
        if await self._limiter.hit(item, *key, cost=cost):
            return
        stats = await self._limiter.get_window_stats(item, *key)
        if stats.remaining > 0:
            await self._limiter.hit(item, *key, cost=stats.remaining)

    def _budget(self, principal: Principal) -> int | None:
        budget = principal.budget if principal.budget is not None else self.defaults.budget
        return None if budget is None else max(1, int(budget * _MICRO))

    async def admit(self, principal: Principal, info: VersionInfo) -> None:
        """Count one request; refuse it if any window or budget is exhausted.

        Raises:
            RateLimited: with Retry-After and the window's limit, remaining and reset.
            BudgetExceeded: the principal's cost budget for the period is spent.
        """
        pid, model = principal.id, info.model
        limits = info.manifest.limits
        await self._room(
            self._budget(principal),
            self.defaults.budget_period,
            ("budget", pid),
            f"cost budget of {pid} is spent",
            BudgetExceeded,
        )
        await self._room(
            principal.tpm or self.defaults.tpm, "minute", ("tpm", pid), f"token rate of {pid}"
        )
        await self._room(
            limits.tokens_per_minute,
            "minute",
            ("tpm", pid, model),
            f"token rate of {pid} on {model}",
        )
        await self._hit(principal.rpm or self.defaults.rpm, ("rpm", pid), f"request rate of {pid}")
        await self._hit(
            limits.requests_per_minute, ("rpm", pid, model), f"request rate of {pid} on {model}"
        )

    async def charge(
        self, principal: Principal, info: VersionInfo, usage: Usage, items: int
    ) -> float:
        """Count the tokens and the cost of a finished call; returns the cost."""
        pid, model = principal.id, info.model
        tokens = usage.total_tokens
        for amount, key in (
            (principal.tpm or self.defaults.tpm, ("tpm", pid)),
            (info.manifest.limits.tokens_per_minute, ("tpm", pid, model)),
        ):
            if amount and tokens:
                await self._consume(self._item("minute", amount), key, tokens)
        # the data plane priced the call already (compute seconds included); else price it
        cost = (
            usage.cost if usage.cost is not None else price_of(info.manifest.pricing, usage, items)
        )
        budget = self._budget(principal)
        if budget and cost > 0:
            micro = max(1, math.ceil(cost * _MICRO))
            await self._consume(
                self._item(self.defaults.budget_period, budget), ("budget", pid), micro
            )
        return cost

    async def close(self) -> None:
        """Close the Redis connections (if any)."""
        if self._pool is not None:
            await self._pool.disconnect()

    async def reset(self) -> None:
        """Forget every window (tests and operators)."""
        outcome = self._storage.reset()
        if inspect.isawaitable(outcome):
            await outcome
