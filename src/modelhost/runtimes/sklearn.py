"""scikit-learn estimators saved with joblib."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import numpy.typing as npt

from modelhost.errors import RuntimeFailure
from modelhost.inference import Usage
from modelhost.runtimes.base import Prediction, Runtime, RuntimeContext
from modelhost.runtimes.tabular import TabularCodec


def _lean_checks(matrix: npt.NDArray[Any]) -> AbstractContextManager[Any]:
    """Skip scikit-learn's per-call checks that cannot fail here.

    For a 1-row call, sklearn's input validation costs about as much as the model. A matrix
    checked finite here needs no second finiteness scan (``assume_finite``), and a fitted
    estimator's parameters were validated when it was fitted (``skip_parameter_validation``);
    results are identical. A non-finite matrix keeps every check, so it fails as before.
    The configuration is thread-local in sklearn, so concurrent calls do not interfere.
    """
    if matrix.dtype.kind == "f" and bool(np.isfinite(matrix).all()):
        import sklearn

        lean: AbstractContextManager[Any] = sklearn.config_context(
            assume_finite=True, skip_parameter_validation=True
        )
        return lean
    return contextlib.nullcontext()


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
        with _lean_checks(matrix):
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
