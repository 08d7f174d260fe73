"""Response caches (docs/caching.md).

* :mod:`~modelhost.cache.stores`: the :class:`CacheStore` contract and its memory, SQLite and
  Redis backends, chosen by :func:`build_store` from ``settings.cache.store``;
* :mod:`~modelhost.cache.exact`: the exact cache of deterministic requests
  (:class:`ExactCache`), keyed by model, version, manifest digest, tenant, inputs and
  parameters;
* :mod:`~modelhost.cache.semantic` and :mod:`~modelhost.cache.guards`: the semantic cache of
  LLM prompts (usearch, the ``semantic`` extra) and the guards against false hits;
* :mod:`~modelhost.cache.response`: both behind the data plane's hook.
"""

from __future__ import annotations

from modelhost.cache.exact import (
    CachedAnswer,
    CacheStats,
    ExactCache,
    Lookup,
    cache_key,
    deterministic,
    merged_parameters,
)
from modelhost.cache.guards import PromptFeatures, compatible, features
from modelhost.cache.semantic import SemanticCache, SemanticHit, SemanticIndex, prompt_text
from modelhost.cache.stores import (
    CacheStore,
    MemoryStore,
    RedisStore,
    SqliteStore,
    StoreStats,
    build_store,
)
from modelhost.serving.caching import CacheState

__all__ = [
    "CacheState",
    "CacheStats",
    "CacheStore",
    "CachedAnswer",
    "ExactCache",
    "Lookup",
    "MemoryStore",
    "PromptFeatures",
    "RedisStore",
    "SemanticCache",
    "SemanticHit",
    "SemanticIndex",
    "SqliteStore",
    "StoreStats",
    "build_store",
    "cache_key",
    "compatible",
    "deterministic",
    "features",
    "merged_parameters",
    "prompt_text",
]
