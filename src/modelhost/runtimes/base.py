"""The Runtime ABC: what every framework adapter implements.

A runtime is synchronous and owns one loaded model. The data plane calls it from a worker
thread, never on the event loop; wrappers (batching, caching) hold a runtime rather than
patch it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from modelhost.errors import InvalidInput
from modelhost.inference import Usage
from modelhost.manifest import ModelManifest


@dataclass(slots=True)
class Prediction:
    """Results of one runtime call, one per input, in order."""

    results: list[Any]
    usage: Usage = field(default_factory=Usage)


@dataclass(slots=True)
class StreamChunk:
    """One piece of a streamed generation."""

    text: str
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class RuntimeContext:
    """What a runtime is given to load: its manifest, its files and its share of the machine."""

    manifest: ModelManifest
    path: Path
    threads: int = 1

    def file(self, key: str, default: str | None = None) -> Path:
        """Absolute path of the artifact ``key`` named in the manifest."""
        return self.path / self.manifest.artifact(key, default)


class Lane(StrEnum):
    """Which thread pool a runtime's calls run in, so short calls never queue behind long ones.

    A cheap classifier answering in a millisecond must not wait behind a 30-second generation:
    each lane has its own threads (``inference.threads``, ``inference.generate_threads``,
    ``inference.remote_threads``), and a call waits only behind calls of its own lane.
    """

    PREDICT = "predict"  #: CPU work of a few milliseconds: tabular models, ONNX, embeddings
    GENERATE = "generate"  #: in-process token generation: seconds of CPU per call
    REMOTE = "remote"  #: waiting on another server (an upstream API): little CPU, long waits


class Runtime(ABC):
    """One loaded model behind one interface."""

    #: True when ``stream`` yields tokens.
    supports_streaming: bool = False

    @property
    def lane(self) -> Lane:
        """The pool this runtime's calls run in: a runtime that streams tokens generates."""
        return Lane.GENERATE if self.supports_streaming else Lane.PREDICT

    def __init__(self, context: RuntimeContext) -> None:
        self.context = context
        self.manifest = context.manifest

    @abstractmethod
    def load(self) -> None:
        """Load the model into memory; raise to mark the version FAILED."""

    @abstractmethod
    def predict(self, inputs: list[Any], parameters: dict[str, Any]) -> Prediction:
        """Run the model on already validated inputs; one result per input."""

    def stream(self, item: Any, parameters: dict[str, Any]) -> Iterator[StreamChunk]:
        """Stream the result of one input.

        Raises:
            InvalidInput: the runtime does not stream.
        """
        raise InvalidInput(
            f"{self.manifest.ref} ({self.manifest.runtime.value}) does not stream",
            param="stream",
        )

    def unload(self) -> None:  # noqa: B027 - optional hook; most runtimes just drop references
        """Release memory; the default lets the garbage collector do it."""

    def metadata(self) -> dict[str, Any]:
        """Runtime facts worth showing in model metadata."""
        return {}
