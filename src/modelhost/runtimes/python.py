"""A user's own Python class, named by import path in ``entrypoint``.

The class is built with the version directory (``ModelClass(path)``) and needs a
``predict(inputs, parameters) -> list`` method; ``load()`` and ``unload()`` are optional, and
a ``stream(item, parameters)`` method yielding text pieces makes the version stream. The
version directory is importable, so the code can ship with the model.
"""

from __future__ import annotations

import importlib
import sys
import sysconfig
import threading
from collections.abc import Iterator
from typing import Any

from modelhost.errors import ManifestError, RuntimeFailure
from modelhost.inference import Usage
from modelhost.runtimes.base import Prediction, Runtime, RuntimeContext, StreamChunk


def _installed_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib"))


#: Model versions load on several threads at once; their imports edit ``sys.path`` and
#: ``sys.modules`` and must not interleave.
_IMPORTING = threading.Lock()


def _import_fresh(module_name: str, root: str) -> Any:
    """Import ``module_name`` from ``root``, even if another model version's module of the same
    name was imported before (two versions commonly ship the same ``model.py``).

    ``sys.modules`` is copied before it is scanned: another thread importing anything at the
    same time would otherwise fail the scan with "dictionary changed size during iteration"
    (seen under CPU load as a python model that failed to load)."""
    top = module_name.split(".")[0]
    installed = _installed_prefixes()
    with _IMPORTING:
        for name in [n for n in list(sys.modules) if n == top or n.startswith(f"{top}.")]:
            origin = getattr(sys.modules.get(name), "__file__", None) or ""
            if origin and not origin.startswith(root) and not origin.startswith(installed):
                sys.modules.pop(name, None)
        if root in sys.path:
            sys.path.remove(root)
        sys.path.insert(0, root)
        importlib.invalidate_caches()
        return importlib.import_module(module_name)


class PythonRuntime(Runtime):
    """Adapts a plain Python class to the Runtime interface."""

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self._model: Any = None

    def load(self) -> None:
        """Import ``entrypoint``, construct the class, call its ``load`` if it has one."""
        entry = self.manifest.entrypoint
        if not entry or ":" not in entry:
            raise ManifestError(
                f"{self.manifest.ref}: field 'entrypoint' must be 'package.module:ClassName' "
                "for the python runtime",
                param="entrypoint",
            )
        module_name, _, class_name = entry.partition(":")
        module = _import_fresh(module_name, str(self.context.path))
        cls = getattr(module, class_name, None)
        if cls is None:
            raise ManifestError(f"{entry}: module {module_name} has no {class_name}")
        self._model = cls(self.context.path)
        if hasattr(self._model, "load"):
            self._model.load()
        self.supports_streaming = callable(getattr(self._model, "stream", None))

    def predict(self, inputs: list[Any], parameters: dict[str, Any]) -> Prediction:
        """Whatever the class returns, checked to be one result per input."""
        if self._model is None:
            raise RuntimeFailure(f"{self.manifest.ref} is not loaded")
        results = list(self._model.predict(inputs, parameters))
        if len(results) != len(inputs):
            raise RuntimeFailure(
                f"{self.manifest.entrypoint}.predict returned {len(results)} results for "
                f"{len(inputs)} inputs"
            )
        return Prediction(results=results, usage=Usage(input_tokens=len(inputs)))

    def stream(self, item: Any, parameters: dict[str, Any]) -> Iterator[StreamChunk]:
        """The class's ``stream`` pieces as chunks; the last one says ``stop`` and counts them
        as output tokens (or the base refusal when the class has no ``stream``)."""
        if self._model is None or not self.supports_streaming:
            yield from super().stream(item, parameters)
            return
        produced = 0
        for piece in self._model.stream(item, parameters):
            produced += 1
            yield StreamChunk(text=str(piece))
        yield StreamChunk(
            text="", finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=produced)
        )

    def unload(self) -> None:
        """Call the class's ``unload`` if it has one, then drop it."""
        if self._model is not None and hasattr(self._model, "unload"):
            self._model.unload()
        self._model = None
