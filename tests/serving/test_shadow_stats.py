"""Shadow statistics: histograms, the in-memory counts between flushes, and the shared tables
over SQLite and PostgreSQL (several replicas summed, idempotent overwrites, examples kept to
the newest, purge)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.engine import Engine

from modelhost.serving.shadow_stats import (
    EXAMPLE_BYTES,
    PERIOD_S,
    LatencyHistogram,
    ShadowExample,
    ShadowStats,
    ShadowStore,
    bounded,
    period_of,
)

#: The middle of the current period, so moments a few seconds around it share its period.
NOW = period_of(time.time()) + PERIOD_S / 2


def example(n: int, at: float, version: str = "2.0.0", replica: str = "a") -> ShadowExample:
    return ShadowExample(
        model="iris",
        version=version,
        primary_version="1.0.0",
        request_id=f"r{n}",
        at=at,
        item=0,
        input=[n, 1.5],
        primary={"label": "setosa"},
        shadow={"label": "virginica"},
        replica=replica,
    )


def count(stats: ShadowStats, at: float, *, agree: bool, shadow_s: float, primary_s: float) -> None:
    tally = stats.tally("iris", "2.0.0", at)
    tally.compared += 1
    tally.items += 1
    tally.items_agreed += agree
    tally.agreed += agree
    tally.shadow.add(shadow_s)
    tally.primary.add(primary_s)


@pytest.fixture
def store(engine: Engine) -> ShadowStore:
    return ShadowStore(engine, examples=3)


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


def test_an_example_too_large_is_cut() -> None:
    assert bounded({"a": [1, 2]}) == {"a": [1, 2]}
    cut = bounded({"text": "x" * (2 * EXAMPLE_BYTES)})
    assert cut["truncated"] is True
    assert cut["bytes"] > EXAMPLE_BYTES
    assert len(cut["json"]) == EXAMPLE_BYTES


def test_replicas_are_summed_and_rewriting_a_row_does_not_add(store: ShadowStore) -> None:
    a, b = ShadowStats("a", examples=5), ShadowStats("b", examples=5)
    for _ in range(3):
        count(a, NOW, agree=True, shadow_s=0.010, primary_s=0.005)
    count(b, NOW, agree=False, shadow_s=0.020, primary_s=0.005)
    b.tally("iris", "2.0.0", NOW).errors += 2
    b.tally("iris", "2.0.0", NOW).skipped["loading"] = 4
    b.tally("iris", "2.0.0", NOW).last_error = "RuntimeFailure: boom"
    a.tally("iris", "3.0.0", NOW).dropped += 5
    store.write(a.take(), NOW)
    first = b.take()
    store.write(first, NOW)
    store.write(first, NOW)  # a retried flush writes the same whole counts again
    count(b, NOW, agree=True, shadow_s=0.020, primary_s=0.005)
    store.write(b.take(), NOW)
    reports = {r.version: r for r in store.report("iris", NOW - 10)}
    two = reports["2.0.0"]
    assert two.replicas == 2
    assert (two.totals.compared, two.totals.agreed, two.totals.items) == (5, 4, 5)
    assert two.agreement == pytest.approx(0.8)
    assert (two.totals.errors, two.totals.skipped) == (2, {"loading": 4})
    assert two.totals.last_error == "RuntimeFailure: boom"
    assert two.shadow_latency.count == 5
    assert two.shadow_latency.p50_s == pytest.approx(0.010, rel=0.05)
    assert two.primary_latency.p95_s == pytest.approx(0.005, rel=0.05)
    body = two.as_dict()
    assert body["latency"]["difference"]["p50_ms"] == pytest.approx(5.0, rel=0.1)
    assert body["latency"]["difference"]["p95_ms"] == pytest.approx(15.0, rel=0.1)
    assert body["skipped"] == 4
    three = reports["3.0.0"]
    assert (three.totals.dropped, three.agreement, three.replicas) == (5, None, 1)
    assert three.as_dict()["latency"]["shadow"]["p50_ms"] is None
    assert store.report("other", NOW - 10) == []


def test_reports_cover_periods_since_the_asked_moment(store: ShadowStore) -> None:
    stats = ShadowStats("a", examples=5)
    count(stats, NOW - 3 * PERIOD_S, agree=True, shadow_s=0.01, primary_s=0.01)
    count(stats, NOW, agree=False, shadow_s=0.01, primary_s=0.01)
    store.write(stats.take(), NOW)
    (recent,) = store.report("iris", period_of(NOW))
    assert recent.totals.compared == 1
    (everything,) = store.report("iris", NOW - 4 * PERIOD_S)
    assert everything.totals.compared == 2


def test_only_the_newest_examples_are_kept(store: ShadowStore) -> None:
    for n in range(5):
        stats = ShadowStats("a" if n % 2 else "b", examples=5)
        stats.example(example(n, NOW + n, replica=stats.replica))
        store.write(stats.take(), NOW)
    stats = ShadowStats("a", examples=5)
    stats.example(example(9, NOW, version="3.0.0"))
    stats.tally("iris", "3.0.0", NOW).compared += 1
    count(stats, NOW, agree=False, shadow_s=0.01, primary_s=0.01)
    store.write(stats.take(), NOW)
    reports = {r.version: r for r in store.report("iris", NOW - 10)}
    kept = reports["2.0.0"].examples
    assert [e.request_id for e in kept] == ["r4", "r3", "r2"]  # three kept, newest first
    assert kept[0].input == [4, 1.5]
    assert kept[0].as_dict()["shadow"] == {"label": "virginica"}
    assert {e.replica for e in kept} == {"a", "b"}
    assert [e.request_id for e in reports["3.0.0"].examples] == ["r9"]  # kept per version
    assert store.report("iris", NOW + 3.5)[0].examples[0].request_id == "r4"  # since


def test_purge_deletes_old_periods_and_examples(store: ShadowStore) -> None:
    stats = ShadowStats("a", examples=5)
    count(stats, NOW - 10 * PERIOD_S, agree=True, shadow_s=0.01, primary_s=0.01)
    count(stats, NOW, agree=True, shadow_s=0.01, primary_s=0.01)
    stats.example(example(1, NOW - 10 * PERIOD_S))
    stats.example(example(2, NOW))
    store.write(stats.take(), NOW)
    assert store.purge(NOW - 5 * PERIOD_S) == 2
    (left,) = store.report("iris", 0)
    assert left.totals.compared == 1
    assert [e.request_id for e in left.examples] == ["r2"]
