from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelhost.errors import InvalidInput
from modelhost.runtimes import Runtime
from modelhost.runtimes.llamacpp import LlamaCppRuntime, fold_system
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


def test_greedy_answers_repeat_exactly_streamed_or_not(gemma: Runtime) -> None:
    # the same request evaluated after a different one and after itself: the context is reset
    # first, so a reused prompt prefix cannot change the float sums and the chosen tokens
    item = {"messages": [{"role": "user", "content": "Count from one to twenty."}]}
    greedy = {"max_tokens": 40, "temperature": 0}
    first = gemma.predict([item], greedy).results[0]["text"]
    gemma.predict([{"prompt": "Count from one"}], greedy)
    again = gemma.predict([item], greedy).results[0]["text"]
    streamed = "".join(chunk.text for chunk in gemma.stream(item, greedy))
    assert first == again == streamed
    assert first


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


OK = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


def test_json_object_is_valid_json(gemma: Runtime) -> None:
    # a schema makes the grammar close the object (a bare JSON grammar lets this small model
    # ramble until max_tokens)
    ask = 'Reply with a JSON object with one key, "ok", set to true.'
    text = gemma.predict(
        [{"messages": [{"role": "user", "content": ask}]}],
        {
            "max_tokens": 100,
            "temperature": 0,
            "response_format": {"type": "json_object", "schema": OK},
        },
    ).results[0]
    assert text["finish_reason"] == "stop"
    assert isinstance(json.loads(text["text"])["ok"], bool)


def test_bad_requests(gemma: Runtime) -> None:
    with pytest.raises(InvalidInput, match="context"):
        gemma.predict([{"prompt": "word " * 5000}], {"max_tokens": 1})
    with pytest.raises(InvalidInput, match=r"response_format\.type"):
        gemma.predict([{"prompt": "x"}], {"response_format": {"type": "yaml"}})
    with pytest.raises(InvalidInput):
        gemma.predict([{"neither": 1}], {})


def test_gemma_gets_its_system_text_in_the_first_user_turn() -> None:
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Thanks"},
    ]
    assert fold_system(messages) == [
        {"role": "user", "content": "Answer in French.\n\nHello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Thanks"},
    ]
    assert fold_system([{"role": "system", "content": "S"}]) == [{"role": "user", "content": "S"}]
    plain = [{"role": "user", "content": "Hi"}]
    assert fold_system(plain) == plain


def test_the_system_message_reaches_gemma(gemma: Runtime) -> None:
    assert isinstance(gemma, LlamaCppRuntime)
    tokens, _ = gemma.chat_tokens(
        [{"role": "system", "content": "Always be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert "Always be brief." in gemma.detokenize(tokens)
