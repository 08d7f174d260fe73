"""The shared tables over SQLite and PostgreSQL: canary rows of several replicas summed in a
window, flushes that keep their counts on failure and purge old rows; shadow rows of several
replicas summed, idempotent overwrites, examples cut to size and kept to the newest, purge."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from modelhost.errors import RuntimeFailure
from modelhost.registry import VersionInfo, make_engine
from modelhost.rollouts.stats import PERIOD_S, Counts, ShadowStats, WindowStats, period_of
from modelhost.rollouts.store import (
    EXAMPLE_BYTES,
    RolloutStats,
    RolloutStatsStore,
    ShadowStore,
    bounded,
)
from tests.rollouts.samples import NOW, count, event, example


@pytest.fixture
def store(engine: Engine) -> ShadowStore:
    return ShadowStore(engine, examples=3)


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
