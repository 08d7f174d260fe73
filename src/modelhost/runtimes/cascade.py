"""The runtime of a cascade version: it holds no model.

A ``runtime: cascade`` version is loaded and promoted like any other, so it is served under a
model name on every protocol; but the data plane runs its stages itself (see
:mod:`modelhost.serving.cascade`) and never calls this runtime's ``predict``.
"""

from __future__ import annotations

from typing import Any

from modelhost.errors import RuntimeFailure
from modelhost.runtimes.base import Prediction, Runtime


class CascadeRuntime(Runtime):
    """Loads nothing; the stages are other model versions."""

    def load(self) -> None:
        """Nothing to load."""

    def predict(self, inputs: list[Any], parameters: dict[str, Any]) -> Prediction:
        """Never called by the data plane, which runs the stages instead.

        Raises:
            RuntimeFailure: always.
        """
        raise RuntimeFailure(f"{self.manifest.ref} is a cascade: its stages answer")

    def metadata(self) -> dict[str, Any]:
        """The stages, for model metadata."""
        cascade = self.manifest.cascade
        return {"stages": [s.model for s in cascade.stages]} if cascade is not None else {}
