"""The runtime of a feature version: it holds no model.

A ``runtime: feature`` version (see :mod:`modelhost.features`) is loaded, promoted and routed
like any other, so every protocol reaches it; but the data plane runs it itself (render, call
the feature's model, enforce the output schema) and never calls this runtime's ``predict``.
Loading compiles the template, so a version whose template does not compile is FAILED.
"""

from __future__ import annotations

from typing import Any

from modelhost.errors import RuntimeFailure
from modelhost.runtimes.base import Prediction, Runtime


class FeatureRuntime(Runtime):
    """Checks the feature's template at load; the answering model is another version."""

    def load(self) -> None:
        """Compile the template (a bad one fails the load with the line named)."""
        from modelhost.features.template import FeatureTemplate

        feature = self.manifest.feature
        if feature is None:
            raise RuntimeFailure(f"{self.manifest.ref} has no feature section")
        FeatureTemplate(feature.template)

    def predict(self, inputs: list[Any], parameters: dict[str, Any]) -> Prediction:
        """Never called by the data plane, which runs the feature instead.

        Raises:
            RuntimeFailure: always.
        """
        raise RuntimeFailure(f"{self.manifest.ref} is a feature: the data plane runs it")

    def metadata(self) -> dict[str, Any]:
        """The model that answers and the template's digest."""
        feature = self.manifest.feature
        if feature is None:
            return {}
        return {"model": feature.model, "template_digest": feature.template_digest()}
