"""Shared input and output handling of tabular runtimes (sklearn and onnx)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from modelhost.errors import InvalidInput
from modelhost.manifest import ModelManifest, Task


class TabularCodec:
    """Turns JSON inputs into a feature matrix and model outputs into results.

    Inputs are either objects keyed by feature name (ordered by ``options.feature_names``)
    or arrays of numbers in feature order.
    """

    def __init__(self, manifest: ModelManifest, labels: list[str] | None = None) -> None:
        self.features: list[str] = list(manifest.options.get("feature_names", []))
        configured = manifest.options.get("labels")
        self.labels: list[str] | None = (
            [str(x) for x in configured] if configured else (labels or None)
        )
        self.task = manifest.task

    def matrix(self, inputs: list[Any], dtype: type = np.float64) -> npt.NDArray[Any]:
        """A 2-D array of the inputs.

        Raises:
            InvalidInput: an object lacks a feature, or rows differ in length.
        """
        rows: list[Any] = []
        for index, item in enumerate(inputs):
            if isinstance(item, dict):
                if not self.features:
                    raise InvalidInput(
                        "this model takes arrays of numbers, not objects", param=f"inputs[{index}]"
                    )
                try:
                    rows.append([item[name] for name in self.features])
                except KeyError as exc:
                    raise InvalidInput(
                        f"missing feature {exc.args[0]!r}", param=f"inputs[{index}].{exc.args[0]}"
                    ) from None
            else:
                rows.append(item)
        try:
            return np.asarray(rows, dtype=dtype)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"inputs are not a numeric table: {exc}", param="inputs") from None

    def label(self, value: Any) -> str | int | float:
        """The public name of a class id."""
        if isinstance(value, np.generic):
            value = value.item()
        if self.labels is not None and isinstance(value, int) and 0 <= value < len(self.labels):
            return self.labels[value]
        return value  # type: ignore[no-any-return]  # numpy scalar already unwrapped

    def classes(self, classes: list[Any]) -> list[str]:
        """Names of the model's classes, in the model's order."""
        return [str(self.label(c)) for c in classes]

    def from_probabilities(
        self, probabilities: npt.NDArray[Any], classes: list[Any]
    ) -> list[dict[str, Any]]:
        """Classification results: label, score, and every class probability."""
        names = self.classes(classes)
        best = probabilities.argmax(axis=1)
        results = []
        for row, top in zip(probabilities.tolist(), best.tolist(), strict=True):
            results.append(
                {
                    "label": names[top],
                    "score": row[top],
                    "probabilities": dict(zip(names, row, strict=True)),
                }
            )
        return results

    def from_values(self, values: npt.NDArray[Any]) -> list[dict[str, Any]]:
        """Regression or label-only results."""
        flat = values.reshape(len(values), -1)
        if self.task is Task.CLASSIFICATION:
            return [{"label": self.label(v[0]), "score": None} for v in flat]
        if flat.shape[1] == 1:
            return [{"value": v[0]} for v in flat.tolist()]
        return [{"value": v} for v in flat.tolist()]
