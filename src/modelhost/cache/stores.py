"""Where cached answers live: a small key/value contract with expiry, and its backends.

* :class:`MemoryStore` (default) keeps entries in this process, least recently used first
  out when over ``max_entries`` or ``max_bytes``; every operation is O(1).
* :class:`SqliteStore` keeps them in a SQLite file (WAL), shared by the processes of one
  machine and kept across restarts; expired, then least recently used entries go first when
  over ``max_entries``. Calls run in a thread, never on the event loop.
* :class:`RedisStore` keeps them in Redis (``SET ... PX``), shared by every replica; Redis's
  own ``maxmemory`` policy bounds it.

Values are opaque bytes; a miss (absent or expired) returns ``None``. A backend that cannot
be reached raises :class:`~modelhost.errors.ServiceError`; the cache in front of the store
treats that as a miss, so an outage of the cache never fails a request.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from modelhost.config import Settings
from modelhost.errors import ConfigError, MissingDependencyError, ServiceError

if TYPE_CHECKING:
    from redis.asyncio import Redis

_T = TypeVar("_T")
#: Keys deleted per ``UNLINK`` when a Redis store is cleared.
_CLEAR_CHUNK = 500
#: The file of the SQLite store under ``MODELHOST_HOME``.
SQLITE_FILE = "cache.db"


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What a store holds now, where it can tell cheaply (None where it cannot)."""

    entries: int | None = None
    bytes: int | None = None


class CacheStore(ABC):
    """A key/value store of byte strings that expire; the backend of a response cache."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None when absent or expired."""

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds, replacing any value there."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Forget ``key``; nothing happens when it is absent."""

    @abstractmethod
    async def clear(self) -> None:
        """Forget every entry of this store (and only of this store)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections and files; the store is not used afterwards."""

    def stats(self) -> StoreStats:
        """Entry and byte counts for metrics; unknown by default."""
        return StoreStats()


class MemoryStore(CacheStore):
    """Entries in this process's memory: an LRU dict bounded by entry count and value bytes.

    Expired entries are dropped when read or when they reach the old end of the LRU order;
    a value larger than ``max_bytes`` is not kept at all.

    Args:
        max_entries: most entries kept.
        max_bytes: most bytes of values kept.
        clock: monotonic seconds (tests may move time by hand).
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    async def get(self, key: str) -> bytes | None:
        """The live value under ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Keep ``value``, evicting the least recently used entries to make room."""
        self._drop(key)
        if len(value) > self.max_bytes:
            return
        self._entries[key] = (self._clock() + ttl_s, value)
        self._bytes += len(value)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= len(evicted)

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        self._drop(key)

    async def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self._bytes = 0

    def stats(self) -> StoreStats:
        """Entries and value bytes held (expired ones included until they are dropped)."""
        return StoreStats(entries=len(self._entries), bytes=self._bytes)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[1])


_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_used_at ON entries (used_at);
CREATE INDEX IF NOT EXISTS entries_expires_at ON entries (expires_at);
CREATE TABLE IF NOT EXISTS counts (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
INSERT OR IGNORE INTO counts (id, n) SELECT 0, COUNT(*) FROM entries;
CREATE TRIGGER IF NOT EXISTS entries_added AFTER INSERT ON entries
BEGIN UPDATE counts SET n = n + 1 WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS entries_removed AFTER DELETE ON entries
BEGIN UPDATE counts SET n = n - 1 WHERE id = 0; END;
"""
_UPSERT = """
INSERT INTO entries (key, value, expires_at, used_at) VALUES (?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    value = excluded.value, expires_at = excluded.expires_at, used_at = excluded.used_at
"""
_EVICT_OLDEST = """
DELETE FROM entries WHERE key IN (SELECT key FROM entries ORDER BY used_at LIMIT ?)
"""


class SqliteStore(CacheStore):
    """Entries in a SQLite file (WAL), shared by the processes of one machine.

    The entry count is kept by triggers in a one-row table, so a write checks the bound
    without counting the table. Over ``max_entries``, a write first deletes expired entries,
    then the least recently used. Reads of a live entry mark it used. Every call runs in a
    thread (``asyncio.to_thread``) on one connection guarded by a lock.

    Args:
        path: the database file; its directory is created when missing.
        max_entries: most entries kept.
        clock: wall-clock seconds (shared by processes, so not monotonic).
    """

    def __init__(
        self, path: Path, max_entries: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
        except sqlite3.Error as exc:
            raise ServiceError(f"the cache database {path} cannot be opened: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        """The live value under ``key`` (now the most recently used), or None."""
        return await self._run(self._get, key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Keep ``value``; over ``max_entries``, evict expired then least recently used."""
        await self._run(self._set, key, value, ttl_s)

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        await self._run(self._execute, "DELETE FROM entries WHERE key = ?", (key,))

    async def clear(self) -> None:
        """Forget every entry."""
        await self._run(self._execute, "DELETE FROM entries", ())

    async def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def stats(self) -> StoreStats:
        """Entries held (expired ones included until they are evicted)."""
        with self._lock:
            row = self._db.execute("SELECT n FROM counts WHERE id = 0").fetchone()
        return StoreStats(entries=int(row[0]) if row else 0)

    async def _run(self, call: Callable[..., _T], *args: object) -> _T:
        try:
            return await asyncio.to_thread(call, *args)
        except sqlite3.Error as exc:
            raise ServiceError(f"the cache database {self.path} failed: {exc}") from exc

    def _get(self, key: str) -> bytes | None:
        now = self._clock()
        with self._lock:
            row = self._db.execute(
                "SELECT value, expires_at FROM entries WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            if row[1] <= now:
                self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
                return None
            self._db.execute("UPDATE entries SET used_at = ? WHERE key = ?", (now, key))
            return bytes(row[0])

    def _set(self, key: str, value: bytes, ttl_s: float) -> None:
        now = self._clock()
        with self._lock, self._transaction():
            self._db.execute(_UPSERT, (key, value, now + ttl_s, now))
            over = self._count() - self.max_entries
            if over <= 0:
                return
            self._db.execute("DELETE FROM entries WHERE expires_at <= ?", (now,))
            over = self._count() - self.max_entries
            if over > 0:
                self._db.execute(_EVICT_OLDEST, (over,))

    def _execute(self, sql: str, args: tuple[object, ...]) -> None:
        with self._lock:
            self._db.execute(sql, args)

    def _count(self) -> int:
        return int(self._db.execute("SELECT n FROM counts WHERE id = 0").fetchone()[0])

    def _transaction(self) -> sqlite3.Connection:
        # In autocommit mode a connection used as a context manager commits or rolls back
        # what an explicit BEGIN opened.
        self._db.execute("BEGIN IMMEDIATE")
        return self._db


class RedisStore(CacheStore):
    """Entries in Redis under ``prefix:``, shared by every replica (the ``redis`` extra).

    Expiry is Redis's (``SET ... PX``); size is bounded by the server's ``maxmemory`` policy
    (``allkeys-lru`` suits a cache).

    Args:
        url: e.g. ``redis://host:6379/0``.
        prefix: namespace of this store's keys; :meth:`clear` deletes only these.

    Raises:
        MissingDependencyError: the ``redis`` extra is not installed.
    """

    def __init__(self, url: str, prefix: str = "modelhost:cache") -> None:
        try:
            from redis.asyncio import Redis
            from redis.exceptions import RedisError
        except ImportError as exc:  # the redis extra is optional
            raise MissingDependencyError("redis", extra="redis") from exc
        self.prefix = prefix
        self._error: type[Exception] = RedisError
        self._redis: Redis = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    async def get(self, key: str) -> bytes | None:
        """The live value under ``key``, or None."""
        try:
            value: Any = await self._redis.get(self._key(key))
        except self._error as exc:
            raise _unavailable(exc) from exc
        if isinstance(value, str):  # only when the client decodes responses, which ours does not
            return value.encode()
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Keep ``value`` for ``ttl_s`` seconds (at least one millisecond)."""
        try:
            await self._redis.set(self._key(key), value, px=max(1, round(ttl_s * 1000)))
        except self._error as exc:
            raise _unavailable(exc) from exc

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        try:
            await self._redis.delete(self._key(key))
        except self._error as exc:
            raise _unavailable(exc) from exc

    async def clear(self) -> None:
        """Delete every key under this store's prefix (``SCAN`` then ``UNLINK`` in chunks)."""
        try:
            chunk: list[bytes] = []
            async for name in self._redis.scan_iter(match=f"{self.prefix}:*", count=_CLEAR_CHUNK):
                chunk.append(name)
                if len(chunk) >= _CLEAR_CHUNK:
                    await self._redis.unlink(*chunk)
                    chunk = []
            if chunk:
                await self._redis.unlink(*chunk)
        except self._error as exc:
            raise _unavailable(exc) from exc

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    def _key(self, key: str) -> str:
        return f"{self.prefix}:{key}"


def _unavailable(exc: Exception) -> ServiceError:
    return ServiceError(f"the response cache (Redis) is unavailable: {exc}", retry_after=1.0)


def build_store(settings: Settings, *, redis_prefix: str = "modelhost:cache") -> CacheStore:
    """The store ``settings.cache.store`` names, sized by ``settings.cache``.

    Raises:
        ConfigError: the store is ``redis`` but ``redis_url`` is not set.
        MissingDependencyError: the store is ``redis`` and the ``redis`` extra is missing.
        ServiceError: the SQLite file cannot be opened.
    """
    cache = settings.cache
    if cache.store == "sqlite":
        return SqliteStore(settings.home / SQLITE_FILE, cache.max_entries)
    if cache.store == "redis":
        if not settings.redis_url:
            raise ConfigError(
                "cache.store is 'redis' but redis_url is not set: set MODELHOST_REDIS_URL "
                "(e.g. redis://host:6379/0) or choose MODELHOST_CACHE__STORE=memory or sqlite",
                param="redis_url",
            )
        return RedisStore(settings.redis_url, prefix=redis_prefix)
    return MemoryStore(cache.max_entries, cache.max_bytes)
