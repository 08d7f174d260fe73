"""The recorder over SQLite and PostgreSQL: observe only buffers, batches are written in the
background, a full buffer drops and counts, a refused batch is retried, stop writes the rest,
old records are purged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from modelhost.config import ProvenanceSettings
from modelhost.inference import InferenceEvent, InferenceRequest
from modelhost.observability.metrics import Metrics
from modelhost.provenance import ProvenanceStore, Query, Recorder
from modelhost.provenance.recorder import RecorderCollector


def event(n: int, at: float | None = None) -> InferenceEvent:
    request = InferenceRequest(model="echo", inputs=[{"n": n}], request_id=f"r{n}")
    return InferenceEvent(
        request=request,
        info=None,
        started_at=time.time() if at is None else at,
        duration_s=0.001,
        results=[{"n": n}],
    )


def settings(**overrides: float) -> ProvenanceSettings:
    return ProvenanceSettings.model_validate({"flush_interval_s": 30.0, **overrides})


@pytest.fixture
def store(engine: Engine) -> Iterator[ProvenanceStore]:
    built = ProvenanceStore(engine)
    yield built
    built.close()


@pytest.mark.asyncio
async def test_observe_buffers_and_flush_writes(store: ProvenanceStore) -> None:
    recorder = Recorder(store, settings(batch_size=2))
    for n in range(5):
        recorder.observe(event(n))
    assert store.count(Query()) == 0  # nothing written by observe itself
    assert recorder.stats.buffered == 5
    await recorder.flush()
    assert store.count(Query()) == 5
    stats = recorder.stats
    assert (stats.written, stats.dropped, stats.failed, stats.buffered) == (5, 0, 0, 0)


@pytest.mark.asyncio
async def test_a_full_buffer_drops_and_counts_without_waiting(store: ProvenanceStore) -> None:
    recorder = Recorder(store, settings(max_buffer=3))
    started = time.perf_counter()
    for n in range(10):
        recorder.observe(event(n))
    assert time.perf_counter() - started < 0.1
    assert recorder.stats.dropped == 7
    await recorder.flush()
    assert [r.request_id for r in store.list(Query())] == ["r2", "r1", "r0"]
    metrics = Metrics()
    metrics.registry.register(RecorderCollector(recorder))
    exposition = metrics.exposition().decode()
    assert 'modelhost_provenance_records_total{outcome="dropped"} 7.0' in exposition
    assert 'modelhost_provenance_records_total{outcome="written"} 3.0' in exposition
    assert "modelhost_provenance_buffered 0.0" in exposition


@pytest.mark.asyncio
async def test_a_full_batch_is_written_before_the_interval(store: ProvenanceStore) -> None:
    recorder = Recorder(store, settings(batch_size=4, flush_interval_s=60))
    recorder.start()
    try:
        for n in range(4):
            recorder.observe(event(n))
        deadline = time.monotonic() + 10
        while recorder.stats.written < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert recorder.stats.written == 4
    finally:
        await recorder.stop()


@pytest.mark.asyncio
async def test_the_interval_flushes_a_partial_batch(store: ProvenanceStore) -> None:
    recorder = Recorder(store, settings(flush_interval_s=0.05))
    recorder.start()
    try:
        recorder.observe(event(1))
        deadline = time.monotonic() + 10
        while store.count(Query()) < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert store.count(Query()) == 1
    finally:
        await recorder.stop()


@pytest.mark.asyncio
async def test_stop_writes_what_is_still_buffered(store: ProvenanceStore) -> None:
    recorder = Recorder(store, settings())
    recorder.start()
    for n in range(3):
        recorder.observe(event(n))
    await recorder.stop()
    assert store.count(Query()) == 3


@pytest.mark.asyncio
async def test_a_refused_batch_is_kept_for_the_next_flush(
    store: ProvenanceStore, engine: Engine
) -> None:
    recorder = Recorder(store, settings())
    recorder.observe(event(1))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE mh_provenance"))
    await recorder.flush()  # the database refuses: kept, not lost
    assert recorder.stats.buffered == 1
    assert recorder.stats.failed == 0
    fresh = ProvenanceStore(engine)  # creates the table again
    await recorder.flush()
    assert fresh.count(Query()) == 1
    assert recorder.stats.written == 1
    fresh.close()


@pytest.mark.asyncio
async def test_a_batch_refused_three_times_is_counted_lost(
    store: ProvenanceStore, engine: Engine
) -> None:
    recorder = Recorder(store, settings())
    recorder.observe(event(1))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE mh_provenance"))
    for _ in range(3):
        await recorder.flush()
    assert (recorder.stats.failed, recorder.stats.buffered) == (1, 0)
    ProvenanceStore(engine).close()  # the table again, for the fixture's teardown


@pytest.mark.asyncio
async def test_purge_deletes_records_past_the_retention(store: ProvenanceStore) -> None:
    now = time.time()
    recorder = Recorder(store, settings(retention_s=3600))
    for n, age in enumerate((7200, 4000, 10)):
        recorder.observe(event(n, at=now - age))
    await recorder.flush()
    assert await recorder.purge(now) == 2
    assert [r.request_id for r in store.list(Query())] == ["r2"]
