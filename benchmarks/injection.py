"""Prompt-injection detector: detection and false-positive rates, and per-request latency.

Builds the ``minilm`` demo model into a temporary directory, loads it through the runtime the
server uses, and scores the labelled sets shipped in ``modelhost/security/data``:

- ``injection_eval.jsonl``: the evaluation set (>= 100 attacks, >= 100 benign prompts);
- ``injection_holdout.jsonl``: a smaller set written after the rules and threshold were frozen,
  never used for tuning (a less optimistic estimate).

Prints, per set and per mode (heuristics only, heuristics + embeddings): the share of attacks
flagged, the share of benign prompts flagged, a per-category breakdown, the misses; then the
latency of one request (p50/p99) in both modes.

    .venv/bin/python benchmarks/injection.py [--threshold 0.5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from modelhost.demo import build_minilm
from modelhost.manifest import load_manifest
from modelhost.runtimes import RuntimeContext, create_runtime
from modelhost.security.injection import (
    DEFAULT_THRESHOLD,
    InjectionDetector,
    embedder_from_runtime,
    load_jsonl,
)

SETS = ("injection_eval.jsonl", "injection_holdout.jsonl")


def _load_detectors(threads: int) -> tuple[InjectionDetector, InjectionDetector, float]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = build_minilm(Path(tmp))[0]
        runtime = create_runtime(
            RuntimeContext(manifest=load_manifest(directory), path=directory, threads=threads)
        )
        runtime.load()
    full = InjectionDetector(embedder_from_runtime(runtime))
    started = time.perf_counter()
    full.warm()
    return InjectionDetector(), full, time.perf_counter() - started


def _rates(rows: list[dict[str, Any]], flagged: list[bool]) -> tuple[float, float]:
    attacks = [f for f, row in zip(flagged, rows, strict=True) if row["label"] == "attack"]
    benign = [f for f, row in zip(flagged, rows, strict=True) if row["label"] == "benign"]
    return sum(attacks) / len(attacks), sum(benign) / len(benign)


def _report_set(
    name: str, rows: list[dict[str, Any]], detector: InjectionDetector, mode: str, threshold: float
) -> None:
    scores = detector.score_many(row["text"] for row in rows)
    flagged = [score.score >= threshold for score in scores]
    detection, false_positive = _rates(rows, flagged)
    attacks = sum(row["label"] == "attack" for row in rows)
    print(f"\n## {name} — {mode} ({attacks} attacks, {len(rows) - attacks} benign)")
    print(f"detection rate       {detection:7.1%}   (target >= 90%)")
    print(f"false-positive rate  {false_positive:7.1%}   (target <= 5%)")
    per_category: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for row, hit in zip(rows, flagged, strict=True):
        per_category[(row["label"], row["category"])].append(hit)
    print("label   category             flagged")
    for (label, category), hits in sorted(per_category.items()):
        print(f"{label:7} {category:20} {sum(hits):3}/{len(hits):<3} {sum(hits) / len(hits):6.0%}")
    for row, score, hit in zip(rows, scores, flagged, strict=True):
        wrong = hit != (row["label"] == "attack")
        if wrong:
            kind = "missed" if row["label"] == "attack" else "false+"
            print(f"  {kind} {score.score:.2f} {row['id']}: {row['text'][:80]!r}")


def _latency(detector: InjectionDetector, texts: list[str], rounds: int) -> tuple[float, float]:
    timings: list[float] = []
    for _ in range(rounds):
        for text in texts:
            started = time.perf_counter()
            detector.score(text)
            timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    p99 = timings[min(len(timings) - 1, int(len(timings) * 0.99))]
    return statistics.median(timings), p99


def main() -> None:
    """Score the shipped labelled sets and time single requests."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--rounds", type=int, default=3, help="latency passes over the eval set")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for minilm")
    args = parser.parse_args()
    heuristics, full, warm = _load_detectors(args.threads)
    print(f"threshold {args.threshold}  (score >= threshold is flagged)")
    print(f"attack corpus: {len(full.corpus)} texts, embedded once in {warm * 1000:.0f} ms")
    for name in SETS:
        rows = load_jsonl(name)
        _report_set(name, rows, heuristics, "heuristics only", args.threshold)
        _report_set(name, rows, full, "heuristics + minilm similarity", args.threshold)
    texts = [row["text"] for row in load_jsonl(SETS[0])]
    print(f"\n## latency of one request ({len(texts) * args.rounds} calls, one text each)")
    for mode, detector in (("heuristics only", heuristics), ("with embeddings", full)):
        p50, p99 = _latency(detector, texts, args.rounds)
        print(f"{mode:16} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")


if __name__ == "__main__":
    main()
