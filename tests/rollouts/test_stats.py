"""Statistics in memory: the precision of both latency histograms and the p95's confidence
interval, what the canaries' ledger counts, and the shadows' counts between flushes (taken,
put back, forgotten once written)."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from modelhost.errors import InvalidInput, RateLimited, RuntimeFailure, ServiceError
from modelhost.registry import VersionInfo
from modelhost.rollouts.stats import (
    PERIOD_S,
    LatencyHistogram,
    ShadowStats,
    StatsLedger,
    WindowStats,
    bucket_of,
    bucket_value,
    quantile,
    quantile_bounds,
)
from tests.rollouts.samples import NOW, count, event, example


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


def test_histogram_quantiles_are_within_a_bucket() -> None:
    histogram = LatencyHistogram()
    for ms in range(1, 101):
        histogram.add(ms / 1000)
    p50, p95 = histogram.quantile(0.5), histogram.quantile(0.95)
    assert p50 is not None
    assert p95 is not None
    assert p50 == pytest.approx(0.050, rel=0.05)
    assert p95 == pytest.approx(0.095, rel=0.05)
    assert histogram.mean() == pytest.approx(0.0505)
    assert LatencyHistogram().quantile(0.5) is None
    back = LatencyHistogram.from_json(histogram.to_json(), histogram.total_s)
    assert (back.count, back.quantile(0.95)) == (100, p95)
    tiny, huge = LatencyHistogram(), LatencyHistogram()
    tiny.add(0.0)
    huge.add(1e9)
    assert tiny.quantile(1.0) == pytest.approx(1e-6, rel=0.1)
    assert (huge.quantile(1.0) or 0) > 3600


def test_counts_are_taken_put_back_and_forgotten_once_written() -> None:
    stats = ShadowStats("a", examples=2)
    count(stats, NOW - PERIOD_S, agree=True, shadow_s=0.01, primary_s=0.01)
    count(stats, NOW, agree=False, shadow_s=0.02, primary_s=0.01)
    for n in range(3):
        stats.example(example(n, NOW))
    batch = stats.take()
    assert len(batch.tallies) == 2
    assert [e.request_id for e in batch.examples] == ["r1", "r2"]  # the newest two
    assert not stats.take()  # nothing changed since
    stats.put_back(batch)  # the flush failed
    again = stats.take()
    assert set(again.tallies) == set(batch.tallies)
    assert len(again.examples) == 2
    stats.settle(NOW)  # written: the ended period is forgotten, the current one kept
    totals = stats.totals("iris", "2.0.0")
    assert (totals.compared, totals.agreed) == (1, 0)
