"""Request rates, token rates and budgets, on memory storage and on Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio

from modelhost.errors import BudgetExceeded, RateLimited
from modelhost.inference import Usage
from modelhost.manifest import ModelManifest, Pricing, parse_manifest
from modelhost.registry import Stage, VersionInfo
from modelhost.security.keys import Principal
from modelhost.security.ratelimit import LimitDefaults, RateLimiter, price_of

REDIS_URL = "redis://127.0.0.1:6379/15"


def _version(**limits: Any) -> VersionInfo:
    manifest: ModelManifest = parse_manifest(
        {
            "name": "llm",
            "version": "1.0.0",
            "runtime": "python",
            "limits": limits,
            "pricing": {"input": 1.0, "output": 2.0, "unit": "1k_tokens"},
        }
    )
    return VersionInfo(
        "llm", "1.0.0", "python", Stage.PRODUCTION, manifest, {}, 0, datetime.now(UTC), "t"
    )


def _principal(**kw: Any) -> Principal:
    return Principal(tenant="t", subject=uuid.uuid4().hex, scopes=frozenset({"predict"}), **kw)


@pytest_asyncio.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    uri = "memory://" if request.param == "memory" else REDIS_URL
    built = RateLimiter(uri, LimitDefaults(rpm=1000))
    await built.reset()
    yield built
    await built.reset()
    await built.close()


@pytest.mark.asyncio
async def test_requests_per_minute_per_principal(limiter: RateLimiter) -> None:
    who, info = _principal(rpm=3), _version()
    for _ in range(3):
        await limiter.admit(who, info)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(who, info)
    assert refused.value.limit == 3
    assert refused.value.remaining == 0
    assert refused.value.retry_after >= 1
    assert refused.value.retry_after <= 60
    await limiter.admit(_principal(rpm=3), info)  # someone else is not affected


@pytest.mark.asyncio
async def test_requests_per_minute_per_model(limiter: RateLimiter) -> None:
    who, info = _principal(), _version(requests_per_minute=2)
    await limiter.admit(who, info)
    await limiter.admit(who, info)
    with pytest.raises(RateLimited, match="on llm"):
        await limiter.admit(who, info)


@pytest.mark.asyncio
async def test_tokens_per_minute_are_charged_after_the_call(limiter: RateLimiter) -> None:
    who, info = _principal(tpm=100), _version()
    await limiter.admit(who, info)
    await limiter.charge(who, info, Usage(input_tokens=30, output_tokens=90), items=1)
    with pytest.raises(RateLimited, match="token rate"):
        await limiter.admit(who, info)


@pytest.mark.asyncio
async def test_budget_is_priced_from_the_model(limiter: RateLimiter) -> None:
    who, info = _principal(budget=0.01), _version()
    await limiter.admit(who, info)
    cost = await limiter.charge(who, info, Usage(input_tokens=2, output_tokens=4), 1)
    assert cost == pytest.approx(0.01)
    with pytest.raises(BudgetExceeded, match="budget"):
        await limiter.admit(who, info)


def test_price_units() -> None:
    usage = Usage(input_tokens=1000, output_tokens=500)
    assert price_of(None, usage, 3) == 0
    assert price_of(Pricing(input=1, output=2), usage, 3) == pytest.approx(2.0)
    assert price_of(Pricing(input=0.5, unit="item"), usage, 3) == pytest.approx(1.5)
    assert price_of(Pricing(input=0.25, unit="request"), usage, 3) == pytest.approx(0.25)


def test_a_per_request_fee_and_compute_seconds_add_to_any_unit() -> None:
    usage = Usage(input_tokens=2_000_000, output_tokens=1_000_000)
    fees = {"per_request": 0.5, "per_second": 0.1}
    by_tokens = Pricing(input=1, output=3, unit="1m_tokens", **fees)
    assert price_of(by_tokens, usage, 1, seconds=2.0) == pytest.approx(2 + 3 + 0.5 + 0.2)
    assert price_of(by_tokens, usage, 1) == pytest.approx(5.5)  # no compute measured
    only_time = Pricing(per_second=0.01)
    assert price_of(only_time, Usage(), 1, seconds=30) == pytest.approx(0.3)
    assert price_of(only_time, Usage(), 1, seconds=-1) == 0  # a clock step never pays back


@pytest.mark.asyncio
async def test_a_budget_is_charged_what_the_data_plane_priced(limiter: RateLimiter) -> None:
    who, info = _principal(budget=0.05), _version()
    priced = Usage(input_tokens=2, output_tokens=4, cost=0.05, currency="USD")  # compute included
    await limiter.admit(who, info)
    assert await limiter.charge(who, info, priced, 1) == 0.05
    with pytest.raises(BudgetExceeded, match="budget"):
        await limiter.admit(who, info)
