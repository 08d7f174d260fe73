"""Semantic cache for LLM prompts: a near-identical prompt, asked before, gets that answer.

A prompt is embedded (the ``minilm`` runtime in production) and looked up in an approximate
nearest-neighbour index (usearch HNSW, cosine metric) of the prompts answered before in the
same *scope* — an opaque string the caller builds from the tenant, the model version and a
digest of the parameters, so another tenant, version or temperature never hits. The nearest few
prompts at or above the cosine ``threshold`` are tried in order; the first whose features agree
with the new prompt's (:func:`modelhost.cache.guards.compatible`: negations, numbers, dates,
entities, antonyms) is the hit. ``benchmarks/semantic_cache.py`` measures hit and false-hit
rates on ``data/semantic_pairs.jsonl`` and lookup latency at 100,000 entries.

Answers are kept in memory inside the index entries; each scope keeps at most ``max_entries``
prompts (the least recently used go first) and the cache at most ``max_scopes`` scopes. Prompts
longer than the embedding model reads are not cached at all.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelhost.cache.guards import PromptFeatures, compatible, features
from modelhost.errors import MissingDependencyError

__all__ = ["Embed", "SemanticCache", "SemanticHit", "SemanticIndex", "prompt_text"]

Embed = Callable[[list[str]], "npt.ArrayLike | Awaitable[npt.ArrayLike]"]
"""Turns texts into one vector per text, an array of shape ``(n, d)``; sync or async."""

_CANDIDATES = 4


@dataclass(frozen=True, slots=True)
class SemanticHit:
    """A cached answer served for a prompt close to the one it was stored for."""

    answer: bytes
    """The stored answer, as given to :meth:`SemanticCache.add`."""
    prompt: str
    """The stored prompt that matched."""
    similarity: float
    """Cosine similarity of the two prompts' embeddings."""


@dataclass(slots=True)
class _Entry:
    prompt: str
    answer: bytes
    features: PromptFeatures


def _usearch_index(ndim: int) -> Any:
    try:
        from usearch.index import Index
    except ImportError:
        raise MissingDependencyError("usearch", "semantic") from None
    # usearch grows the capacity as keys are added and reuses the slots of removed keys.
    return Index(ndim=ndim, metric="cos", dtype="f32")


def _unit(vector: npt.ArrayLike) -> npt.NDArray[np.float32]:
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(array))
    return array / norm if norm > 0 else array


class SemanticIndex:
    """The prompts of one scope: an HNSW index of their unit vectors and their answers.

    Capacity grows with the entries; past ``max_entries`` the least recently used entry (added
    or hit) is removed, and usearch reuses its slot. Not thread-safe: call it from one thread
    (the event loop).
    """

    def __init__(self, ndim: int, *, max_entries: int, expansion_search: int = 64) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ndim = ndim
        self.max_entries = max_entries
        self._index = _usearch_index(ndim)
        self.expansion_search = expansion_search
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._keys: dict[str, int] = {}
        self._next_key = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def expansion_search(self) -> int:
        """HNSW search breadth ("ef"): higher finds the true nearest prompt more often, slower.

        Among 100,000 random 384-d vectors (HNSW's hard case; real embeddings cluster), 64 —
        usearch's default, kept here — found a near-duplicate's stored vector for 87% of
        queries at a search p99 of ~1 ms on 2 busy cores, 128 for 97% at ~1.3-2 ms, 256 for
        99.9% at ~2.4 ms (benchmarks/semantic_cache.py). A vector not found is a miss, never a
        false hit.
        """
        return int(self._index.expansion_search)

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        self._index.expansion_search = value

    def add(self, vector: npt.ArrayLike, prompt: str, answer: bytes) -> None:
        """Store ``answer`` for ``prompt`` (embedded as ``vector``), evicting the least
        recently used entry when full; a prompt stored already gets the new answer."""
        known = self._keys.get(prompt)
        if known is not None:  # the same prompt again (two concurrent misses): new answer
            self._entries[known].answer = answer
            self._entries.move_to_end(known)
            return
        while len(self._entries) >= self.max_entries:
            key, evicted = self._entries.popitem(last=False)
            self._keys.pop(evicted.prompt, None)
            self._index.remove(key)
        key = self._next_key
        self._next_key += 1
        self._index.add(key, _unit(vector))
        self._entries[key] = _Entry(prompt, answer, features(prompt))
        self._keys[prompt] = key

    def search(self, vector: npt.ArrayLike, prompt: str, *, threshold: float) -> SemanticHit | None:
        """The nearest stored prompt at or above ``threshold`` that is compatible with
        ``prompt``, or None.

        The nearest few candidates are tried in order of similarity, so a near-miss ("not")
        right next to a paraphrase does not hide the paraphrase.
        """
        if not self._entries:
            return None
        matches = self._index.search(_unit(vector), min(_CANDIDATES, len(self._entries)))
        wanted: PromptFeatures | None = None
        for key, distance in zip(matches.keys.tolist(), matches.distances.tolist(), strict=True):
            similarity = 1.0 - float(distance)
            if similarity < threshold:
                break
            entry = self._entries.get(int(key))
            if entry is None:
                continue
            wanted = wanted or features(prompt)
            if compatible(wanted, entry.features):
                self._entries.move_to_end(int(key))
                return SemanticHit(entry.answer, entry.prompt, similarity)
        return None


class SemanticCache:
    """Answers of LLM prompts, served again for prompts close in meaning within one scope.

    Args:
        embed: Texts to vectors (sync callables run in a worker thread).
        threshold: Least cosine similarity for a hit.
        max_entries: Most prompts one scope keeps.
        max_scopes: Most scopes kept; the least recently used scope is dropped whole.
        expansion_search: HNSW search breadth (see :attr:`SemanticIndex.expansion_search`).
        max_prompt_chars: Longer prompts are neither looked up nor stored: the embedding model
            reads only its first tokens (256 word pieces for minilm, ~1,000 characters of
            English), so two prompts differing after them would look identical.
    """

    def __init__(
        self,
        embed: Embed,
        *,
        threshold: float = 0.95,
        max_entries: int = 100_000,
        max_scopes: int = 1024,
        expansion_search: int = 64,
        max_prompt_chars: int = 1000,
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")
        self.threshold = threshold
        self.max_entries = max_entries
        self.max_scopes = max_scopes
        self.expansion_search = expansion_search
        self.max_prompt_chars = max_prompt_chars
        self._embed = embed
        # a coroutine function, or an object whose class defines ``async def __call__``
        self._async = inspect.iscoroutinefunction(embed) or inspect.iscoroutinefunction(
            type(embed).__call__
        )
        self._scopes: OrderedDict[str, SemanticIndex] = OrderedDict()
        # The vector of a missed prompt, kept for the add() that usually follows.
        self._recent: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(index) for index in self._scopes.values())

    async def _vector(self, prompt: str) -> npt.NDArray[np.float32]:
        cached = self._recent.get(prompt)
        if cached is not None:
            return cached
        produced = (
            self._embed([prompt]) if self._async else await asyncio.to_thread(self._embed, [prompt])
        )
        result = await produced if inspect.isawaitable(produced) else produced
        vector = _unit(np.asarray(result, dtype=np.float32)[0])
        self._recent[prompt] = vector
        if len(self._recent) > 256:
            self._recent.popitem(last=False)
        return vector

    async def lookup(self, scope: str, prompt: str) -> SemanticHit | None:
        """The answer of a stored prompt of ``scope`` close to ``prompt``, or None."""
        index = self._scopes.get(scope)
        if index is None or not len(index) or len(prompt) > self.max_prompt_chars:
            return None
        vector = await self._vector(prompt)
        self._scopes.move_to_end(scope)
        return index.search(vector, prompt, threshold=self.threshold)

    async def add(self, scope: str, prompt: str, answer: bytes) -> None:
        """Store ``answer`` for ``prompt`` in ``scope`` (unless the prompt is too long)."""
        if len(prompt) > self.max_prompt_chars:
            return
        vector = await self._vector(prompt)
        self._recent.pop(prompt, None)
        index = self._scopes.get(scope)
        if index is None:
            index = SemanticIndex(
                vector.shape[0],
                max_entries=self.max_entries,
                expansion_search=self.expansion_search,
            )
            self._scopes[scope] = index
            while len(self._scopes) > self.max_scopes:
                self._scopes.popitem(last=False)
        self._scopes.move_to_end(scope)
        index.add(vector, prompt, answer)

    def clear(self, scope: str | None = None) -> None:
        """Forget one scope, or every scope."""
        if scope is None:
            self._scopes.clear()
        else:
            self._scopes.pop(scope, None)


def _message_text(message: Any) -> str | None:
    if not isinstance(message, Mapping):
        return None
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        parts = [p.get("text") for p in content if isinstance(p, Mapping)]
        content = "\n".join(p for p in parts if isinstance(p, str))
    if not isinstance(content, str):
        return None
    return f"{message.get('role', 'user')}: {content}"


def prompt_text(item: Any) -> str | None:
    """The text to embed of one LLM input item, or None when it has none.

    A string is itself; ``{"prompt": ...}`` is its prompt; ``{"messages": [...]}`` is the whole
    conversation, one ``role: content`` line per message, so the same last question after a
    different history is a different prompt.
    """
    if isinstance(item, str):
        return item
    if not isinstance(item, Mapping):
        return None
    prompt = item.get("prompt")
    if isinstance(prompt, str):
        return prompt
    messages = item.get("messages")
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        return None
    lines = [_message_text(message) for message in messages]
    if any(line is None for line in lines):
        return None
    return "\n".join(line for line in lines if line is not None)
