"""The exact cache: which requests are deterministic enough to cache, what the key covers (a
new version, a changed manifest, another tenant or other parameters never meet an old entry),
and the lookup/store cycle over every store backend, including bypass, oversize answers,
TTLs and a failing store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from modelhost.cache import (
    CachedAnswer,
    CacheState,
    CacheStore,
    ExactCache,
    MemoryStore,
    RedisStore,
    SqliteStore,
    cache_key,
    deterministic,
)
from modelhost.config import CacheSettings
from modelhost.errors import ServiceError
from modelhost.inference import Usage
from modelhost.manifest import parse_manifest
from modelhost.registry import Stage, VersionInfo

REDIS_URL = "redis://127.0.0.1:6379/15"
DIGEST = "ab" * 32
USAGE = Usage(input_tokens=3, output_tokens=5)


class Clock:
    """A clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def version(
    task: str = "classification",
    *,
    number: str = "1.0.0",
    runtime: str = "python",
    digest: str | None = DIGEST,
    **manifest: Any,
) -> VersionInfo:
    """A registered-looking version; ``digest`` None leaves the manifest file out of its
    files, so the manifest's digest is computed from its content."""
    fields: dict[str, Any] = {"name": "m", "version": number, "runtime": runtime, "task": task}
    if runtime == "python":
        fields["entrypoint"] = "m:E"
    parsed = parse_manifest({**fields, **manifest})
    return VersionInfo(
        model="m",
        version=number,
        runtime=runtime,
        stage=Stage.PRODUCTION,
        manifest=parsed,
        files={"modelhost.yaml": digest} if digest else {},
        size_bytes=10,
        created_at=datetime.now(UTC),
        created_by="tests",
    )


def llm(**manifest: Any) -> VersionInfo:
    return version("generation", runtime="llamacpp", artifacts={"model": "m.gguf"}, **manifest)


# -- what is deterministic --------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "regression", "embedding"])
def test_classifiers_regressors_and_embedders_are_deterministic(task: str) -> None:
    assert deterministic(version(task), {})


@pytest.mark.parametrize(
    ("defaults", "request_parameters", "expected"),
    [
        ({"temperature": 0.7}, {}, False),
        ({"temperature": 0.7}, {"temperature": 0}, True),
        ({"temperature": 0.7}, {"temperature": 0.0}, True),
        ({"temperature": 0}, {}, True),
        ({"temperature": 0}, {"temperature": 0.7}, False),
        ({"temperature": 0}, {"temperature": None}, False),  # the runtime's default samples
        ({}, {}, False),  # llama.cpp's default temperature (0.8) samples
        ({}, {"temperature": 1e-9}, False),
        ({}, {"temperature": "0"}, False),
        ({}, {"temperature": False}, False),
        ({"temperature": 0.7}, {"temperature": 0, "seed": 7}, True),
    ],
)
def test_generation_is_deterministic_only_at_temperature_zero(
    defaults: dict[str, Any], request_parameters: dict[str, Any], expected: bool
) -> None:
    assert deterministic(llm(parameters=defaults), request_parameters) is expected


def test_a_generation_model_that_declares_exact_caching_still_never_caches_sampling() -> None:
    info = llm(parameters={"temperature": 0.7}, cache={"exact": True})
    assert not deterministic(info, {})
    assert deterministic(info, {"temperature": 0})


def test_a_llamacpp_model_is_treated_as_generation_whatever_its_task() -> None:
    info = version("custom", runtime="llamacpp", artifacts={"model": "m.gguf"})
    assert not deterministic(info, {})
    assert deterministic(info, {"temperature": 0})


def test_a_custom_model_is_cached_only_when_its_manifest_declares_it() -> None:
    assert not deterministic(version("custom"), {})
    assert not deterministic(version("custom", cache={"exact": False}), {})
    assert deterministic(version("custom", cache={"exact": True}), {})


def test_exact_false_turns_caching_off_for_any_task() -> None:
    assert not deterministic(version("classification", cache={"exact": False}), {})
    assert not deterministic(llm(cache={"exact": False}), {"temperature": 0})


# -- what the key covers ----------------------------------------------------------------------

INPUTS = [{"a": 1, "b": [1.5, 2]}, {"a": 2, "b": []}]


def test_equal_requests_have_equal_keys_whatever_their_key_order() -> None:
    info = version()
    reordered = [{"b": [1.5, 2], "a": 1}, {"b": [], "a": 2}]
    params = {"x": 1, "y": {"p": 1, "q": 2}}
    same_params = {"y": {"q": 2, "p": 1}, "x": 1}
    assert cache_key(info, "acme", INPUTS, params) == cache_key(
        info, "acme", reordered, same_params
    )


def test_a_key_is_a_sha256_hex_digest() -> None:
    key = cache_key(version(), "acme", INPUTS, {})
    assert len(key) == 64
    assert int(key, 16) >= 0


def test_parameters_equal_to_the_manifest_defaults_give_the_same_key() -> None:
    info = version(parameters={"top_k": 3})
    assert cache_key(info, "acme", INPUTS, {}) == cache_key(info, "acme", INPUTS, {"top_k": 3})
    assert cache_key(info, "acme", INPUTS, {}) != cache_key(info, "acme", INPUTS, {"top_k": 4})


def test_numpy_inputs_key_like_the_same_lists() -> None:
    info = version()
    array = np.array([[1.0, 2.5], [3.0, 4.0]])
    assert cache_key(info, "t", [array], {}) == cache_key(info, "t", [array.tolist()], {})
    strided = np.asfortranarray(array)  # not C-contiguous: keyed through tolist
    assert cache_key(info, "t", [strided], {}) == cache_key(info, "t", [array.tolist()], {})


@pytest.mark.parametrize(
    ("other_info", "tenant", "inputs", "parameters"),
    [
        (version(number="1.0.1"), "acme", INPUTS, {}),
        (version(digest="cd" * 32), "acme", INPUTS, {}),
        (version(), "globex", INPUTS, {}),
        (version(), "acme", INPUTS, {"top_k": 2}),
        (version(), "acme", list(reversed(INPUTS)), {}),
        (version(), "acme", INPUTS[:1], {}),
        (version(), "acme", [{"a": 1.0, "b": [1.5, 2]}, INPUTS[1]], {}),
    ],
    ids=["version", "manifest", "tenant", "parameters", "input-order", "inputs", "number-type"],
)
def test_keys_differ_when_anything_that_shapes_the_answer_differs(
    other_info: VersionInfo, tenant: str, inputs: list[Any], parameters: dict[str, Any]
) -> None:
    assert cache_key(version(), "acme", INPUTS, {}) != cache_key(
        other_info, tenant, inputs, parameters
    )


def test_a_changed_manifest_without_a_stored_file_changes_the_key() -> None:
    before = version(digest=None, parameters={"top_k": 3})
    after = version(digest=None, parameters={"top_k": 3}, card={"description": "retrained"})
    same = version(digest=None, parameters={"top_k": 3})
    assert cache_key(before, "t", INPUTS, {}) != cache_key(after, "t", INPUTS, {})
    assert cache_key(before, "t", INPUTS, {}) == cache_key(same, "t", INPUTS, {})


def test_inputs_without_a_canonical_form_cannot_be_keyed() -> None:
    with pytest.raises(TypeError):
        cache_key(version(), "t", [object()], {})
    with pytest.raises(TypeError):
        cache_key(version(), "t", [{1: "int keys would collide with '1'"}], {})


# -- cached answers ---------------------------------------------------------------------------


def test_a_cached_answer_round_trips_through_bytes() -> None:
    answer = CachedAnswer(
        results=[{"label": "a", "vector": np.array([0.5, 0.25], dtype=np.float32)}],
        usage=Usage(input_tokens=2, output_tokens=1, cost=0.5, currency="USD").as_dict(),
        version="1.0.0",
        stored_at=123.5,
    )
    decoded = CachedAnswer.decode(answer.encode())
    assert decoded.results == [{"label": "a", "vector": [0.5, 0.25]}]
    assert decoded.version == "1.0.0"
    assert decoded.stored_at == 123.5
    usage = decoded.to_usage()
    assert (usage.input_tokens, usage.output_tokens, usage.cost, usage.currency) == (
        2,
        1,
        0.5,
        "USD",
    )


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"results": []}'])
def test_bytes_that_are_not_an_answer_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        CachedAnswer.decode(data)


# -- the lookup/store cycle over every store --------------------------------------------------


@pytest_asyncio.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CacheStore]:
    backend: CacheStore
    if request.param == "memory":
        backend = MemoryStore(max_entries=100, max_bytes=1 << 20)
    elif request.param == "sqlite":
        backend = SqliteStore(tmp_path / "cache.db", max_entries=100)
    else:
        backend = RedisStore(REDIS_URL, prefix=f"mhtest:exact:{uuid.uuid4().hex}")
    try:
        yield backend
    finally:
        await backend.clear()
        await backend.close()


@pytest.mark.asyncio
async def test_a_miss_is_stored_and_then_hit(store: CacheStore) -> None:
    cache = ExactCache(store, CacheSettings())
    info = version()
    first = await cache.lookup(info, "acme", INPUTS, {})
    assert first.state is CacheState.MISS
    assert first.key is not None
    assert first.answer is None
    assert await cache.store(first, [{"label": "x"}, {"label": "y"}], USAGE, info)
    second = await cache.lookup(info, "acme", [{"b": [1.5, 2], "a": 1}, INPUTS[1]], {})
    assert second.state is CacheState.HIT
    assert second.answer is not None
    assert second.answer.results == [{"label": "x"}, {"label": "y"}]
    assert second.answer.usage == USAGE.as_dict()
    assert second.answer.version == "1.0.0"
    assert not await cache.store(second, [{"label": "other"}], USAGE, info)  # hits are kept
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.stored) == (1, 1, 1)


@pytest.mark.asyncio
async def test_sampled_llm_calls_are_never_cached(store: CacheStore) -> None:
    cache = ExactCache(store, CacheSettings())
    info = llm(parameters={"temperature": 0.7})
    for _ in range(3):
        lookup = await cache.lookup(info, "acme", [{"prompt": "hi"}], {})
        assert lookup.state is CacheState.BYPASS
        assert lookup.key is None
        assert not await cache.store(lookup, [{"text": "sampled"}], USAGE, info)
    assert cache.stats().stored == 0
    greedy = await cache.lookup(info, "acme", [{"prompt": "hi"}], {"temperature": 0})
    assert greedy.state is CacheState.MISS  # nothing a sampled call did is there to be hit


@pytest.mark.asyncio
async def test_greedy_llm_calls_are_cached(store: CacheStore) -> None:
    cache = ExactCache(store, CacheSettings())
    info = llm(parameters={"temperature": 0})
    lookup = await cache.lookup(info, "acme", [{"prompt": "hi"}], {})
    assert await cache.store(lookup, [{"text": "hello", "finish_reason": "stop"}], USAGE)
    again = await cache.lookup(info, "acme", [{"prompt": "hi"}], {"temperature": 0})
    assert again.state is CacheState.HIT
    assert again.answer is not None
    assert again.answer.results == [{"text": "hello", "finish_reason": "stop"}]
    assert again.answer.version == info.version  # the lookup remembers the version


@pytest.mark.asyncio
async def test_a_new_version_or_manifest_never_serves_old_entries(store: CacheStore) -> None:
    cache = ExactCache(store, CacheSettings())
    old = version(number="1.0.0")
    lookup = await cache.lookup(old, "acme", INPUTS, {})
    await cache.store(lookup, ["old answer"], USAGE, old)
    assert (await cache.lookup(old, "acme", INPUTS, {})).state is CacheState.HIT
    assert (await cache.lookup(version(number="1.1.0"), "acme", INPUTS, {})).state is (
        CacheState.MISS
    )
    changed = version(number="1.0.0", digest="ef" * 32)
    assert (await cache.lookup(changed, "acme", INPUTS, {})).state is CacheState.MISS


@pytest.mark.asyncio
async def test_a_tenant_never_gets_another_tenants_answer(store: CacheStore) -> None:
    cache = ExactCache(store, CacheSettings())
    info = version()
    for tenant in ("tenant-b", "tenant-a"):
        lookup = await cache.lookup(info, tenant, INPUTS, {})
        assert lookup.state is CacheState.MISS
        await cache.store(lookup, [f"answer for {tenant}"], USAGE, info)
    for tenant in ("tenant-a", "tenant-b"):
        hit = await cache.lookup(info, tenant, INPUTS, {})
        assert hit.answer is not None
        assert hit.answer.results == [f"answer for {tenant}"]


@pytest.mark.asyncio
async def test_a_bypass_skips_the_read_but_refreshes_the_entry(store: CacheStore) -> None:
    cache = ExactCache(store, CacheSettings())
    info = version()
    await cache.store(await cache.lookup(info, "t", INPUTS, {}), ["stale"], USAGE, info)
    bypass = await cache.lookup(info, "t", INPUTS, {}, bypass=True)
    assert bypass.state is CacheState.BYPASS
    assert bypass.answer is None
    assert bypass.key is not None
    assert await cache.store(bypass, ["fresh"], USAGE, info)
    hit = await cache.lookup(info, "t", INPUTS, {})
    assert hit.answer is not None
    assert hit.answer.results == ["fresh"]


@pytest.mark.asyncio
async def test_an_answer_over_max_entry_bytes_is_not_stored(store: CacheStore) -> None:
    cache = ExactCache(store, CacheSettings(max_entry_bytes=1000))
    info = version()
    lookup = await cache.lookup(info, "t", INPUTS, {})
    assert not await cache.store(lookup, ["x" * 2000], USAGE, info)
    assert (await cache.lookup(info, "t", INPUTS, {})).state is CacheState.MISS
    assert cache.stats().oversize == 1
    assert await cache.store(lookup, ["x" * 100], USAGE, info)


# -- settings, TTLs and failures --------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_disabled_cache_bypasses_everything() -> None:
    cache = ExactCache(MemoryStore(10, 1 << 20), CacheSettings(enabled=False))
    lookup = await cache.lookup(version(), "t", INPUTS, {})
    assert (lookup.state, lookup.key) == (CacheState.BYPASS, None)


@pytest.mark.asyncio
async def test_unkeyable_inputs_bypass_the_cache() -> None:
    cache = ExactCache(MemoryStore(10, 1 << 20), CacheSettings())
    lookup = await cache.lookup(version(), "t", [object()], {})
    assert (lookup.state, lookup.key) == (CacheState.BYPASS, None)


@pytest.mark.asyncio
async def test_the_manifest_ttl_wins_over_the_settings_ttl() -> None:
    clock = Clock()
    cache = ExactCache(MemoryStore(10, 1 << 20, clock=clock), CacheSettings(ttl_s=3600))
    short = version(cache={"ttl_s": 5})
    default = version(number="2.0.0")
    for info in (short, default):
        await cache.store(await cache.lookup(info, "t", INPUTS, {}), ["a"], USAGE, info)
    clock.now += 10
    assert (await cache.lookup(short, "t", INPUTS, {})).state is CacheState.MISS
    assert (await cache.lookup(default, "t", INPUTS, {})).state is CacheState.HIT
    clock.now += 3600
    assert (await cache.lookup(default, "t", INPUTS, {})).state is CacheState.MISS


class BrokenStore(CacheStore):
    """A store whose backend is down."""

    async def get(self, key: str) -> bytes | None:
        raise ServiceError("down")

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        raise ServiceError("down")

    async def delete(self, key: str) -> None:
        raise ServiceError("down")

    async def clear(self) -> None:
        raise ServiceError("down")


@pytest.mark.asyncio
async def test_a_failing_store_is_a_miss_not_an_error() -> None:
    cache = ExactCache(BrokenStore(), CacheSettings())
    info = version()
    lookup = await cache.lookup(info, "t", INPUTS, {})
    assert lookup.state is CacheState.MISS
    assert not await cache.store(lookup, ["a"], USAGE, info)
    assert cache.stats().errors == 2


@pytest.mark.asyncio
async def test_a_corrupt_entry_is_a_miss() -> None:
    store = MemoryStore(10, 1 << 20)
    cache = ExactCache(store, CacheSettings())
    info = version()
    lookup = await cache.lookup(info, "t", INPUTS, {})
    assert lookup.key is not None
    await store.set(lookup.key, b"garbage", 60)
    assert (await cache.lookup(info, "t", INPUTS, {})).state is CacheState.MISS
    assert cache.stats().errors == 1


@pytest.mark.asyncio
async def test_an_answer_json_cannot_encode_is_not_stored() -> None:
    cache = ExactCache(MemoryStore(10, 1 << 20), CacheSettings())
    info = version()
    lookup = await cache.lookup(info, "t", INPUTS, {})
    assert not await cache.store(lookup, [object()], USAGE, info)
    assert cache.stats().errors == 1
    assert (await cache.lookup(info, "t", INPUTS, {})).state is CacheState.MISS
