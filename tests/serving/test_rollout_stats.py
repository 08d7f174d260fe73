"""Shared rollout statistics: the latency histogram's precision, what the ledger counts, rows
from several replicas summed in a window (SQLite and PostgreSQL), flushes that keep their
counts on failure, and the purge of old rows."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from modelhost.errors import InvalidInput, RateLimited, RuntimeFailure, ServiceError
from modelhost.registry import ArtifactStore, Registry, VersionInfo, make_engine
from modelhost.serving.dataplane import InferenceRequest
from modelhost.serving.observers import InferenceEvent
from modelhost.serving.rollout_stats import (
    Counts,
    RolloutStats,
    RolloutStatsStore,
    StatsLedger,
    WindowStats,
    bucket_of,
    bucket_value,
    quantile,
    quantile_bounds,
)
from tests.serving.iris_variants import write_iris_variant

NOW = 1_750_000_000.0


@pytest.fixture
def info(tmp_path: Path) -> Iterator[VersionInfo]:
    """A real registered iris version (never loaded: the ledger only reads its name)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(engine, ArtifactStore(tmp_path / "artifacts"))
    yield registry.push(write_iris_variant(tmp_path / "models", "flowers", "1.1.0"), actor="t")
    engine.dispose()


def event(
    info: VersionInfo | None,
    seconds: float = 0.01,
    error: BaseException | None = None,
    replay_of: str | None = None,
) -> InferenceEvent:
    request = InferenceRequest(model="flowers", inputs=[[1.0, 2.0, 3.0, 4.0]], replay_of=replay_of)
    return InferenceEvent(request, info, NOW, seconds, error=error)


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_the_histogram_reads_p50_and_p95_within_one_percent() -> None:
    rng = random.Random(7)
    for scale in (0.0005, 0.02, 3.0):
        values = [rng.lognormvariate(0, 0.6) * scale for _ in range(5000)]
        histogram: dict[int, int] = {}
        for value in values:
            histogram[bucket_of(value)] = histogram.get(bucket_of(value), 0) + 1
        for q in (0.5, 0.95):
            found = quantile(histogram, q)
            assert found is not None
            assert found == pytest.approx(exact_quantile(values, q), rel=0.011)
    assert quantile({}, 0.95) is None
    assert bucket_of(0.0) == 0
    assert bucket_value(bucket_of(1e9)) < 1e9  # the last bucket takes what is beyond it


def test_the_p95_confidence_interval_holds_it_and_narrows_with_samples() -> None:
    rng = random.Random(11)
    widths = []
    for n in (20, 20000):
        values = [rng.expovariate(100) for _ in range(n)]
        histogram: dict[int, int] = {}
        for value in values:
            histogram[bucket_of(value)] = histogram.get(bucket_of(value), 0) + 1
        bounds = quantile_bounds(histogram, 0.95)
        assert bounds is not None
        low, high = bounds
        p95 = quantile(histogram, 0.95)
        assert p95 is not None
        assert low <= p95 <= high
        widths.append((high - low) / p95)
    assert widths[1] < 0.1 < widths[0]
    assert quantile_bounds({}, 0.95) is None
    assert quantile_bounds({bucket_of(0.01): 1}, 0.95) == (bucket_value(bucket_of(0.01)),) * 2


def test_the_ledger_counts_answers_and_server_failures_only(info: VersionInfo) -> None:
    ledger = StatsLedger()
    for _ in range(3):
        ledger.observe(event(info, 0.010))
    ledger.observe(event(info, 0.200))
    ledger.observe(event(info, error=RuntimeFailure("the canary broke")))
    ledger.observe(event(info, error=ServiceError("overloaded")))
    ledger.observe(event(info, error=RuntimeError("a bug")))
    ledger.observe(event(info, error=InvalidInput("bad row")))  # the caller's fault
    ledger.observe(event(info, error=RateLimited("slow down", retry_after=1, limit=10)))
    ledger.observe(event(info, error=asyncio.CancelledError()))  # the caller went away
    ledger.observe(event(info, replay_of="req-1"))  # not live traffic
    ledger.observe(event(None, error=RuntimeFailure("unresolved")))  # no version to blame
    taken = ledger.take()
    assert list(taken) == [("flowers", "1.1.0")]
    stats = WindowStats.of(taken[("flowers", "1.1.0")])
    assert (stats.requests, stats.errors, stats.answered) == (7, 3, 4)
    assert stats.error_rate == pytest.approx(3 / 7)
    assert stats.p50 == pytest.approx(0.010, rel=0.011)
    assert stats.p95 == pytest.approx(0.200, rel=0.011)
    assert ledger.take() == {}


def counts(requests: int, errors: int, seconds: float) -> Counts:
    made = Counts()
    for _ in range(requests - errors):
        made.answered(seconds)
    for _ in range(errors):
        made.failed()
    return made


def test_rows_of_every_replica_are_summed_in_the_window(engine: Engine) -> None:
    store = RolloutStatsStore(engine)
    canary, production = ("flowers", "1.1.0"), ("flowers", "1.0.0")
    store.add("replica-a", NOW - 100, {canary: counts(50, 50, 0.001)})  # before the window
    store.add("replica-a", NOW - 5, {canary: counts(30, 1, 0.010), production: counts(9, 0, 0.01)})
    store.add("replica-b", NOW - 4, {canary: counts(20, 2, 0.030)})
    store.add("replica-b", NOW - 3, {("other", "1.1.0"): counts(7, 7, 0.5)})
    found = store.window("flowers", "1.1.0", NOW - 60)
    assert (found.requests, found.errors, found.answered) == (50, 3, 47)
    assert found.error_rate == pytest.approx(0.06)
    assert found.p50 == pytest.approx(0.010, rel=0.011)  # 29 of 47 answered in 10 ms
    assert found.p95 == pytest.approx(0.030, rel=0.011)
    assert found.as_dict()["p95_ms"] == pytest.approx(30.0, rel=0.011)
    assert store.window("flowers", "1.0.0", NOW - 60).requests == 9
    assert store.window("flowers", "2.0.0", NOW - 60) == WindowStats()
    assert store.window("flowers", "1.1.0", NOW - 200).requests == 100
    assert store.purge(NOW - 60) == 1
    assert store.window("flowers", "1.1.0", NOW - 200).requests == 50


@pytest.mark.asyncio
async def test_a_flush_writes_per_replica_and_purges_past_the_retention(
    engine: Engine, info: VersionInfo
) -> None:
    clock = [NOW]
    store = RolloutStatsStore(engine)
    one = RolloutStats(store, retention_s=3600, replica="one", clock=lambda: clock[0])
    two = RolloutStats(store, retention_s=3600, replica="two", clock=lambda: clock[0])
    assert one.replica != RolloutStats(store).replica != RolloutStats(store).replica
    for _ in range(4):
        one.ledger.observe(event(info))
    two.ledger.observe(event(info, error=RuntimeFailure("broke")))
    assert (await one.flush(), await two.flush(), await two.flush()) == (1, 1, 0)
    summed = await one.window("flowers", "1.1.0", NOW - 1)
    assert (summed.requests, summed.errors) == (5, 1)
    clock[0] = NOW + 4000  # the first rows are past the retention now
    one.ledger.observe(event(info))
    assert await one.flush() == 1
    left = await one.window("flowers", "1.1.0", 0.0)
    assert (left.requests, left.errors) == (1, 0)


@pytest.mark.asyncio
async def test_a_failed_flush_keeps_its_counts_for_the_next(
    tmp_path: Path, info: VersionInfo
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'stats.db'}")
    store = RolloutStatsStore(engine)
    stats = RolloutStats(store, replica="one")
    for _ in range(3):
        stats.ledger.observe(event(info))
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE mh_rollout_stats"))
    with pytest.raises(Exception, match="mh_rollout_stats"):
        await stats.flush()
    stats.ledger.observe(event(info))
    RolloutStatsStore(engine)  # the table is back
    assert await stats.flush() == 1
    assert (await stats.window("flowers", "1.1.0", 0.0)).requests == 4
    engine.dispose()
