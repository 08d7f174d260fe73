from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelhost.runtimes.onnx import OnnxRuntime
from tests.runtimes.conftest import load_runtime


def test_onnx_export_agrees_with_sklearn(iris_dirs: list[Path], iris_data: tuple[Any, Any]) -> None:
    sk = load_runtime(iris_dirs[0])
    onnx = load_runtime(iris_dirs[1])
    assert isinstance(onnx, OnnxRuntime)
    x, _ = iris_data
    rows = [list(map(float, row)) for row in x]
    a, b = sk.predict(rows, {}).results, onnx.predict(rows, {}).results
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert np.allclose([r["score"] for r in a], [r["score"] for r in b], atol=1e-5)


def test_metadata_describes_graph(iris_dirs: list[Path]) -> None:
    meta = load_runtime(iris_dirs[1]).metadata()
    assert meta["inputs"][0]["name"] == "input"
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
