"""The semantic cache: scoped nearest-neighbour look-ups with a threshold and guards."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from modelhost.cache.semantic import SemanticCache, SemanticIndex, prompt_text
from modelhost.demo import build_minilm
from modelhost.manifest import load_manifest
from modelhost.runtimes import Runtime, RuntimeContext, create_runtime

DIM = 32


def word_embed(texts: list[str]) -> npt.NDArray[np.float32]:
    """A deterministic bag-of-words embedding: texts sharing most words are close."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().replace("?", " ").replace("'", " ").split():
            digest = hashlib.sha256(word.encode()).digest()
            out[row, digest[0] % DIM] += 1.0 if digest[1] % 2 else -1.0
    return out


async def async_word_embed(texts: list[str]) -> npt.NDArray[np.float32]:
    await asyncio.sleep(0)
    return word_embed(texts)


def unit(*values: float) -> npt.NDArray[np.float32]:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


@pytest.mark.asyncio
async def test_the_same_prompt_hits_with_its_answer() -> None:
    cache = SemanticCache(word_embed, threshold=0.95)
    await cache.add("t1/m@1/p", "How do I reset my password?", b"answer")
    hit = await cache.lookup("t1/m@1/p", "How do I reset my password?")
    assert hit is not None
    assert hit.answer == b"answer"
    assert hit.prompt == "How do I reset my password?"
    assert hit.similarity == pytest.approx(1.0, abs=1e-5)


@pytest.mark.asyncio
async def test_an_async_embedder_works_too() -> None:
    cache = SemanticCache(async_word_embed, threshold=0.95)
    await cache.add("s", "How do I reset my password?", b"answer")
    assert await cache.lookup("s", "How do I reset my password?") is not None


@pytest.mark.asyncio
async def test_an_empty_or_unknown_scope_misses() -> None:
    cache = SemanticCache(word_embed)
    assert await cache.lookup("nobody", "anything") is None


@pytest.mark.asyncio
async def test_another_tenant_version_or_parameters_never_hits() -> None:
    cache = SemanticCache(word_embed, threshold=0.5)
    await cache.add("tenant-a/chat@1.0.0/p1", "How do I reset my password?", b"a")
    for scope in ("tenant-b/chat@1.0.0/p1", "tenant-a/chat@1.1.0/p1", "tenant-a/chat@1.0.0/p2"):
        assert await cache.lookup(scope, "How do I reset my password?") is None
    assert await cache.lookup("tenant-a/chat@1.0.0/p1", "How do I reset my password?")


@pytest.mark.asyncio
async def test_negation_never_shares_an_answer() -> None:
    cache = SemanticCache(word_embed, threshold=0.5)
    await cache.add("s", "Why can I log in to my account?", b"positive")
    assert await cache.lookup("s", "Why can't I log in to my account?") is None
    assert await cache.lookup("s", "Why can I not log in to my account?") is None


@pytest.mark.asyncio
async def test_numbers_never_share_an_answer() -> None:
    cache = SemanticCache(word_embed, threshold=0.5)
    await cache.add("s", "Can I get a refund after 30 days?", b"30")
    assert await cache.lookup("s", "Can I get a refund after 60 days?") is None
    assert await cache.lookup("s", "Can I get a refund after thirty days?") is not None


@pytest.mark.asyncio
async def test_dates_and_entities_never_share_an_answer() -> None:
    cache = SemanticCache(word_embed, threshold=0.5)
    await cache.add("s", "Is the store in Paris open on Sunday?", b"sunday")
    assert await cache.lookup("s", "Is the store in Paris open on Monday?") is None
    assert await cache.lookup("s", "Is the store in Lyon open on Sunday?") is None


@pytest.mark.asyncio
async def test_a_guarded_neighbour_does_not_hide_a_compatible_one() -> None:
    cache = SemanticCache(word_embed, threshold=0.5)
    await cache.add("s", "Refund after 30 days, is it possible?", b"30")
    await cache.add("s", "Refund after 60 days, is it possible?", b"60")
    hit = await cache.lookup("s", "Refund after 60 days, is it possible?")
    assert hit is not None
    assert hit.answer == b"60"


def test_the_threshold_is_respected() -> None:
    index = SemanticIndex(DIM, max_entries=10)
    index.add(unit(1.0, 0.0), "stored prompt", b"x")
    close = unit(1.0, 0.2)  # cosine 0.981
    assert index.search(close, "stored prompt", threshold=0.98) is not None
    assert index.search(close, "stored prompt", threshold=0.99) is None
    assert index.search(unit(0.0, 1.0), "stored prompt", threshold=0.1) is None


def test_the_least_recently_used_entry_is_evicted() -> None:
    index = SemanticIndex(DIM, max_entries=3)
    prompts = ["alpha", "beta", "gamma", "delta"]
    vectors = [unit(*([0.0] * i + [1.0])) for i in range(4)]
    for prompt, vector in zip(prompts[:3], vectors, strict=False):
        index.add(vector, prompt, prompt.encode())
    assert index.search(vectors[0], "alpha", threshold=0.99) is not None  # alpha is fresh now
    index.add(vectors[3], "delta", b"delta")  # beta, the least recently used, goes
    assert len(index) == 3
    assert index.search(vectors[1], "beta", threshold=0.99) is None
    for i in (0, 2, 3):
        hit = index.search(vectors[i], prompts[i], threshold=0.99)
        assert hit is not None
        assert hit.answer == prompts[i].encode()


def test_the_same_prompt_twice_is_one_entry_with_the_newer_answer() -> None:
    index = SemanticIndex(DIM, max_entries=10)
    index.add(unit(1.0), "same prompt", b"old")
    index.add(unit(1.0), "same prompt", b"new")
    assert len(index) == 1
    hit = index.search(unit(1.0), "same prompt", threshold=0.99)
    assert hit is not None
    assert hit.answer == b"new"


def test_the_index_grows_and_reuses_evicted_slots() -> None:
    index = SemanticIndex(DIM, max_entries=500)
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2000, DIM)).astype(np.float32)
    for i, vector in enumerate(vectors):
        index.add(vector, f"prompt {i}", str(i).encode())
    assert len(index) == 500
    hit = index.search(vectors[-1], "prompt 1999", threshold=0.99)
    assert hit is not None
    assert hit.answer == b"1999"
    assert index.search(vectors[0], "prompt 0", threshold=0.99) is None


@pytest.mark.asyncio
async def test_prompts_longer_than_the_model_reads_are_not_cached() -> None:
    cache = SemanticCache(word_embed, max_prompt_chars=50)
    long_prompt = "please summarise this " + "very " * 20 + "long text"
    await cache.add("s", long_prompt, b"x")
    assert len(cache) == 0
    await cache.add("s", "short prompt", b"y")
    assert await cache.lookup("s", long_prompt) is None


@pytest.mark.asyncio
async def test_scopes_past_max_scopes_are_dropped() -> None:
    cache = SemanticCache(word_embed, max_scopes=2)
    for scope in ("a", "b", "c"):
        await cache.add(scope, "hello there", scope.encode())
    assert await cache.lookup("a", "hello there") is None
    assert await cache.lookup("c", "hello there") is not None
    assert len(cache) == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        SemanticCache(word_embed, threshold=0)
    with pytest.raises(ValueError, match="max_entries"):
        SemanticIndex(DIM, max_entries=0)


def test_prompt_text_of_llm_inputs() -> None:
    assert prompt_text("hi") == "hi"
    assert prompt_text({"prompt": "hi"}) == "hi"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
    ]
    assert prompt_text({"messages": messages}) == "system: Be brief.\nuser: What is 2+2?"
    assert prompt_text({"messages": []}) is None
    assert prompt_text({"messages": [{"role": "user"}]}) is None
    assert prompt_text({"text": "hi"}) is None
    assert prompt_text(42) is None


def test_prompt_text_keeps_the_history_apart() -> None:
    first = [{"role": "user", "content": "Tell me about Rome."}]
    second = [{"role": "user", "content": "Tell me about Milan."}]
    follow_up = {"role": "user", "content": "How old is it?"}
    assert prompt_text({"messages": [*first, follow_up]}) != prompt_text(
        {"messages": [*second, follow_up]}
    )


# -- the real minilm model ------------------------------------------------------------------


@pytest.fixture(scope="session")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    directory: Path = build_minilm(tmp_path_factory.mktemp("semantic-minilm"))[0]
    runtime = create_runtime(
        RuntimeContext(manifest=load_manifest(directory), path=directory, threads=2)
    )
    runtime.load()
    return runtime


@pytest.mark.embeddings
@pytest.mark.asyncio
async def test_real_minilm_paraphrases_hit_and_near_misses_do_not(minilm: Runtime) -> None:
    def embed(texts: list[str]) -> npt.NDArray[np.float32]:
        results = minilm.predict(list(texts), {}).results
        return np.asarray([r["embedding"] for r in results], dtype=np.float32)

    cache = SemanticCache(embed, threshold=0.95)
    scope = "tenant/chat@1.0.0/params"
    await cache.add(scope, "How do I reset my password?", b"reset")
    await cache.add(scope, "Can I get a refund after 30 days?", b"refund-30")
    await cache.add(scope, "My order has arrived.", b"arrived")
    await cache.add(scope, "Is the store open on Sunday?", b"sunday")

    hit = await cache.lookup(scope, "How can I reset my password?")
    assert hit is not None
    assert hit.answer == b"reset"
    assert hit.similarity >= 0.95
    assert await cache.lookup(scope, "Can I get a refund after 60 days?") is None
    assert await cache.lookup(scope, "My order has not arrived.") is None
    assert await cache.lookup(scope, "Is the store open on Monday?") is None
    assert await cache.lookup(scope, "What is the capital of France?") is None
    assert await cache.lookup("another/chat@1.0.0/params", "How can I reset my password?") is None
