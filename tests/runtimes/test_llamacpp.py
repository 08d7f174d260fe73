from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelhost.errors import InvalidInput
from modelhost.runtimes import Runtime
from modelhost.runtimes.llamacpp import LlamaCppRuntime
from tests.runtimes.conftest import load_runtime

pytestmark = pytest.mark.llm


@pytest.fixture(scope="module")
def gemma(gemma_dir: Path) -> Runtime:
    return load_runtime(gemma_dir)


def test_chat_uses_gemma_template_and_is_deterministic(gemma: Runtime) -> None:
    assert isinstance(gemma, LlamaCppRuntime)
    assert gemma.metadata()["chat_template"] == "builtin:gemma"
    item = {"messages": [{"role": "user", "content": "What is 2+2?"}]}
    first = gemma.predict([item], {"max_tokens": 8, "temperature": 0.8, "seed": 7})
    second = gemma.predict([item], {"max_tokens": 8, "temperature": 0.8, "seed": 7})
    assert first.results == second.results
    assert first.results[0]["text"]
    assert 0 < first.usage.output_tokens <= 8


def test_stream_yields_pieces_then_usage(gemma: Runtime) -> None:
    chunks = list(gemma.stream({"prompt": "Once upon a time"}, {"max_tokens": 6, "temperature": 0}))
    assert len(chunks) >= 2
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.output_tokens == len([c for c in chunks if c.text])
    assert "".join(c.text for c in chunks).strip()
    assert chunks[-1].usage.input_tokens == 5  # <bos> Once upon a time


def test_stop_sequence_ends_generation(gemma: Runtime) -> None:
    result = gemma.predict(
        [{"prompt": "1, 2, 3, 4, 5,"}], {"max_tokens": 20, "temperature": 0, "stop": ["8"]}
    ).results[0]
    assert "8" not in result["text"]
    assert result["finish_reason"] == "stop"


def test_json_object_is_valid_json(gemma: Runtime) -> None:
    ask = 'Reply with a JSON object with one key, "ok", set to true.'
    text = gemma.predict(
        [{"messages": [{"role": "user", "content": ask}]}],
        {"max_tokens": 100, "temperature": 0, "response_format": {"type": "json_object"}},
    ).results[0]
    assert text["finish_reason"] == "stop"
    assert isinstance(json.loads(text["text"]), dict)


def test_bad_requests(gemma: Runtime) -> None:
    with pytest.raises(InvalidInput, match="context"):
        gemma.predict([{"prompt": "word " * 5000}], {"max_tokens": 1})
    with pytest.raises(InvalidInput, match=r"response_format\.type"):
        gemma.predict([{"prompt": "x"}], {"response_format": {"type": "yaml"}})
    with pytest.raises(InvalidInput):
        gemma.predict([{"neither": 1}], {})
