"""Provenance: a record of every inference, queryable and replayable (docs/provenance.md).

* :mod:`~modelhost.provenance.capture` builds a record from an ended inference (hashes,
  capture modes, sampling);
* :mod:`~modelhost.provenance.store` is the ``mh_provenance`` table;
* :mod:`~modelhost.provenance.recorder` buffers inferences and writes records in batches, off
  the request path, and purges them after the retention;
* :mod:`~modelhost.provenance.replay` runs recorded requests again and compares the answers;
* ``modelhost.api.provenance`` serves them over REST; ``modelhost replay`` is the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

from modelhost.components import Component
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
from modelhost.serving.observers import InferenceObserver

if TYPE_CHECKING:
    from modelhost.app import Services

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
    """The recorder (when recording is on) and the ``/v1/provenance`` routes.

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

    def routers(self) -> list[APIRouter]:
        """``/v1/provenance``."""
        from modelhost.api.provenance import build_router

        return [build_router(self.store, self.replayer, flush_interval_s=self.flush_interval_s)]

    async def start(self) -> None:
        """Start writing and purging in the background."""
        if self.recorder is not None:
            self.recorder.start()

    async def stop(self) -> None:
        """Write what is still buffered."""
        if self.recorder is not None:
            await self.recorder.stop()


def build_provenance(services: Services) -> ProvenanceComponent:
    """The provenance component of a server or worker process."""
    settings = services.settings.provenance
    store = ProvenanceStore(services.registry.engine)
    recorder = None
    if settings.enabled:
        recorder = Recorder(store, settings)
        services.metrics.registry.register(RecorderCollector(recorder))
    replayer = Replayer(services.plane, store)
    return ProvenanceComponent(store, replayer, recorder, settings.flush_interval_s)
