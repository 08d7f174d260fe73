"""The exact response cache: a repeated deterministic request is answered from the store.

Only deterministic requests are cached (:func:`deterministic`): classification, regression
and embedding models; generation only at temperature 0 (after the manifest's default
parameters are merged with the request's); a ``custom`` model only when its manifest declares
``cache.exact: true``; nothing when it declares ``false``. Sampled output is never cached.
llama.cpp decodes greedily at temperature 0, so its answers need no fixed seed to repeat.

The key (:func:`cache_key`) is the sha256 of the model, the exact version, the digest of the
version's manifest, the tenant, and the inputs and merged parameters as canonical JSON: a new
version or a changed manifest never meets old entries, and one tenant never reads another's.

A request may skip the cache (``Cache-Control: no-cache``): its lookup is a ``bypass`` that
still carries the key, so the fresh answer replaces the stored one. A store that fails is
logged and counts as a miss: an outage of the cache never fails a request.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from modelhost.cache.stores import CacheStore
from modelhost.config import CacheSettings
from modelhost.errors import ServiceError
from modelhost.inference import Usage
from modelhost.manifest import RuntimeKind, Task
from modelhost.registry import VersionInfo
from modelhost.serving.caching import CacheState

log = logging.getLogger("modelhost.cache")

#: Tasks whose answers depend on the inputs alone.
_DETERMINISTIC_TASKS = frozenset({Task.CLASSIFICATION, Task.REGRESSION, Task.EMBEDDING})
#: Bumped when the key's recipe or the entry's encoding changes, so old entries are not read.
_FORMAT = "exact-v1"
_KEY_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """What an entry keeps of an answer: enough to build the response again."""

    results: list[Any]
    usage: dict[str, Any]
    """``Usage.as_dict()`` of the call that produced the answer."""
    version: str
    stored_at: float
    """Seconds since the epoch when the answer was stored."""

    def encode(self) -> bytes:
        """The entry's bytes (JSON; numpy arrays in results become lists)."""
        return orjson.dumps(
            {
                "results": self.results,
                "usage": self.usage,
                "version": self.version,
                "stored_at": self.stored_at,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    @classmethod
    def decode(cls, data: bytes) -> CachedAnswer:
        """The answer :meth:`encode` wrote.

        Raises:
            ValueError: ``data`` is not an encoded answer.
        """
        body = orjson.loads(data)
        try:
            return cls(
                results=list(body["results"]),
                usage=dict(body["usage"]),
                version=str(body["version"]),
                stored_at=float(body["stored_at"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a cached answer: {exc}") from exc

    def to_usage(self) -> Usage:
        """The stored usage as a :class:`~modelhost.runtimes.Usage`."""
        return Usage(
            input_tokens=int(self.usage.get("input_tokens", 0)),
            output_tokens=int(self.usage.get("output_tokens", 0)),
            cost=self.usage.get("cost"),
            currency=self.usage.get("currency"),
        )


@dataclass(frozen=True, slots=True)
class Lookup:
    """The outcome of :meth:`ExactCache.lookup`, handed back to :meth:`ExactCache.store`."""

    state: CacheState
    key: str | None
    """The entry's key; None when the request is not cacheable (nothing will be stored)."""
    answer: CachedAnswer | None = None
    """The cached answer on a hit."""
    version: str | None = None
    """The version looked up (what a stored answer records)."""
    ttl_s: float | None = None
    """How long a stored answer is served: the manifest's ``cache.ttl_s`` or the setting's."""


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counts since start-up, for metrics."""

    hits: int
    misses: int
    bypasses: int
    stored: int
    oversize: int
    """Answers not stored: larger than ``cache.max_entry_bytes``."""
    errors: int
    """Store calls that failed (counted as misses or skipped stores)."""


def merged_parameters(info: VersionInfo, parameters: dict[str, Any]) -> dict[str, Any]:
    """The manifest's default parameters overridden by the request's (as the data plane
    merges them; merging already merged parameters changes nothing)."""
    return {**info.manifest.parameters, **parameters}


def greedy(parameters: dict[str, Any]) -> bool:
    """True when generation at these parameters decodes greedily (temperature exactly 0).

    A missing or null temperature leaves the runtime's default (0.8 in llama.cpp): sampled.
    """
    temperature = parameters.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        return False
    return temperature == 0


def deterministic(info: VersionInfo, parameters: dict[str, Any]) -> bool:
    """Whether a request to ``info`` with ``parameters`` always gets the same answer, so
    caching it is safe.

    A language model (task ``generation`` or the llama.cpp runtime) is deterministic only at
    temperature 0, whatever its manifest declares; an LLM feature when its model parameters
    are greedy and it keeps no conversation; otherwise ``cache.exact: false`` caches
    nothing, ``true`` caches every request, and by default the task decides.
    """
    manifest = info.manifest
    declared = manifest.cache.exact
    if declared is False:
        return False
    if manifest.runtime is RuntimeKind.FEATURE and manifest.feature is not None:
        feature = manifest.feature  # its runner asks only for greedy calls outside a session
        return greedy(feature.model_parameters()) and not feature.conversation.enabled
    if manifest.task is Task.GENERATION or manifest.runtime is RuntimeKind.LLAMACPP:
        return greedy(merged_parameters(info, parameters))
    return declared is True or manifest.task in _DETERMINISTIC_TASKS


def _strict(value: Any) -> Any:
    """Numpy values JSON has no type for as plain values; anything else cannot be keyed."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} has no canonical JSON form")


def cache_key(info: VersionInfo, tenant: str, inputs: list[Any], parameters: dict[str, Any]) -> str:
    """The hex sha256 naming the answer to this request.

    Inputs and merged parameters are canonical JSON (sorted keys, no whitespace, numpy arrays
    as lists), so equal requests whose keys came in another order share the key.

    Raises:
        TypeError: the inputs or parameters hold a value with no canonical JSON form (such a
            request is not cacheable: a ``repr`` could make two different inputs collide).
    """
    # Imported here: modelhost.provenance imports the data plane, which uses this cache.
    from modelhost.provenance.capture import manifest_digest

    body = [
        _FORMAT,
        info.model,
        info.version,
        manifest_digest(info),
        tenant,
        inputs,
        merged_parameters(info, parameters),
    ]
    return hashlib.sha256(orjson.dumps(body, option=_KEY_OPTIONS, default=_strict)).hexdigest()


class ExactCache:
    """Answers repeated deterministic requests from a :class:`CacheStore`.

    The data plane calls :meth:`lookup` before routing a request to a runtime; on a hit it
    answers with ``lookup.answer``; otherwise it runs the model and, on success, calls
    :meth:`store` with the same lookup. ``lookup.state`` is the ``X-Cache`` header.

    Args:
        store: where entries live (see :func:`~modelhost.cache.stores.build_store`).
        settings: ``settings.cache``: on/off, default TTL, largest entry.
    """

    def __init__(self, store: CacheStore, settings: CacheSettings) -> None:
        self.store_backend = store
        self.settings = settings
        self._hits = 0
        self._misses = 0
        self._bypasses = 0
        self._stored = 0
        self._oversize = 0
        self._errors = 0

    async def lookup(
        self,
        info: VersionInfo,
        tenant: str,
        inputs: list[Any],
        parameters: dict[str, Any],
        *,
        bypass: bool = False,
    ) -> Lookup:
        """Look the request up.

        Args:
            info: the version that will answer (after routing and pinning).
            tenant: the caller's tenant; entries are never shared across tenants.
            inputs: the request's inputs, as the runtime receives them.
            parameters: the request's parameters (merged with the manifest's or not).
            bypass: the caller asked for a fresh answer (``Cache-Control: no-cache``): the
                store is not read, but the answer will replace the stored one.
        """
        key = self._key(info, tenant, inputs, parameters)
        if key is None:
            self._bypasses += 1
            return Lookup(state=CacheState.BYPASS, key=None)
        ttl_s = info.manifest.cache.ttl_s or self.settings.ttl_s
        if bypass:
            self._bypasses += 1
            return Lookup(CacheState.BYPASS, key, version=info.version, ttl_s=ttl_s)
        answer = await self._read(key)
        if answer is None:
            self._misses += 1
            return Lookup(CacheState.MISS, key, version=info.version, ttl_s=ttl_s)
        self._hits += 1
        return Lookup(CacheState.HIT, key, answer, version=info.version, ttl_s=ttl_s)

    async def store(
        self,
        lookup: Lookup,
        results: list[Any],
        usage: Usage,
        info: VersionInfo | None = None,
    ) -> bool:
        """Store a fresh answer under the lookup's key; True when it was stored. Never raises:
        a failure is logged and counted.

        Nothing is stored for a hit, for a request that is not cacheable, for an answer over
        ``max_entry_bytes`` or for one JSON cannot encode. The version and TTL are the ones
        the lookup found (``info``, when given, must be the version looked up).
        """
        if lookup.key is None or lookup.state is CacheState.HIT:
            return False
        version = info.version if info is not None else lookup.version
        ttl_s = lookup.ttl_s or self.settings.ttl_s
        answer = CachedAnswer(
            results=results, usage=usage.as_dict(), version=version or "", stored_at=time.time()
        )
        try:
            data = answer.encode()
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            self._errors += 1
            log.warning("exact cache: an answer cannot be encoded: %s", exc)
            return False
        if len(data) > self.settings.max_entry_bytes:
            self._oversize += 1
            return False
        try:
            await self.store_backend.set(lookup.key, data, ttl_s)
        except ServiceError as exc:
            self._errors += 1
            log.warning("exact cache: could not store an answer: %s", exc)
            return False
        self._stored += 1
        return True

    def stats(self) -> CacheStats:
        """Counts since start-up."""
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            bypasses=self._bypasses,
            stored=self._stored,
            oversize=self._oversize,
            errors=self._errors,
        )

    async def close(self) -> None:
        """Close the store."""
        await self.store_backend.close()

    def _key(
        self, info: VersionInfo, tenant: str, inputs: list[Any], parameters: dict[str, Any]
    ) -> str | None:
        if not self.settings.enabled or not deterministic(info, parameters):
            return None
        try:
            return cache_key(info, tenant, inputs, parameters)
        except TypeError:
            return None

    async def _read(self, key: str) -> CachedAnswer | None:
        try:
            data = await self.store_backend.get(key)
        except ServiceError as exc:
            self._errors += 1
            log.warning("exact cache: could not read an entry: %s", exc)
            return None
        if data is None:
            return None
        try:
            return CachedAnswer.decode(data)
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            self._errors += 1
            return None
