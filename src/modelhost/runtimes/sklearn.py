"""scikit-learn estimators saved with joblib."""

from __future__ import annotations

from typing import Any

from modelhost.errors import RuntimeFailure
from modelhost.runtimes.base import Prediction, Runtime, RuntimeContext, Usage
from modelhost.runtimes.tabular import TabularCodec


class SklearnRuntime(Runtime):
    """Calls ``predict_proba`` for classifiers, ``predict`` otherwise."""

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self._model: Any = None
        self._codec = TabularCodec(self.manifest)
        self._classes: list[Any] = []

    def load(self) -> None:
        """Load the joblib file named ``artifacts.model`` (default ``model.joblib``)."""
        import joblib

        self._model = joblib.load(self.context.file("model", "model.joblib"))
        self._classes = list(getattr(self._model, "classes_", []))

    def predict(self, inputs: list[Any], parameters: dict[str, Any]) -> Prediction:
        """One result per input row."""
        if self._model is None:
            raise RuntimeFailure(f"{self.manifest.ref} is not loaded")
        matrix = self._codec.matrix(inputs)
        if self._classes and hasattr(self._model, "predict_proba"):
            results = self._codec.from_probabilities(
                self._model.predict_proba(matrix), self._classes
            )
        else:
            results = self._codec.from_values(self._model.predict(matrix))
        return Prediction(results=results, usage=Usage(input_tokens=len(inputs)))

    def unload(self) -> None:
        """Drop the estimator."""
        self._model = None

    def metadata(self) -> dict[str, Any]:
        """Estimator type and classes."""
        return {
            "estimator": type(self._model).__name__,
            "classes": self._codec.classes(self._classes),
        }
