"""The OpenAI codec: request bodies parsed and refused by name, runtime inputs and parameters
taken from them, and the response, chunk and embedding shapes the SDK reads."""

from __future__ import annotations

import base64
from typing import Any

import jsonschema
import numpy as np
import pytest

from modelhost.errors import InvalidInput
from modelhost.inference import Usage
from modelhost.protocol.openai import (
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingRequest,
    body_schema,
    embedding_list,
    parse_body,
)

CHAT: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


def _refused(kind: type[Any], payload: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_body(kind, payload)
    return caught.value


# -- parsing -----------------------------------------------------------------------------------


def test_a_body_that_is_not_an_object_is_refused() -> None:
    error = _refused(ChatCompletionRequest, [CHAT])
    assert error.param == "body"
    assert "JSON object" in str(error)


def test_a_missing_or_wrong_field_is_named() -> None:
    assert _refused(ChatCompletionRequest, {"model": "tiny"}).param == "messages"
    assert _refused(ChatCompletionRequest, {**CHAT, "messages": []}).param == "messages"
    assert _refused(ChatCompletionRequest, {**CHAT, "model": ""}).param == "model"
    assert _refused(ChatCompletionRequest, {**CHAT, "temperature": 3}).param == "temperature"
    assert _refused(ChatCompletionRequest, {**CHAT, "max_tokens": 0}).param == "max_tokens"
    bad_role = {**CHAT, "messages": [{"role": "robot", "content": "x"}]}
    assert _refused(ChatCompletionRequest, bad_role).param == "messages[0].role"
    assert _refused(ChatCompletionRequest, {**CHAT, "stop": ["a"] * 5}).param == "stop"


def test_an_unknown_parameter_is_refused_by_name() -> None:
    error = _refused(ChatCompletionRequest, {**CHAT, "temprature": 0.5})
    assert error.param == "temprature"
    assert "unrecognized request argument 'temprature'" in str(error)


@pytest.mark.parametrize(
    ("name", "neutral", "other"),
    [
        ("presence_penalty", 0, 0.5),
        ("frequency_penalty", None, 1),
        ("logprobs", False, True),
        ("tools", [], [{"type": "function"}]),
        ("tool_choice", "auto", "required"),
        ("logit_bias", {}, {"50256": -100}),
    ],
)
def test_a_known_parameter_is_accepted_with_its_neutral_value_only(
    name: str, neutral: Any, other: Any
) -> None:
    assert parse_body(ChatCompletionRequest, {**CHAT, name: neutral}).model == "tiny"
    error = _refused(ChatCompletionRequest, {**CHAT, name: other})
    assert error.param == name
    assert "not supported by modelhost" in str(error)


def test_ignored_parameters_change_nothing() -> None:
    body = parse_body(
        ChatCompletionRequest,
        {**CHAT, "metadata": {"k": "v"}, "store": True, "service_tier": "auto", "user": "u"},
    )
    assert body.parameters() == {}
    assert body.input_item() == {"messages": [{"role": "user", "content": "hi"}]}


def test_n_other_than_one_and_stream_options_without_stream_are_refused() -> None:
    assert parse_body(ChatCompletionRequest, {**CHAT, "n": 1}).n == 1
    error = _refused(ChatCompletionRequest, {**CHAT, "n": 2})
    assert error.param == "n"
    assert "send n requests instead" in str(error)
    options = {"include_usage": True}
    error = _refused(ChatCompletionRequest, {**CHAT, "stream_options": options})
    assert error.param == "stream_options"
    streamed = parse_body(
        ChatCompletionRequest, {**CHAT, "stream": True, "stream_options": options}
    )
    assert streamed.include_usage is True
    assert parse_body(ChatCompletionRequest, {**CHAT, "stream": True}).include_usage is False


def test_chat_messages_become_runtime_input_with_developer_as_system() -> None:
    body = parse_body(
        ChatCompletionRequest,
        {
            "model": "tiny",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": None, "name": "bot"},
            ],
        },
    )
    assert body.input_item() == {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "ab"},
            {"role": "assistant", "content": ""},
        ]
    }


def test_a_content_part_that_is_not_text_is_refused_by_position() -> None:
    image = {"type": "image_url", "image_url": {"url": "http://x"}}
    body = parse_body(
        ChatCompletionRequest,
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, image]}],
        },
    )
    with pytest.raises(InvalidInput) as caught:
        body.input_item()
    assert caught.value.param == "messages[0].content[1]"
    assert "'image_url'" in str(caught.value)


def test_chat_parameters_prefer_max_completion_tokens_and_keep_the_response_format() -> None:
    schema_format = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}},
    }
    body = parse_body(
        ChatCompletionRequest,
        {
            **CHAT,
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "temperature": 0,
            "seed": 3,
            "stop": "\n",
            "response_format": schema_format,
        },
    )
    assert body.parameters() == {
        "max_tokens": 20,
        "temperature": 0,
        "seed": 3,
        "stop": "\n",
        "response_format": schema_format,
    }
    assert parse_body(ChatCompletionRequest, {**CHAT, "stop": []}).parameters() == {}


def test_completion_prompts_are_strings_and_one_when_streamed() -> None:
    one = parse_body(CompletionRequest, {"model": "tiny", "prompt": "a", "max_tokens": 4})
    assert one.prompts() == ["a"]
    assert one.parameters() == {"max_tokens": 4}
    many = parse_body(CompletionRequest, {"model": "tiny", "prompt": ["a", "b"]})
    assert many.prompts() == ["a", "b"]
    streamed = parse_body(
        CompletionRequest, {"model": "tiny", "prompt": ["a", "b"], "stream": True}
    )
    with pytest.raises(InvalidInput, match="exactly one prompt, not 2"):
        streamed.prompts()
    tokens = parse_body(CompletionRequest, {"model": "tiny", "prompt": [1, 2, 3]})
    with pytest.raises(InvalidInput, match="token ids") as caught:
        tokens.prompts()
    assert caught.value.param == "prompt"


def test_embedding_inputs_are_texts_and_dimensions_a_parameter() -> None:
    body = parse_body(EmbeddingRequest, {"model": "e", "input": "x", "dimensions": 8})
    assert body.texts() == ["x"]
    assert body.parameters() == {"dimensions": 8}
    assert parse_body(EmbeddingRequest, {"model": "e", "input": ["a", "b"]}).parameters() == {}
    with pytest.raises(InvalidInput, match="token ids"):
        parse_body(EmbeddingRequest, {"model": "e", "input": [[1, 2]]}).texts()
    assert _refused(
        EmbeddingRequest, {"model": "e", "input": "x", "encoding_format": "hex"}
    ).param == ("encoding_format")


def test_the_published_schema_accepts_and_refuses_what_the_parser_does() -> None:
    schema = body_schema(ChatCompletionRequest)
    validator = jsonschema.Draft202012Validator(schema)
    assert schema["additionalProperties"] is False
    assert validator.is_valid({**CHAT, "presence_penalty": 0, "metadata": {"a": 1}})
    assert not validator.is_valid({**CHAT, "temprature": 1})
    assert not validator.is_valid({**CHAT, "presence_penalty": 0.5})


# -- responses ---------------------------------------------------------------------------------


def _completion(chat: bool, include_usage: bool = False) -> Completion:
    return Completion("chatcmpl-1", 1700000000, "tiny@1.0.0", "fp", chat, include_usage)


def test_a_chat_response_carries_message_finish_reason_usage_and_cost() -> None:
    usage = Usage(input_tokens=5, output_tokens=2, cost=0.25, currency="USD")
    body = _completion(True).response([{"text": "hi", "finish_reason": "length"}], usage)
    assert body["object"] == "chat.completion"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi"},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "cost": 0.25,
        "currency": "USD",
    }
    assert body["system_fingerprint"] == "fp"


def test_a_text_completion_has_one_choice_per_prompt_and_no_cost_when_unpriced() -> None:
    body = _completion(False).response(
        [{"text": "a"}, {"text": "b", "finish_reason": "stop"}], Usage(1, 1)
    )
    assert body["object"] == "text_completion"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "a", "stop"),
        (1, "b", "stop"),
    ]
    assert "cost" not in body["usage"]


def test_chat_chunks_open_with_the_role_then_text_then_the_finish_reason() -> None:
    completion = _completion(True)
    (opening,) = completion.opening()
    assert opening["object"] == "chat.completion.chunk"
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    piece = completion.piece("Hel")
    assert piece["choices"][0]["delta"] == {"content": "Hel"}
    assert piece["choices"][0]["finish_reason"] is None
    closing = completion.closing("stop")
    assert closing["choices"][0]["delta"] == {}
    assert closing["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in piece  # only announced when the caller asked for usage


def test_text_chunks_have_no_opening_and_carry_text() -> None:
    completion = _completion(False)
    assert completion.opening() == []
    assert completion.piece("x")["choices"] == [
        {"index": 0, "text": "x", "logprobs": None, "finish_reason": None}
    ]
    assert completion.closing("length")["choices"][0]["finish_reason"] == "length"


def test_with_include_usage_every_chunk_has_null_usage_and_the_last_has_it() -> None:
    completion = _completion(True, include_usage=True)
    assert completion.piece("a")["usage"] is None
    last = completion.usage_chunk(Usage(input_tokens=3, output_tokens=4))
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_embeddings_as_floats_or_little_endian_float32_base64() -> None:
    results = [{"embedding": [0.5, -1.0]}, {"embedding": [2.0, 0.25]}]
    usage = Usage(input_tokens=6, cost=0.1, currency="EUR")
    floats = embedding_list(results, usage, "e@1", "float")
    assert floats["object"] == "list"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert floats["data"][0] == {"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}
    assert floats["usage"] == {
        "prompt_tokens": 6,
        "total_tokens": 6,
        "cost": 0.1,
        "currency": "EUR",
    }
    encoded = embedding_list(results, Usage(input_tokens=6), "e@1", "base64")
    raw = base64.b64decode(encoded["data"][1]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == [2.0, 0.25]
    assert encoded["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
