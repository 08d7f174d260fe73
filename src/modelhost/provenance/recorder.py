"""The recorder: takes note of every ended inference and writes records off the hot path.

``observe`` runs on the event loop inside the request's own path, so it does the least it can:
it takes a :class:`~modelhost.provenance.capture.Snapshot` (the payloads encoded to canonical
JSON bytes, a few microseconds) and appends it to a bounded in-memory buffer; a full buffer
drops the inference and counts it, so recording never makes a caller wait. A snapshot rather
than the event itself, because holding the requests' and answers' objects until the next flush
made every garbage collection pass walk them (measured: more CPU than encoding them at once).

A background task wakes every ``flush_interval_s`` (or as soon as ``batch_size`` records are
waiting), takes the whole buffer and hands it to a thread that builds the rows (hashes,
sampling, redaction) and writes each ``batch_size`` of them with one INSERT. A batch the
database refuses is kept for the next flush, up to three attempts. ``stop`` writes what is
left. A second task deletes records older than the retention.

A record is therefore readable about ``flush_interval_s`` after its inference ended, and the
records of a process killed with SIGKILL since its last flush are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelhost.config import ProvenanceSettings
from modelhost.inference import InferenceEvent, InferenceObserver
from modelhost.provenance.capture import RowBuilder, Snapshot, snapshot
from modelhost.provenance.store import ProvenanceStore

log = logging.getLogger("modelhost.provenance")

_T = TypeVar("_T")
#: Writes of one batch before its rows are given up.
_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """What the recorder did since it started."""

    written: int
    """Records inserted."""
    dropped: int
    """Inferences not recorded because the buffer was full."""
    failed: int
    """Records lost: not buildable, or refused by the database on every attempt."""
    buffered: int
    """Records waiting to be written now."""


@dataclass(slots=True)
class _Pending:
    rows: list[tuple[Any, ...]]
    attempts: int = 0


class Recorder(InferenceObserver):
    """Buffers ended inferences and writes them as provenance records in the background.

    Args:
        store: where records go.
        settings: flush interval, batch size, buffer bound, retention, payload size limit.
        builder: turns snapshots into rows (one is made from ``settings`` when omitted).
    """

    def __init__(
        self,
        store: ProvenanceStore,
        settings: ProvenanceSettings,
        builder: RowBuilder | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._builder = builder or RowBuilder(settings.max_payload_bytes)
        self._buffer: list[Snapshot] = []
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelhost-provenance")
        self._inflight: set[asyncio.Future[Any]] = set()
        self._written = 0
        self._dropped = 0
        self._failed = 0

    def observe(self, event: InferenceEvent) -> None:
        """Append a snapshot of ``event`` to the buffer (or drop and count it when the buffer
        is full)."""
        buffer = self._buffer
        if len(buffer) >= self.settings.max_buffer:
            self._dropped += 1
            return
        try:
            buffer.append(snapshot(event))
        except Exception:  # an unrecordable inference must never fail its request
            log.exception("provenance: cannot record request %r", event.request.request_id)
            self._failed += 1
            return
        if len(buffer) >= self.settings.batch_size and not self._wake.is_set():
            self._wake.set()

    @property
    def stats(self) -> RecorderStats:
        """Counts since start."""
        waiting = len(self._buffer) + sum(len(p.rows) for p in self._pending)
        return RecorderStats(self._written, self._dropped, self._failed, waiting)

    def start(self) -> None:
        """Start flushing and purging in the background (on the running loop)."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._flush_forever(), name="provenance-flush"),
            asyncio.create_task(self._purge_forever(), name="provenance-purge"),
        ]

    async def stop(self) -> None:
        """Stop the background tasks (a write or purge under way finishes first), then write
        everything still buffered."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._inflight, return_exceptions=True)
        self._tasks = []
        await self.flush()
        self._writer.shutdown(wait=True)
        self.store.close()

    async def flush(self) -> None:
        """Write everything buffered now (and batches waiting for another attempt)."""
        async with self._lock:
            shots, self._buffer = self._buffer, []
            if shots or self._pending:
                await self._in_writer(self._write, shots)

    async def purge(self, now: float | None = None) -> int:
        """Delete records older than the retention (and refresh the table's statistics);
        returns how many were deleted."""
        cutoff = (time.time() if now is None else now) - self.settings.retention_s
        purged = await self._in_writer(self.store.purge, cutoff)
        await self._in_writer(self.store.analyze)
        return purged

    async def _in_writer(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn`` in the writer thread: always the same one (its caches stay warm, and
        the database sees one writer of provenance per process)."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _flush_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.flush_interval_s)
            self._wake.clear()
            await self._guarded(self.flush(), "flush")

    async def _purge_forever(self) -> None:
        while True:
            purged = await self._guarded(self.purge(), "purge")
            if purged:
                log.info("provenance: purged %d records past retention", purged)
            await asyncio.sleep(self.settings.purge_interval_s)

    async def _guarded(self, work: Coroutine[Any, Any, _T], what: str) -> _T | None:
        """Run background work shielded from cancellation (stop() waits for it instead of
        leaving a thread writing behind it); a failure is logged, and tried again later."""
        task = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        try:
            return await asyncio.shield(task)
        except Exception:  # a database hiccup or a bug: never stop recording for it
            log.exception("provenance %s failed", what)
            return None

    def _write(self, shots: list[Snapshot]) -> None:
        """Writer-thread side of :meth:`flush`: build rows, insert them batch by batch."""
        size = self.settings.batch_size
        batches, self._pending = self._pending, []
        rows = list(self._rows(shots))
        batches.extend(_Pending(rows[i : i + size]) for i in range(0, len(rows), size))
        for batch in batches:
            try:
                self.store.insert(batch.rows)
            except Exception:  # the database refused: keep the batch for the next flush
                batch.attempts += 1
                if batch.attempts >= _ATTEMPTS:
                    log.exception("provenance: %d records lost", len(batch.rows))
                    self._failed += len(batch.rows)
                else:
                    log.warning("provenance: writing %d records failed; retrying", len(batch.rows))
                    self._pending.append(batch)
                continue
            self._written += len(batch.rows)

    def _rows(self, shots: list[Snapshot]) -> Iterable[tuple[Any, ...]]:
        for shot in shots:
            try:
                yield self._builder.values(shot)
            except Exception:  # one unrecordable inference must not lose the others
                log.exception("provenance: cannot record request %r", shot.request_id)
                self._failed += 1


class RecorderCollector(Collector):
    """``modelhost_provenance_records_total{outcome}`` and ``modelhost_provenance_buffered``,
    read from a recorder at scrape time."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def collect(self) -> Iterable[Metric]:
        """The two families, from the recorder's current counts."""
        stats = self._recorder.stats
        records = CounterMetricFamily(
            "modelhost_provenance_records",
            "Provenance records by outcome: written, dropped (buffer full) or failed.",
            labels=["outcome"],
        )
        for outcome, value in (
            ("written", stats.written),
            ("dropped", stats.dropped),
            ("failed", stats.failed),
        ):
            records.add_metric([outcome], value)
        buffered = GaugeMetricFamily(
            "modelhost_provenance_buffered", "Provenance records waiting to be written."
        )
        buffered.add_metric([], stats.buffered)
        return [records, buffered]
