"""ONNX graphs run by onnxruntime."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelhost.errors import MissingDependencyError, RuntimeFailure
from modelhost.inference import Usage
from modelhost.runtimes.base import Prediction, Runtime, RuntimeContext
from modelhost.runtimes.tabular import TabularCodec

_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


#: Run option that lets onnxruntime's CPU arena free, after each run, the regions it grew
#: for that run (docs/operations.md, "Memory").
ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"


def run_options(options: dict[str, Any]) -> Any:
    """The ``RunOptions`` of every run of a session: with ``arena_shrinkage`` (default true)
    the CPU arena gives back after each run what it grew for it, so a large batch does not
    keep its peak for the life of the process (no measurable latency on minilm, whose
    varied-length batches grew the arena ~200 MiB and kept it); None when it is off."""
    import onnxruntime as ort

    if not bool(options.get("arena_shrinkage", True)):
        return None
    run = ort.RunOptions()
    run.add_run_config_entry(ARENA_SHRINKAGE, "cpu:0")
    return run


class OnnxRuntime(Runtime):
    """Feeds the first graph input; reads ``probabilities`` (or the second output) for classes.

    Options: ``labels`` (class names by index), ``feature_names``, ``threads``,
    ``arena_shrinkage`` (default true: see :func:`run_options`).
    """

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self._session: Any = None
        self._codec = TabularCodec(self.manifest)
        self._input = ""
        self._dtype: Any = np.float32
        self._outputs: list[str] = []
        self._run_options: Any = None

    def load(self) -> None:
        """Open an inference session on ``artifacts.model`` (default ``model.onnx``)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("onnxruntime", "onnx") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.manifest.options.get("threads", 1))
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(self.context.file("model", "model.onnx")),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        first = self._session.get_inputs()[0]
        self._input = first.name
        self._dtype = _DTYPES.get(first.type, np.float32)
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._run_options = run_options(self.manifest.options)

    def _probabilities_output(self) -> str | None:
        if "probabilities" in self._outputs:
            return "probabilities"
        return self._outputs[1] if len(self._outputs) > 1 else None

    def predict(self, inputs: list[Any], parameters: dict[str, Any]) -> Prediction:
        """One result per input row."""
        if self._session is None:
            raise RuntimeFailure(f"{self.manifest.ref} is not loaded")
        matrix = self._codec.matrix(inputs, dtype=self._dtype)
        outputs = dict(
            zip(
                self._outputs,
                self._session.run(None, {self._input: matrix}, self._run_options),
                strict=True,
            )
        )
        proba_name = self._probabilities_output()
        proba = outputs.get(proba_name) if proba_name else None
        if isinstance(proba, np.ndarray) and proba.ndim == 2:
            classes = list(range(proba.shape[1]))
            results = self._codec.from_probabilities(proba, classes)
        else:
            results = self._codec.from_values(np.asarray(outputs[self._outputs[0]]))
        return Prediction(results=results, usage=Usage(input_tokens=len(inputs)))

    def unload(self) -> None:
        """Close the session."""
        self._session = None

    def metadata(self) -> dict[str, Any]:
        """Graph inputs and outputs."""
        if self._session is None:
            return {}
        return {
            "inputs": [
                {"name": i.name, "type": i.type, "shape": i.shape}
                for i in self._session.get_inputs()
            ],
            "outputs": [
                {"name": o.name, "type": o.type, "shape": o.shape}
                for o in self._session.get_outputs()
            ],
        }
