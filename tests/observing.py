"""An observer that keeps every ended inference, for tests that check what the data plane did."""

from __future__ import annotations

from modelhost.inference import InferenceEvent, InferenceObserver


class Capture(InferenceObserver):
    """Keeps every ended inference."""

    def __init__(self) -> None:
        self.events: list[InferenceEvent] = []

    def observe(self, event: InferenceEvent) -> None:
        self.events.append(event)

    def of(self, model: str) -> list[InferenceEvent]:
        """The ended inferences of ``model``, in order."""
        return [e for e in self.events if e.info is not None and e.info.model == model]
