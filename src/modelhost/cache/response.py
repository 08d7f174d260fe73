"""The data plane's response cache: the exact cache, and for language models that opt in, the
semantic cache, behind the :class:`~modelhost.serving.caching.ResponseCache` hook.

A request is first looked up exactly. A miss of a one-prompt request to a version whose
manifest enables ``cache.semantic`` is then looked up by meaning: its prompt is embedded with
the production version of ``cache.semantic.embedding_model`` (``minilm``) on this server and
searched in the index of its scope — the tenant, the exact version and manifest digest, and
the parameters, so nothing crosses tenants, versions or settings — where a stored prompt within
the cosine threshold that passes the guards (same negation, numbers, dates and names) answers.
Only deterministic requests take part in either (sampled output is never cached). The semantic
index lives in each process's memory; the exact store may be shared (Redis).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from modelhost.cache.exact import CachedAnswer, ExactCache, Lookup, cache_key, deterministic
from modelhost.cache.semantic import SemanticCache, prompt_text
from modelhost.cache.stores import build_store
from modelhost.config import Settings
from modelhost.inference import Usage
from modelhost.manifest import SemanticCacheConfig
from modelhost.registry import VersionInfo
from modelhost.security.injection import embedder_from_runtime
from modelhost.serving.caching import CacheLookup, CacheState, ResponseCache
from modelhost.serving.models import ModelManager

log = logging.getLogger("modelhost.cache")


class ProductionEmbedder:
    """Embeds texts with the production version of an embeddings model on this server."""

    def __init__(self, manager: ModelManager, model: str) -> None:
        self.manager = manager
        self.model = model

    def ready(self) -> bool:
        """Whether the embeddings model is loaded here (no semantic lookups until it is)."""
        return self.manager.production_runtime(self.model) is not None

    def __call__(self, texts: list[str]) -> Any:
        runtime = self.manager.production_runtime(self.model)
        if runtime is None:
            raise RuntimeError(f"{self.model} is not loaded")
        return embedder_from_runtime(runtime)(texts)


@dataclass(frozen=True, slots=True)
class _Pending:
    """What a miss stores its answer under: the exact entry and the semantic scope."""

    exact: Lookup
    scope: str | None = None
    prompt: str | None = None
    semantic: SemanticCache | None = None


class Responses(ResponseCache):
    """Exact lookups, then semantic ones where a version opts in."""

    def __init__(self, exact: ExactCache, manager: ModelManager, max_entries: int) -> None:
        self.exact = exact
        self.manager = manager
        self.max_entries = max_entries
        self._semantic: dict[tuple[str, float], tuple[ProductionEmbedder, SemanticCache]] = {}

    def _semantic_of(self, config: SemanticCacheConfig) -> tuple[ProductionEmbedder, SemanticCache]:
        key = (config.embedding_model, config.threshold)
        found = self._semantic.get(key)
        if found is None:
            embedder = ProductionEmbedder(self.manager, config.embedding_model)
            cache = SemanticCache(
                embedder, threshold=config.threshold, max_entries=self.max_entries
            )
            found = self._semantic[key] = (embedder, cache)
        return found

    async def lookup(
        self,
        info: VersionInfo,
        tenant: str,
        inputs: list[Any],
        parameters: dict[str, Any],
        *,
        bypass: bool,
    ) -> CacheLookup:
        """The exact answer; else, for an opted-in prompt, a semantic one; else a miss."""
        found = await self.exact.lookup(info, tenant, inputs, parameters, bypass=bypass)
        if found.answer is not None:
            return CacheLookup(
                CacheState.HIT, results=found.answer.results, usage=found.answer.usage
            )
        if found.key is None:
            return CacheLookup(found.state)
        pending = _Pending(found)
        config = info.manifest.cache.semantic
        prompt = prompt_text(inputs[0]) if config.enabled and len(inputs) == 1 else None
        if prompt is not None and deterministic(info, parameters):
            embedder, semantic = self._semantic_of(config)
            if embedder.ready():
                scope = cache_key(info, tenant, [], parameters)
                pending = _Pending(found, scope, prompt, semantic)
                hit = None if bypass else await semantic.lookup(scope, prompt)
                if hit is not None:
                    answer = CachedAnswer.decode(hit.answer)
                    return CacheLookup(
                        CacheState.HIT,
                        results=answer.results,
                        usage=answer.usage,
                        kind="semantic",
                    )
        return CacheLookup(found.state, key=pending)

    async def store(self, lookup: CacheLookup, results: list[Any], usage: Usage) -> None:
        """Keep a miss's answer exactly, and by meaning where the version opted in."""
        pending = lookup.key
        if not isinstance(pending, _Pending):
            return
        await self.exact.store(pending.exact, results, usage)
        if pending.semantic is None or pending.scope is None or pending.prompt is None:
            return
        answer = CachedAnswer(results, usage.as_dict(), pending.exact.version or "", 0.0)
        try:
            await pending.semantic.add(pending.scope, pending.prompt, answer.encode())
        except Exception:  # a cache must never fail the request it would have served
            log.exception("semantic cache add failed")

    async def close(self) -> None:
        """Close the exact store."""
        await self.exact.close()


def build_response_cache(settings: Settings, manager: ModelManager) -> Responses | None:
    """The response cache ``settings.cache`` asks for; None when caching is off."""
    if not settings.cache.enabled:
        return None
    exact = ExactCache(build_store(settings), settings.cache)
    return Responses(exact, manager, settings.cache.semantic_max_entries)
