"""The cache store contract, run against every backend (memory, SQLite, Redis), and what each
backend adds: LRU eviction by count and bytes, expired-first eviction, sharing a file, keeping
to its own Redis prefix, failing cleanly when the backend is gone, and choosing a store from
the settings."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from modelhost.cache import (
    CacheStore,
    MemoryStore,
    RedisStore,
    SqliteStore,
    build_store,
)
from modelhost.config import CacheSettings, Settings
from modelhost.errors import ConfigError, MissingDependencyError, ServiceError
from tests.conftest import free_port

REDIS_URL = "redis://127.0.0.1:6379/15"
BIG = 64 * 1024 * 1024
BACKENDS = ["memory", "sqlite", "redis"]


class Clock:
    """A clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_store(backend: str, tmp_path: Path) -> CacheStore:
    if backend == "memory":
        return MemoryStore(max_entries=1000, max_bytes=BIG)
    if backend == "sqlite":
        return SqliteStore(tmp_path / "cache.db", max_entries=1000)
    return RedisStore(REDIS_URL, prefix=f"mhtest:cache:{uuid.uuid4().hex}")


@pytest_asyncio.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CacheStore]:
    backend = make_store(str(request.param), tmp_path)
    try:
        yield backend
    finally:
        await backend.clear()
        await backend.close()


# -- the contract ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_missing_key_is_none(store: CacheStore) -> None:
    assert await store.get("absent") is None


@pytest.mark.asyncio
async def test_a_value_set_is_read_back_and_replaced(store: CacheStore) -> None:
    await store.set("k", b"one", 60)
    assert await store.get("k") == b"one"
    await store.set("k", b"two", 60)
    assert await store.get("k") == b"two"


@pytest.mark.asyncio
async def test_values_are_opaque_bytes(store: CacheStore) -> None:
    every_byte = bytes(range(256)) * 4
    await store.set("binary", every_byte, 60)
    await store.set("empty", b"", 60)
    assert await store.get("binary") == every_byte
    assert await store.get("empty") == b""


@pytest.mark.asyncio
async def test_delete_forgets_one_key_and_ignores_absent_ones(store: CacheStore) -> None:
    await store.set("a", b"1", 60)
    await store.set("b", b"2", 60)
    await store.delete("a")
    await store.delete("never-set")
    assert await store.get("a") is None
    assert await store.get("b") == b"2"


@pytest.mark.asyncio
async def test_clear_forgets_everything(store: CacheStore) -> None:
    for n in range(20):
        await store.set(f"k{n}", b"v", 60)
    await store.clear()
    assert [await store.get(f"k{n}") for n in range(20)] == [None] * 20


@pytest.mark.asyncio
async def test_an_entry_expires_after_its_ttl(store: CacheStore) -> None:
    await store.set("short", b"v", 0.2)
    await store.set("long", b"v", 60)
    assert await store.get("short") == b"v"
    await asyncio.sleep(0.4)
    assert await store.get("short") is None
    assert await store.get("long") == b"v"


@pytest.mark.asyncio
async def test_a_large_value_round_trips(store: CacheStore) -> None:
    value = uuid.uuid4().bytes * (4 * 1024 * 1024 // 16)  # 4 MiB
    await store.set("large", value, 60)
    assert await store.get("large") == value


@pytest.mark.asyncio
async def test_concurrent_sets_all_land(store: CacheStore) -> None:
    await asyncio.gather(*(store.set(f"c{n}", str(n).encode(), 60) for n in range(100)))
    values = await asyncio.gather(*(store.get(f"c{n}") for n in range(100)))
    assert values == [str(n).encode() for n in range(100)]


@pytest.mark.asyncio
async def test_concurrent_sets_of_one_key_leave_one_of_the_values(store: CacheStore) -> None:
    await asyncio.gather(*(store.set("same", str(n).encode(), 60) for n in range(50)))
    assert await store.get("same") in {str(n).encode() for n in range(50)}


# -- bounded backends: least recently used go first ------------------------------------------


def bounded(backend: str, tmp_path: Path, max_entries: int) -> CacheStore:
    if backend == "memory":
        return MemoryStore(max_entries=max_entries, max_bytes=BIG)
    return SqliteStore(tmp_path / "cache.db", max_entries=max_entries)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
@pytest.mark.asyncio
async def test_over_max_entries_the_least_recently_used_goes(backend: str, tmp_path: Path) -> None:
    store = bounded(backend, tmp_path, max_entries=3)
    try:
        for key in ("a", "b", "c"):
            await store.set(key, key.encode(), 60)
            await asyncio.sleep(0.01)  # distinct use times for SQLite
        assert await store.get("a") == b"a"  # a is now used more recently than b
        await asyncio.sleep(0.01)
        await store.set("d", b"d", 60)
        assert await store.get("b") is None
        assert [await store.get(k) for k in ("a", "c", "d")] == [b"a", b"c", b"d"]
        assert store.stats().entries == 3
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_memory_store_evicts_by_bytes_and_refuses_a_value_over_the_limit() -> None:
    store = MemoryStore(max_entries=100, max_bytes=1000)
    await store.set("a", b"x" * 400, 60)
    await store.set("b", b"x" * 400, 60)
    await store.set("c", b"x" * 400, 60)
    assert await store.get("a") is None
    assert await store.get("b") is not None
    assert await store.get("c") is not None
    assert store.stats().bytes == 800
    await store.set("huge", b"x" * 1001, 60)
    assert await store.get("huge") is None
    assert store.stats().bytes == 800


@pytest.mark.asyncio
async def test_memory_store_replacing_a_value_counts_its_bytes_once() -> None:
    store = MemoryStore(max_entries=100, max_bytes=1000)
    for _ in range(10):
        await store.set("a", b"x" * 300, 60)
    assert store.stats().entries == 1
    assert store.stats().bytes == 300


@pytest.mark.asyncio
async def test_sqlite_store_evicts_expired_entries_before_live_ones(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore(tmp_path / "cache.db", max_entries=2, clock=clock)
    try:
        await store.set("old-but-live", b"1", 3600)
        clock.now += 1
        await store.set("recent-but-expiring", b"2", 5)
        clock.now += 10
        await store.set("new", b"3", 3600)
        assert await store.get("old-but-live") == b"1"
        assert await store.get("new") == b"3"
        assert store.stats().entries == 2
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_sqlite_store_is_shared_by_two_stores_on_one_file_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "cache.db"
    one = SqliteStore(path, max_entries=10)
    two = SqliteStore(path, max_entries=10)
    try:
        await one.set("k", b"from one", 60)
        assert await two.get("k") == b"from one"
        await two.delete("k")
        assert await one.get("k") is None
        await one.set("kept", b"v", 60)
    finally:
        await one.close()
        await two.close()
    reopened = SqliteStore(path, max_entries=10)
    try:
        assert await reopened.get("kept") == b"v"
        assert reopened.stats().entries == 1
    finally:
        await reopened.close()


# -- Redis ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_redis_stores_keep_to_their_prefix() -> None:
    mine = RedisStore(REDIS_URL, prefix=f"mhtest:cache:{uuid.uuid4().hex}")
    other = RedisStore(REDIS_URL, prefix=f"mhtest:cache:{uuid.uuid4().hex}")
    try:
        await mine.set("k", b"mine", 60)
        await other.set("k", b"other", 60)
        assert await mine.get("k") == b"mine"
        await mine.clear()
        assert await mine.get("k") is None
        assert await other.get("k") == b"other"
    finally:
        await other.clear()
        await mine.close()
        await other.close()


@pytest.mark.asyncio
async def test_a_redis_store_without_a_server_raises_service_error() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", prefix="mhtest:cache:gone")
    try:
        started = time.monotonic()
        with pytest.raises(ServiceError, match="unavailable"):
            await store.get("k")
        with pytest.raises(ServiceError):
            await store.set("k", b"v", 60)
        assert time.monotonic() - started < 30
    finally:
        await store.close()


# -- choosing a store -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_build_store_follows_the_settings(tmp_path: Path) -> None:
    memory = build_store(Settings(home=tmp_path))
    assert isinstance(memory, MemoryStore)
    sqlite = build_store(Settings(home=tmp_path, cache=CacheSettings(store="sqlite")))
    assert isinstance(sqlite, SqliteStore)
    assert sqlite.path == tmp_path / "cache.db"
    await sqlite.close()
    redis = build_store(
        Settings(home=tmp_path, cache=CacheSettings(store="redis"), redis_url=REDIS_URL)
    )
    assert isinstance(redis, RedisStore)
    await redis.close()


def test_a_redis_store_without_redis_url_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, cache=CacheSettings(store="redis"), redis_url=None)
    with pytest.raises(ConfigError, match="redis_url") as caught:
        build_store(settings)
    assert caught.value.param == "redis_url"


def test_a_redis_store_without_the_redis_package_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    settings = Settings(home=tmp_path, cache=CacheSettings(store="redis"), redis_url=REDIS_URL)
    with pytest.raises(MissingDependencyError) as caught:
        build_store(settings)
    assert caught.value.extra == "redis"
