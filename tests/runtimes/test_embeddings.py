from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelhost.errors import InvalidInput
from modelhost.runtimes.embeddings import EmbeddingsRuntime
from tests.runtimes.conftest import load_torch_embeddings


def test_minilm_vectors_tokens_and_dimensions(minilm_dir: Path) -> None:
    runtime = load_torch_embeddings(minilm_dir)
    assert isinstance(runtime, EmbeddingsRuntime)
    assert runtime.metadata()["dimensions"] == 384
    prediction = runtime.predict(["hello world", {"text": "hi"}], {})
    vectors = np.array([r["embedding"] for r in prediction.results])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # [CLS] hello world [SEP] + [CLS] hi [SEP]
    assert prediction.usage.input_tokens == 7
    short = runtime.predict(["hello world"], {"dimensions": 64}).results[0]["embedding"]
    assert len(short) == 64
    with pytest.raises(InvalidInput):
        runtime.predict([42], {})
