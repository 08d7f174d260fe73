"""Streams through the data plane: checks before the first chunk, chunks in order, the whole
answer and its ended event once they run out, output guards over the chunks, a failure in the
middle ended and counted, a consumer that leaves early."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from modelhost.app import Services, build_services, close_services
from modelhost.config import Settings
from modelhost.errors import InvalidInput
from modelhost.inference import InferenceEvent, InferenceObserver, InferenceRequest
from modelhost.registry import Stage
from modelhost.runtimes import StreamChunk
from modelhost.serving.streaming import generate_whole

WORDS = textwrap.dedent(
    '''
    class Words:
        """Streams its text word by word; a word 'FAIL' raises there."""

        def __init__(self, path):
            pass

        def predict(self, inputs, parameters):
            return [{"text": item["text"]} for item in inputs]

        def stream(self, item, parameters):
            words = item["text"].split()
            for word in words:
                if word == "FAIL":
                    raise RuntimeError("the model broke mid-stream")
                yield word + " "


    class Plain(Words):
        stream = None
    '''
)


def _model(root: Path, name: str, cls: str, **extra: Any) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "words.py").write_text(WORDS)
    manifest = {
        "name": name,
        "version": "1.0.0",
        "runtime": "python",
        "entrypoint": f"words:{cls}",
        "input_schema": {
            "type": "object",
            "properties": {"text": {"type": "string", "maxLength": 200}},
            "required": ["text"],
        },
        **extra,
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return directory


class Recorder(InferenceObserver):
    def __init__(self) -> None:
        self.events: list[InferenceEvent] = []

    def observe(self, event: InferenceEvent) -> None:
        self.events.append(event)


@pytest_asyncio.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    built = build_services(Settings(home=tmp_path / "home"))
    built.registry.push(_model(tmp_path, "words", "Words"), actor="t", stage=Stage.PRODUCTION)
    built.registry.push(_model(tmp_path, "plain", "Plain"), actor="t", stage=Stage.PRODUCTION)
    guarded = _model(tmp_path, "guarded", "Words", guards={"output": {"redact": ["email"]}})
    built.registry.push(guarded, actor="t", stage=Stage.PRODUCTION)
    await built.manager.refresh(load=True)
    await built.manager.wait_loaded(60)
    yield built
    await close_services(built)


def _request(model: str, text: str) -> InferenceRequest:
    return InferenceRequest(model=model, inputs=[{"text": text}], protocol="test")


@pytest.mark.asyncio
async def test_chunks_come_in_order_and_the_end_is_recorded_once(services: Services) -> None:
    recorder = Recorder()
    services.plane.observers.append(recorder)
    info, chunks = await services.plane.stream(_request("words", "one two three"))
    assert info.ref == "words@1.0.0"
    assert recorder.events == []  # nothing ended yet
    texts = [chunk.text async for chunk in chunks]
    assert texts == ["one ", "two ", "three ", ""]
    (event,) = recorder.events
    assert event.streamed
    assert event.error is None
    assert event.results == [{"text": "one two three ", "finish_reason": "stop"}]
    assert event.usage is not None
    assert event.usage.output_tokens == 3


@pytest.mark.asyncio
async def test_generate_whole_hands_every_chunk_over_and_returns_the_answer(
    services: Services,
) -> None:
    seen: list[StreamChunk] = []

    async def on_chunk(chunk: StreamChunk) -> None:
        seen.append(chunk)

    response = await generate_whole(services.plane, _request("words", "a b"), on_chunk)
    assert [chunk.text for chunk in seen] == ["a ", "b ", ""]
    assert response.results == [{"text": "a b ", "finish_reason": "stop"}]
    assert response.model == "words"
    assert response.version == "1.0.0"


@pytest.mark.asyncio
async def test_caller_mistakes_are_raised_before_the_first_chunk(services: Services) -> None:
    with pytest.raises(InvalidInput) as invalid:
        await services.plane.stream(_request("words", "x" * 300))
    assert "200" in invalid.value.message  # the schema's maxLength
    with pytest.raises(InvalidInput) as refused:
        await services.plane.stream(_request("plain", "hello"))
    assert refused.value.message == "plain@1.0.0 does not stream"
    assert refused.value.param == "stream"


@pytest.mark.asyncio
async def test_output_guards_run_over_the_chunks(services: Services) -> None:
    _, chunks = await services.plane.stream(_request("guarded", "mail ann@example.com now"))
    text = "".join([chunk.text async for chunk in chunks])
    assert "ann@example.com" not in text
    assert text.startswith("mail ")
    assert "now" in text


@pytest.mark.asyncio
async def test_a_failure_in_the_middle_ends_the_stream_and_is_counted(
    services: Services,
) -> None:
    recorder = Recorder()
    services.plane.observers.append(recorder)
    _, chunks = await services.plane.stream(_request("words", "one FAIL three"))
    got: list[str] = []

    async def consume() -> None:
        async for chunk in chunks:
            got.append(chunk.text)

    with pytest.raises(RuntimeError, match="broke mid-stream"):
        await consume()
    assert got == ["one "]  # what was sent stays sent
    (event,) = recorder.events
    assert isinstance(event.error, RuntimeError)
    assert event.streamed is False or event.results is None


@pytest.mark.asyncio
async def test_a_consumer_that_leaves_early_stops_the_generation(services: Services) -> None:
    recorder = Recorder()
    services.plane.observers.append(recorder)
    _, chunks = await services.plane.stream(_request("words", " ".join(["w"] * 50)))
    first = await anext(chunks)
    assert first.text == "w "
    await chunks.aclose()  # type: ignore[attr-defined]  # DataPlane.stream types it AsyncIterator; it is a generator
    (event,) = recorder.events
    assert event.error is not None  # a stream the caller left is not an answer
    # the pool is free again: another stream runs to its end
    _, again = await services.plane.stream(_request("words", "done"))
    assert [chunk.text async for chunk in again] == ["done ", ""]
