"""Provenance: a record of every inference, queryable and replayable (docs/provenance.md).

* :mod:`~modelhost.provenance.capture` builds a record from an ended inference (hashes,
  capture modes, sampling);
* :mod:`~modelhost.provenance.store` is the ``mh_provenance`` table;
* :mod:`~modelhost.provenance.recorder` buffers inferences and writes records in batches, off
  the request path, and purges them after the retention;
* :mod:`~modelhost.provenance.replay` runs recorded requests again and compares the answers;
* the REST routes (``/v1/provenance``) and ``modelhost replay`` (the command line) serve them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelhost.components import Component
from modelhost.config import ProvenanceSettings
from modelhost.inference import InferenceObserver
from modelhost.provenance.capture import (
    Payload,
    RowBuilder,
    Snapshot,
    canonical_json,
    data_hash,
    snapshot,
)
from modelhost.provenance.recorder import Recorder, RecorderCollector, RecorderStats
from modelhost.provenance.replay import Comparison, Replayer, Window, compare
from modelhost.provenance.store import ProvenanceStore, Query, Record

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from sqlalchemy.engine import Engine

    from modelhost.serving.dataplane import DataPlane

__all__ = [
    "Comparison",
    "Payload",
    "ProvenanceComponent",
    "ProvenanceStore",
    "Query",
    "Record",
    "Recorder",
    "RecorderStats",
    "Replayer",
    "RowBuilder",
    "Snapshot",
    "Window",
    "build_provenance",
    "canonical_json",
    "compare",
    "data_hash",
    "snapshot",
]


class ProvenanceComponent(Component):
    """The records, the replayer and the recorder (when recording is on).

    Args:
        store: the records.
        replayer: runs replays through the data plane.
        recorder: takes note of inferences; None when recording is off (records already
            written stay readable and replayable).
        flush_interval_s: how long a record may take to appear.
    """

    def __init__(
        self,
        store: ProvenanceStore,
        replayer: Replayer,
        recorder: Recorder | None,
        flush_interval_s: float,
    ) -> None:
        self.store = store
        self.replayer = replayer
        self.recorder = recorder
        self.flush_interval_s = flush_interval_s

    def observers(self) -> list[InferenceObserver]:
        """The recorder, when recording is on."""
        return [self.recorder] if self.recorder is not None else []

    async def start(self) -> None:
        """Start writing and purging in the background."""
        if self.recorder is not None:
            self.recorder.start()

    async def stop(self) -> None:
        """Write what is still buffered."""
        if self.recorder is not None:
            await self.recorder.stop()


def build_provenance(
    settings: ProvenanceSettings,
    engine: Engine,
    plane: DataPlane,
    metrics: CollectorRegistry,
) -> ProvenanceComponent:
    """The provenance component of a server or worker process: records in ``engine``'s
    database, replays through ``plane``, the recorder's numbers in ``metrics``."""
    store = ProvenanceStore(engine)
    recorder = None
    if settings.enabled:
        recorder = Recorder(store, settings)
        metrics.register(RecorderCollector(recorder))
    replayer = Replayer(plane, store)
    return ProvenanceComponent(store, replayer, recorder, settings.flush_interval_s)
