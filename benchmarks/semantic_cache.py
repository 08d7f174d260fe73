"""Semantic cache: hit and false-hit rates on the labelled pairs, lookup latency at scale.

Builds the ``minilm`` demo model (the ONNX export, offline) and embeds every prompt of
``src/modelhost/cache/data/semantic_pairs.jsonl`` (paraphrases that should hit, near-misses —
negation, number, date, entity, topic — that must not). Prints, per threshold from 0.80 to
0.97, the paraphrase hit rate and the false-hit rate with the guards
(``modelhost.cache.guards.compatible``) and without them (cosine only); the per-kind figures at
``--threshold``; and the same figures end to end through ``SemanticCache``, every first prompt
stored in one scope and every second prompt looked up (a paraphrase answered with another
pair's answer is counted apart).

Then fills one ``SemanticIndex`` with ``--entries`` (default 100,000) **synthetic random unit
vectors** of the model's size (prompts are synthetic too) and times ``search`` (the lookup
without the embedding) at HNSW ``expansion_search`` 64 (the default), 128 and 256: misses
(random queries) and hits (a stored vector plus a little noise, cosine ~0.98, guards included;
the hit count shows how often HNSW found it: random vectors are its hard case). The embedding
of one prompt, timed on its own, is the larger part of a real lookup and is printed too.

    .venv/bin/python benchmarks/semantic_cache.py [--threshold 0.95] [--entries 100000]

Runs offline; nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from modelhost.cache.guards import compatible, features
from modelhost.cache.semantic import SemanticCache, SemanticIndex
from modelhost.demo import build_minilm
from modelhost.manifest import load_manifest
from modelhost.runtimes import Runtime, RuntimeContext, create_runtime

THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97)


def load_pairs() -> list[dict[str, Any]]:
    """The labelled pairs shipped with the package."""
    text = resources.files("modelhost.cache").joinpath("data/semantic_pairs.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_minilm(root: Path) -> Runtime:
    """Build and load the minilm demo model."""
    directory = build_minilm(root)[0]
    runtime = create_runtime(
        RuntimeContext(manifest=load_manifest(directory), path=directory, threads=2)
    )
    runtime.load()
    return runtime


def embedder(runtime: Runtime) -> Any:
    """A sync ``list[str] -> (n, d)`` over the runtime."""

    def embed(texts: list[str]) -> np.ndarray:
        results = runtime.predict(list(texts), {}).results
        return np.asarray([r["embedding"] for r in results], dtype=np.float32)

    return embed


def rates(pairs: list[dict[str, Any]], hits: list[bool]) -> tuple[float, float]:
    """Paraphrase hit rate and false-hit rate (near-misses that hit)."""
    same = [h for p, h in zip(pairs, hits, strict=True) if p["same"]]
    other = [h for p, h in zip(pairs, hits, strict=True) if not p["same"]]
    return sum(same) / len(same), sum(other) / len(other)


def quality(pairs: list[dict[str, Any]], embed: Any, threshold: float) -> None:
    """The threshold table and the per-kind figures."""
    texts = sorted({p["a"] for p in pairs} | {p["b"] for p in pairs})
    vectors = dict(zip(texts, embed(texts), strict=True))
    sims = [float(np.dot(vectors[p["a"]], vectors[p["b"]])) for p in pairs]
    guard = [compatible(features(p["a"]), features(p["b"])) for p in pairs]
    kinds = Counter(p["kind"] for p in pairs)
    print(f"{len(pairs)} pairs: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    print(f"\n{'threshold':>9} | {'cosine only':^21} | {'cosine + guards':^21}")
    print(f"{'':>9} | {'para hit':>9} {'false hit':>10} | {'para hit':>9} {'false hit':>10}")
    for t in THRESHOLDS:
        plain = rates(pairs, [s >= t for s in sims])
        guarded = rates(pairs, [s >= t and g for s, g in zip(sims, guard, strict=True)])
        print(
            f"{t:>9.2f} | {plain[0]:>9.1%} {plain[1]:>10.1%} | "
            f"{guarded[0]:>9.1%} {guarded[1]:>10.1%}"
        )
    print(f"\nat {threshold:.2f}, per kind (share of pairs that hit: cosine only / with guards)")
    for kind in sorted(kinds):
        rows = [i for i, p in enumerate(pairs) if p["kind"] == kind]
        plain_hits = sum(sims[i] >= threshold for i in rows)
        guarded_hits = sum(sims[i] >= threshold and guard[i] for i in rows)
        print(
            f"  {kind:<11} {plain_hits / len(rows):>6.1%} / {guarded_hits / len(rows):>6.1%}"
            f"   (median cosine {statistics.median(sims[i] for i in rows):.3f})"
        )


async def end_to_end(pairs: list[dict[str, Any]], embed: Any, threshold: float) -> None:
    """Every first prompt in one scope; look up every second prompt."""
    cache = SemanticCache(embed, threshold=threshold, max_entries=10_000)
    for a in dict.fromkeys(p["a"] for p in pairs):
        await cache.add("tenant/model@1/params", a, a.encode())
    # a prompt that is also the first prompt of another pair, or its labelled paraphrase, is a
    # right answer wherever it is stored
    same = {(p["a"], p["b"]) for p in pairs if p["same"]}
    right = wrong_para = false_hits = 0
    for p in pairs:
        hit = await cache.lookup("tenant/model@1/params", p["b"])
        if hit is None:
            continue
        if hit.prompt == p["b"] or (hit.prompt, p["b"]) in same:
            right += p["same"]
        elif p["same"]:
            wrong_para += 1
        else:
            false_hits += 1
    n_same = sum(p["same"] for p in pairs)
    n_other = len(pairs) - n_same
    print(
        f"\nend to end at {threshold:.2f} (SemanticCache, {len(cache)} prompts in one scope): "
        f"paraphrase hits {right / n_same:.1%}, paraphrases answered with another pair's "
        f"answer {wrong_para}, near-miss false hits {false_hits / n_other:.1%}"
    )


def _percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


def scale(entries: int, ndim: int, threshold: float, queries: int) -> None:
    """Fill an index with random unit vectors; time misses and hits."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((entries, ndim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = SemanticIndex(ndim, max_entries=entries)
    started = time.perf_counter()
    for i, vector in enumerate(vectors):
        index.add(vector, f"synthetic prompt number {i} about topic {i % 97}", b"answer")
    print(
        f"\n{entries:,} entries (synthetic random unit vectors, d={ndim}) added in "
        f"{time.perf_counter() - started:.1f} s"
    )
    probes = rng.standard_normal((queries, ndim)).astype(np.float32)
    picks = rng.integers(0, entries, queries)
    near = vectors[picks] + 0.01 * rng.standard_normal((queries, ndim)).astype(np.float32)
    for expansion in (64, 128, 256):
        index.expansion_search = expansion
        print(f"  expansion_search {expansion}:")
        _time_searches(index, threshold, probes, near, picks)


def _time_searches(
    index: SemanticIndex, threshold: float, probes: Any, near: Any, picks: Any
) -> None:
    queries = len(probes)
    for name, batch, prompts in (
        ("miss (random query)", probes, ["what is the meaning of this"] * queries),
        (
            "hit (stored vector + noise)",
            near,
            [f"synthetic prompt number {i} about topic {i % 97}" for i in picks],
        ),
    ):
        samples, found = [], 0
        for vector, prompt in zip(batch, prompts, strict=True):
            began = time.perf_counter()
            hit = index.search(vector, prompt, threshold=threshold)
            samples.append(time.perf_counter() - began)
            found += hit is not None
        p50, p99 = _percentiles(samples)
        print(
            f"    search, {name:<28} p50 {p50 * 1e3:6.3f} ms   p99 {p99 * 1e3:6.3f} ms"
            f"   ({found}/{queries} hits)"
        )


def main() -> None:
    """Build, embed, measure; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    pairs = load_pairs()
    with tempfile.TemporaryDirectory() as tmp:
        runtime = load_minilm(Path(tmp))
        embed = embedder(runtime)
        quality(pairs, embed, args.threshold)
        asyncio.run(end_to_end(pairs, embed, args.threshold))
        samples = []
        for _ in range(200):
            began = time.perf_counter()
            embed(["How do I reset the password of my account?"])
            samples.append(time.perf_counter() - began)
        p50, p99 = _percentiles(samples)
        print(
            f"\nembedding one prompt (minilm, ONNX, 2 threads): p50 {p50 * 1e3:.2f} ms, "
            f"p99 {p99 * 1e3:.2f} ms"
        )
        ndim = int(embed(["x"]).shape[1])
    scale(args.entries, ndim, args.threshold, args.queries)


if __name__ == "__main__":
    main()
