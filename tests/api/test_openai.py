"""The OpenAI-compatible API with the official ``openai`` SDK (and raw HTTP) against the session
server and the real demo models."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jsonschema
import numpy as np
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from modelhost.api.openai import sse_events
from modelhost.errors import InferenceTimeout
from modelhost.inference import Usage
from modelhost.protocol.openai import Completion
from modelhost.runtimes import StreamChunk
from tests.conftest import Server

GEMMA = "gemma-270m"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a colour."}]
SENTENCES = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock prices fell today."]


@pytest.fixture(scope="module")
def sdk(server: Server) -> Iterator[OpenAI]:
    """The official sync client, without retries so that status codes are seen as sent."""
    with OpenAI(
        base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120
    ) as client:
        yield client


def _async_sdk(server: Server) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120
    )


def _events(body: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    lines = [line for line in body.split("\n\n") if line.strip()]
    assert all(line.startswith("data: ") for line in lines), body
    return [line.removeprefix("data: ") for line in lines]


# -- models ----------------------------------------------------------------------------------


def test_sdk_lists_models(sdk: OpenAI) -> None:
    models = {m.id: m for m in sdk.models.list()}
    assert {"iris", "minilm", GEMMA} <= set(models)
    assert models["minilm"].object == "model"
    assert models["minilm"].owned_by == "modelhost"
    assert models["minilm"].created > 0


def test_openapi_documents_the_openai_routes(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    chat = paths["/v1/chat/completions"]["post"]
    schema = chat["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "messages", "stream"} <= set(schema["properties"])
    assert "/v1/completions" in paths
    assert "/v1/embeddings" in paths


# -- embeddings ------------------------------------------------------------------------------


def test_float_embeddings_are_normalised_and_semantic(sdk: OpenAI) -> None:
    result = sdk.embeddings.create(model="minilm", input=SENTENCES, encoding_format="float")
    assert result.object == "list"
    assert result.model == "minilm"
    assert [d.index for d in result.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > 0.5 > vectors[0] @ vectors[2]
    assert result.usage.prompt_tokens > len(SENTENCES)
    assert result.usage.total_tokens == result.usage.prompt_tokens


def test_base64_embeddings_decode_to_the_float_ones(sdk: OpenAI, client: httpx.Client) -> None:
    floats = sdk.embeddings.create(model="minilm", input=SENTENCES[0], encoding_format="float")
    default = sdk.embeddings.create(model="minilm", input=SENTENCES[0])  # the SDK asks base64
    assert len(default.data[0].embedding) == 384
    assert np.allclose(default.data[0].embedding, floats.data[0].embedding, atol=1e-6)
    raw = client.post(
        "/v1/embeddings",
        json={"model": "minilm", "input": SENTENCES[0], "encoding_format": "base64"},
    ).json()
    encoded = raw["data"][0]["embedding"]
    assert isinstance(encoded, str)
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert decoded.shape == (384,)
    assert np.allclose(decoded, floats.data[0].embedding, atol=1e-6)


def test_embedding_dimensions_truncate(sdk: OpenAI) -> None:
    full = sdk.embeddings.create(model="minilm", input="hello", encoding_format="float")
    short = sdk.embeddings.create(
        model="minilm", input="hello", dimensions=64, encoding_format="float"
    )
    assert len(short.data[0].embedding) == 64
    assert np.allclose(short.data[0].embedding, full.data[0].embedding[:64], atol=1e-6)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.embeddings.create(model="minilm", input="hello", dimensions=1000)
    assert info.value.param == "dimensions"
    assert "384" in info.value.message


@pytest.mark.asyncio
async def test_async_embeddings(server: Server) -> None:
    async with _async_sdk(server) as client:
        result = await client.embeddings.create(model="minilm", input=SENTENCES[:2])
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (2, 384)
    assert vectors[0] @ vectors[1] > 0.5


def test_version_is_pinned_by_reference_or_header(sdk: OpenAI) -> None:
    pinned = sdk.embeddings.with_raw_response.create(model="minilm@1.0.0", input="hi")
    assert pinned.headers["x-model-version"] == "1.0.0"
    assert len(pinned.parse().data[0].embedding) == 384
    headed = sdk.embeddings.with_raw_response.create(
        model="minilm", input="hi", extra_headers={"X-Model-Version": "1.0.0"}
    )
    assert headed.headers["x-model-version"] == "1.0.0"
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="minilm", input="hi", extra_headers={"X-Model-Version": "9.9"})


# -- errors ----------------------------------------------------------------------------------


def test_unknown_model_is_404(sdk: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk.chat.completions.create(model="no-such-model", messages=HELLO)
    assert info.value.status_code == 404
    assert info.value.param == "model"
    assert info.value.type == "not_found_error"
    assert info.value.response.headers["x-request-id"]
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="minilm@9.9.9", input="hi")


def test_models_that_cannot_serve_a_route_are_400(sdk: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="iris", messages=HELLO)
    assert info.value.param == "model"
    assert "classification model" in info.value.message
    assert "/v1/models/iris/predict" in info.value.message
    with pytest.raises(openai.BadRequestError, match="embedding"):
        sdk.embeddings.create(model="iris", input="hi")
    with pytest.raises(openai.BadRequestError, match="generation"):
        sdk.completions.create(model="minilm", prompt="hi")


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"n": 2}, "n", "one choice"),
        ({"temperature": 5}, "temperature", "less than or equal to 2"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": 5000}, "max_tokens", "smaller than or equal to 2048"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream is true"),
        ({"logprobs": True}, "logprobs", "not supported"),
        ({"frobnicate": 1}, "frobnicate", "unrecognized"),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "'json_schema'"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                }
            },
            "response_format.json_schema.schema",
            "not a valid JSON Schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"$ref": "#"}},
                }
            },
            "response_format.json_schema.schema",
            "cannot be turned into a decoding grammar",
        ),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "'assistant'"),
        (
            {"messages": [*HELLO, {"role": "user", "content": "x" * 16001}]},
            "messages[1].content",
            "shorter than or equal to 16000",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
            "'image_url'",
        ),
    ],
)
def test_bad_chat_parameters_are_400_naming_the_param(
    client: httpx.Client, extra: dict[str, Any], param: str, words: str
) -> None:
    body = {"model": GEMMA, "messages": HELLO, "max_tokens": 4, **extra}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


def test_bad_requests_through_the_sdk(sdk: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model=GEMMA, messages=HELLO, n=3)
    assert info.value.param == "n"
    with pytest.raises(openai.BadRequestError, match="token ids"):
        sdk.embeddings.create(model="minilm", input=[[101, 102]])
    with pytest.raises(openai.BadRequestError, match="token ids"):
        sdk.completions.create(model=GEMMA, prompt=[1, 2, 3])
    with pytest.raises(openai.BadRequestError) as info:
        sdk.embeddings.create(model="minilm", input=[])
    assert info.value.param == "input"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.embeddings.create(model="minilm", input=["fine", "x" * 20001])
    assert info.value.param == "input[1]"
    assert "- input[1] must be shorter" in info.value.message


def test_malformed_bodies_are_400(client: httpx.Client) -> None:
    for content in (b"", b"{not json", b"[1, 2]"):
        response = client.post("/v1/chat/completions", content=content)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "body"
    missing = client.post("/v1/embeddings", json={"input": "hi"})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "model"


def test_model_not_ready_is_503(client: httpx.Client, sdk: OpenAI) -> None:
    # a chat call first: the injection detector starts using minilm's runtime
    sdk.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=2)
    assert client.post("/v1/models/minilm/versions/1.0.0/unload").status_code == 200
    try:
        with pytest.raises(openai.InternalServerError) as info:
            sdk.embeddings.create(model="minilm", input="hi")
        assert info.value.status_code == 503
        assert info.value.type == "model_not_ready"
        assert int(info.value.response.headers["retry-after"]) >= 1
    finally:
        loaded = client.post("/v1/models/minilm/versions/1.0.0/load")
    assert loaded.json()["state"] == "ready"
    assert len(sdk.embeddings.create(model="minilm", input="hi").data[0].embedding) == 384
    # the detector follows the reloaded runtime rather than calling the unloaded one
    reply = sdk.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=2)
    assert reply.choices[0].message.content is not None


@pytest.mark.asyncio
async def test_an_error_while_streaming_is_an_error_event_without_done() -> None:
    async def chunks() -> AsyncIterator[StreamChunk]:
        yield StreamChunk(text="Hel")
        raise InferenceTimeout("gemma-270m@1.0.0 did not answer within 1s")

    shape = Completion(
        id="chatcmpl-1", created=1, model=GEMMA, fingerprint="modelhost-1", chat=True
    )
    events = [event async for event in sse_events(shape, chunks(), "rid-1")]
    payloads = [json.loads(e.removeprefix(b"data: ")) for e in events]
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert payloads[1]["choices"][0]["delta"] == {"content": "Hel"}
    assert payloads[2] == {
        "error": {
            "type": "timeout_error",
            "message": "gemma-270m@1.0.0 did not answer within 1s",
            "param": None,
            "code": "timeout_error",
            "request_id": "rid-1",
        }
    }
    assert len(events) == 3


@pytest.mark.asyncio
async def test_text_stream_events_end_with_usage_and_done() -> None:
    async def chunks() -> AsyncIterator[StreamChunk]:
        yield StreamChunk(text="a")
        yield StreamChunk(text="", finish_reason="length", usage=Usage(3, 1))

    shape = Completion(
        id="cmpl-1", created=1, model=GEMMA, fingerprint="f", chat=False, include_usage=True
    )
    events = [event async for event in sse_events(shape, chunks(), "rid")]
    assert events[-1] == b"data: [DONE]\n\n"
    payloads = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert [p["choices"] for p in payloads] == [
        [{"index": 0, "text": "a", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}],
        [],
    ]
    assert payloads[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert all(p["object"] == "text_completion" for p in payloads)


# -- generation (gemma) ----------------------------------------------------------------------


@pytest.mark.llm
def test_chat_completion_shape_usage_and_same_answer_as_v1(
    sdk: OpenAI, client: httpx.Client
) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model=GEMMA, messages=HELLO, max_tokens=12, temperature=0, user="someone"
    )
    assert raw.headers["x-model-version"] == "1.0.0"
    result = raw.parse()
    assert result.id.startswith("chatcmpl-")
    assert result.object == "chat.completion"
    assert result.model == GEMMA
    assert result.system_fingerprint == "modelhost-1.0.0"
    (choice,) = result.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert result.usage is not None
    assert 0 < result.usage.completion_tokens <= 12
    assert result.usage.prompt_tokens > 5
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    v1 = client.post(
        f"/v1/models/{GEMMA}/predict",
        json={"inputs": [{"messages": HELLO}], "parameters": {"max_tokens": 12, "temperature": 0}},
    ).json()
    assert v1["results"][0]["text"] == choice.message.content
    assert v1["usage"]["output_tokens"] == result.usage.completion_tokens


@pytest.mark.llm
def test_text_parts_and_developer_role_are_accepted(sdk: OpenAI) -> None:
    plain = sdk.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=8, temperature=0)
    parts = sdk.chat.completions.create(
        model=GEMMA,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Name a "},
                    {"type": "text", "text": "colour."},
                ],
            },
        ],
        max_tokens=8,
        temperature=0,
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content
    developer = sdk.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "developer", "content": "Answer briefly."}, *HELLO],
        max_tokens=4,
        temperature=0,
    )
    assert developer.choices[0].message.content
    assert developer.usage is not None
    assert developer.usage.completion_tokens == 4


@pytest.mark.llm
def test_max_completion_tokens_bounds_the_answer(sdk: OpenAI) -> None:
    result = sdk.chat.completions.create(
        model=GEMMA, messages=HELLO, max_completion_tokens=3, temperature=0
    )
    assert result.usage is not None
    assert result.usage.completion_tokens == 3
    assert result.choices[0].finish_reason == "length"


@pytest.mark.llm
def test_chat_stream_matches_the_plain_answer_and_reports_usage(sdk: OpenAI) -> None:
    plain = sdk.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=10, temperature=0)
    stream = sdk.chat.completions.create(
        model=GEMMA,
        messages=HELLO,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == plain.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert plain.usage is not None
    assert usage_chunk.usage.completion_tokens == plain.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == plain.usage.prompt_tokens


@pytest.mark.llm
def test_raw_sse_ends_with_done(client: httpx.Client) -> None:
    body = {"model": GEMMA, "messages": HELLO, "max_tokens": 6, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-model-version"] == "1.0.0"
        text = response.read().decode()
    events = _events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(len(c["choices"]) == 1 for c in chunks)  # no usage chunk unless asked
    assert "usage" not in chunks[0]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"][0]["delta"] == {}


@pytest.mark.llm
@pytest.mark.asyncio
async def test_async_chat_plain_and_streamed(server: Server) -> None:
    async with _async_sdk(server) as client:
        plain = await client.chat.completions.create(
            model=GEMMA, messages=HELLO, max_tokens=8, temperature=0
        )
        stream = await client.chat.completions.create(
            model=GEMMA, messages=HELLO, max_tokens=8, temperature=0, stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert plain.choices[0].message.content
    assert "".join(pieces) == plain.choices[0].message.content


@pytest.mark.llm
def test_streaming_errors_before_generation_get_a_status(client: httpx.Client) -> None:
    body = {
        "model": GEMMA,
        "messages": [{"role": "user", "content": "word " * 3000}],
        "stream": True,
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages"
    assert "context" in response.json()["error"]["message"]


@pytest.mark.llm
def test_completions_run_several_prompts_in_one_call(sdk: OpenAI) -> None:
    prompts = ["1, 2, 3, 4, 5,", "The sky is"]
    result = sdk.completions.create(model=GEMMA, prompt=prompts, max_tokens=6, temperature=0)
    assert result.object == "text_completion"
    assert result.id.startswith("cmpl-")
    assert [c.index for c in result.choices] == [0, 1]
    single = [
        sdk.completions.create(model=GEMMA, prompt=p, max_tokens=6, temperature=0) for p in prompts
    ]
    assert [c.text for c in result.choices] == [s.choices[0].text for s in single]
    assert result.usage is not None
    assert result.usage.completion_tokens == sum(
        s.usage.completion_tokens for s in single if s.usage is not None
    )
    with pytest.raises(openai.BadRequestError, match="one prompt"):
        sdk.completions.create(model=GEMMA, prompt=prompts, max_tokens=4, stream=True)


@pytest.mark.llm
def test_completions_stream(sdk: OpenAI) -> None:
    plain = sdk.completions.create(model=GEMMA, prompt="The sky is", max_tokens=6, temperature=0)
    stream = sdk.completions.create(
        model=GEMMA,
        prompt="The sky is",
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert chunks[-1].usage is not None
    assert plain.usage is not None
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens


@pytest.mark.llm
def test_stop_sequences_cut_the_text(sdk: OpenAI) -> None:
    result = sdk.completions.create(
        model=GEMMA, prompt="1, 2, 3, 4, 5,", max_tokens=16, temperature=0, stop=["8"]
    )
    assert result.choices[0].text == " 6, 7, "
    assert result.choices[0].finish_reason == "stop"
    full = sdk.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=16, temperature=0)
    text = full.choices[0].message.content or ""
    stop = text.strip().split()[2]  # a word the unstopped answer reaches
    cut = sdk.chat.completions.create(
        model=GEMMA, messages=HELLO, max_tokens=16, temperature=0, stop=stop
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]


@pytest.mark.llm
def test_same_seed_same_text(sdk: OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me a story."}]

    def sample(seed: int) -> str:
        result = sdk.chat.completions.create(
            model=GEMMA, messages=messages, max_tokens=16, temperature=0.9, seed=seed
        )
        return result.choices[0].message.content or ""

    first = sample(1)
    assert first
    assert sample(1) == first
    assert sample(2) != first


@pytest.mark.llm
def test_json_schema_output_matches_the_schema(sdk: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "colour": {"type": "string", "enum": ["red", "green", "blue"]},
            "bright": {"type": "boolean"},
            "size": {"enum": [1, 2, 3]},
        },
        "required": ["colour", "bright", "size"],
        "additionalProperties": False,
    }
    result = sdk.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Describe a colour as JSON."}],
        max_tokens=32,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "colour", "schema": schema, "strict": True},
        },
    )
    assert result.choices[0].finish_reason == "stop"
    value = json.loads(result.choices[0].message.content or "")
    jsonschema.validate(value, schema)


@pytest.mark.llm
def test_json_object_output_is_a_json_object(sdk: OpenAI) -> None:
    result = sdk.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": '{"a": 1}'}],
        max_tokens=32,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert result.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(result.choices[0].message.content or ""), dict)
