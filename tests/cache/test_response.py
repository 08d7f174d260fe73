"""The response cache in the data plane: exact hits, semantic hits for an opted-in language
model embedded with the real minilm, the guards, sampled requests never cached."""

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
from modelhost.demo import build_minilm
from modelhost.inference import InferenceRequest
from modelhost.registry import Stage
from modelhost.security.keys import Principal

WRITER = textwrap.dedent(
    '''
    from pathlib import Path


    class Writer:
        """A stand-in language model: answers a prompt with its upper case, and logs calls."""

        def __init__(self, path):
            self.log = Path(path).parent.parent / "writer-calls.log"

        def predict(self, inputs, parameters):
            with self.log.open("a") as handle:
                handle.write(f"{len(inputs)}\\n")
            return [{"text": item["prompt"].upper()} for item in inputs]
    '''
)


def _writer(root: Path) -> Path:
    directory = root / "writer-1.0.0"
    directory.mkdir(parents=True)
    (directory / "writer.py").write_text(WRITER)
    manifest: dict[str, Any] = {
        "name": "writer",
        "version": "1.0.0",
        "runtime": "python",
        "task": "generation",
        "entrypoint": "writer:Writer",
        "parameters": {"temperature": 0},
        "cache": {"semantic": {"enabled": True}},
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return directory


@pytest_asyncio.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    built = build_services(Settings(home=tmp_path / "home", demo={"enabled": False}))
    (minilm,) = build_minilm(tmp_path / "minilm")
    built.registry.push(minilm, actor="test", stage=Stage.PRODUCTION)
    built.registry.push(_writer(tmp_path), actor="test", stage=Stage.PRODUCTION)
    await built.manager.refresh()
    await built.manager.wait_loaded()
    yield built
    await close_services(built)


def _calls(services: Services) -> int:
    logs = list(services.settings.home.rglob("writer-calls.log"))
    return len(logs[0].read_text().split()) if logs else 0


async def _ask(
    services: Services, prompt: str, tenant: str = "acme", **parameters: Any
) -> tuple[str | None, str]:
    who = Principal(tenant=tenant, subject="app", scopes=frozenset({"predict"}))
    response = await services.plane.infer(
        InferenceRequest(
            model="writer", inputs=[{"prompt": prompt}], parameters=parameters, principal=who
        )
    )
    return response.cache, response.results[0]["text"]


@pytest.mark.asyncio
async def test_a_paraphrase_gets_the_answer_and_the_guards_hold(services: Services) -> None:
    assert await _ask(services, "How do I reset my password?") == (
        "miss",
        "HOW DO I RESET MY PASSWORD?",
    )
    assert await _ask(services, "How do I reset my password?") == (
        "hit",
        "HOW DO I RESET MY PASSWORD?",
    )
    state, text = await _ask(services, "How can I reset my password?")
    assert (state, text) == ("hit", "HOW DO I RESET MY PASSWORD?")  # by meaning
    assert _calls(services) == 1
    # negation and numbers never share an answer, however close the embeddings
    assert (await _ask(services, "How do I not reset my password?"))[0] == "miss"
    assert (await _ask(services, "Refund order 1234")) == ("miss", "REFUND ORDER 1234")
    assert (await _ask(services, "Refund order 1235")) == ("miss", "REFUND ORDER 1235")
    # another tenant has its own entries
    assert (await _ask(services, "How can I reset my password?", tenant="other"))[0] == "miss"
    assert _calls(services) == 5


@pytest.mark.asyncio
async def test_sampled_requests_are_never_cached(services: Services) -> None:
    for _ in range(2):
        assert (await _ask(services, "Write a poem", temperature=0.8))[0] == "bypass"
    assert _calls(services) == 2
