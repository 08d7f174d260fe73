from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelhost.errors import InvalidInput, RuntimeFailure
from modelhost.manifest import load_manifest
from modelhost.runtimes import RuntimeContext
from modelhost.runtimes.embeddings_onnx import EmbeddingsOnnxRuntime, export_onnx
from tests.runtimes.conftest import load_runtime, load_torch_embeddings

pytestmark = pytest.mark.embeddings

TEXTS = [
    "hello world",
    "How do I reset my password?",
    "Ünïcödé, émojis 🙂 and CJK 日本語 text mixed together.",
    "The central bank raised interest rates by a quarter point, citing persistent inflation. "
    * 30,  # beyond max_seq_length: truncated
]


@pytest.fixture(scope="module")
def onnx_runtime(minilm_dir: Path) -> EmbeddingsOnnxRuntime:
    """The demo build exports the ONNX graph and asks for the onnx backend."""
    assert load_manifest(minilm_dir).options["backend"] == "onnx"
    assert (minilm_dir / "model.onnx").stat().st_size > 50_000_000
    runtime = load_runtime(minilm_dir)
    assert isinstance(runtime, EmbeddingsOnnxRuntime)
    return runtime


def test_export_writes_a_loadable_graph(minilm_dir: Path, tmp_path: Path) -> None:
    graph = export_onnx(minilm_dir / "model", tmp_path / "again.onnx")
    manifest = load_manifest(minilm_dir)
    manifest = manifest.model_copy(update={"artifacts": {**manifest.artifacts, "onnx": str(graph)}})
    runtime = EmbeddingsOnnxRuntime(RuntimeContext(manifest=manifest, path=minilm_dir, threads=2))
    runtime.load()
    assert len(runtime.predict(["hi"], {}).results[0]["embedding"]) == 384


def test_onnx_matches_sentence_transformers(
    minilm_dir: Path, onnx_runtime: EmbeddingsOnnxRuntime
) -> None:
    torch_runtime = load_torch_embeddings(minilm_dir)
    inputs: list[object] = [*TEXTS, {"text": "hi"}]
    expected = np.array([r["embedding"] for r in torch_runtime.predict(inputs, {}).results])
    got = np.array([r["embedding"] for r in onnx_runtime.predict(inputs, {}).results])
    assert got.shape == expected.shape == (5, 384)
    assert (got * expected).sum(axis=1).min() >= 0.9999
    one = np.array(onnx_runtime.predict([TEXTS[1]], {}).results[0]["embedding"])
    assert np.allclose(one, got[1], atol=1e-5)


def test_onnx_tokens_dimensions_and_metadata(onnx_runtime: EmbeddingsOnnxRuntime) -> None:
    assert onnx_runtime.metadata() == {"dimensions": 384, "max_seq_length": 256}
    prediction = onnx_runtime.predict(["hello world", {"text": "hi"}], {})
    vectors = np.array([r["embedding"] for r in prediction.results])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # [CLS] hello world [SEP] + [CLS] hi [SEP]
    assert prediction.usage.input_tokens == 7
    assert onnx_runtime.count_tokens(["hello world", "hi"]) == 7
    assert onnx_runtime.count_tokens([TEXTS[3]]) == 256
    short = onnx_runtime.predict(["hello world"], {"dimensions": 64}).results[0]["embedding"]
    assert len(short) == 64
    raw = onnx_runtime.predict(["hello world"], {"normalize": False}).results[0]["embedding"]
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 1e-3
    with pytest.raises(InvalidInput):
        onnx_runtime.predict([42], {})


def test_onnx_not_loaded(minilm_dir: Path) -> None:
    runtime = EmbeddingsOnnxRuntime(
        RuntimeContext(manifest=load_manifest(minilm_dir), path=minilm_dir)
    )
    assert runtime.metadata() == {}
    with pytest.raises(RuntimeFailure):
        runtime.predict(["hello"], {})


def test_onnx_runs_shrink_the_cpu_arena(onnx_runtime: EmbeddingsOnnxRuntime) -> None:
    from modelhost.runtimes.onnx import ARENA_SHRINKAGE

    assert onnx_runtime._run_options.get_run_config_entry(ARENA_SHRINKAGE) == "cpu:0"
    long_then_short = onnx_runtime.predict(["word " * 300, "hi"], {}).results
    assert len(long_then_short) == 2
    assert len(long_then_short[0]["embedding"]) == 384
