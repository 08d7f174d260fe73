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


def test_runs_shrink_the_cpu_arena_unless_the_manifest_says_not() -> None:
    from modelhost.runtimes.onnx import ARENA_SHRINKAGE, run_options

    assert run_options({}).get_run_config_entry(ARENA_SHRINKAGE) == "cpu:0"
    assert run_options({"arena_shrinkage": False}) is None


def test_the_loaded_session_runs_with_arena_shrinkage(iris_dirs: list[Path]) -> None:
    from modelhost.runtimes.onnx import ARENA_SHRINKAGE

    runtime = load_runtime(iris_dirs[1])
    assert isinstance(runtime, OnnxRuntime)
    assert runtime._run_options.get_run_config_entry(ARENA_SHRINKAGE) == "cpu:0"
    assert runtime.predict([[5.1, 3.5, 1.4, 0.2]], {}).results
