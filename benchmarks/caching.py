"""A fixed mixed workload with the caches and the cascade off, then on (issue 8).

The workload is built from the labelled pairs the semantic cache is measured on
(``src/modelhost/cache/data/semantic_pairs.jsonl``), in a fixed shuffled order: **new**
prompts (first time asked), exact **repeats** of earlier prompts, and **paraphrases** of
earlier prompts. Every prompt goes to a real language model, ``gemma-270m`` (the demo GGUF,
greedy: temperature 0, 8 tokens), priced as the demo prices it.

* **off**: no response cache; every prompt is sent to ``gemma-270m``.
* **on**: the exact and semantic caches on, and the prompts sent to a cascade ``support``:
  a small triage classifier (a python model that recognises a few known intents by keywords
  and answers those with a label and a confident score, for a flat fee per request) answers
  what it is sure of; the rest escalate to ``gemma-270m``, whose answers are cached.

Both run in-process through the real data plane (``build_services``), one after the other, on
fresh homes. Printed: latency per request (p50, p95, mean), runtime calls per model, cost
(the sum of ``usage.cost`` of the answers) and what caches and cascade saved.

    .venv/bin/python benchmarks/caching.py [--prompts 240]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import textwrap
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from modelhost.app import Services, build_services, close_services
from modelhost.config import Settings
from modelhost.demo import build_gemma, build_minilm
from modelhost.inference import InferenceRequest
from modelhost.registry import Stage
from modelhost.security.keys import Principal

TRIAGE = textwrap.dedent(
    '''
    INTENTS = {
        "password": ("account", ("password", "log in", "login", "sign in")),
        "refund": ("billing", ("refund", "invoice", "charge", "billing")),
        "shipping": ("shipping", ("ship", "deliver", "parcel", "tracking")),
    }


    class Triage:
        """Recognises a few intents by keywords: sure of those, unsure of anything else."""

        def __init__(self, path):
            self.path = path

        def predict(self, inputs, parameters):
            out = []
            for item in inputs:
                text = item["prompt"].lower()
                label, score = "other", 0.2
                for name, (category, words) in INTENTS.items():
                    if any(word in text for word in words):
                        label, score = category, 0.95
                        break
                out.append({"label": label, "score": score})
            return out
    '''
)
WHO = Principal(tenant="bench", subject="workload", scopes=frozenset({"predict"}))


def workload(size: int, seed: int = 7) -> list[tuple[str, str]]:
    """``(kind, prompt)`` pairs: new prompts, exact repeats and paraphrases of earlier ones."""
    text = resources.files("modelhost.cache").joinpath("data/semantic_pairs.jsonl").read_text()
    pairs = [json.loads(line) for line in text.splitlines() if line.strip()]
    paraphrases = [(p["a"], p["b"]) for p in pairs if p["same"]]
    others = [p["a"] for p in pairs if not p["same"]]
    rng = random.Random(seed)
    rng.shuffle(paraphrases)
    rng.shuffle(others)
    asked: list[str] = []
    items: list[tuple[str, str]] = []
    fresh = iter([a for a, _ in paraphrases] + others)
    rephrase = dict(paraphrases)
    while len(items) < size:
        roll = rng.random()
        candidates = [a for a in asked if a in rephrase]
        if roll < 0.3 and asked:
            items.append(("repeat", rng.choice(asked)))
        elif roll < 0.5 and candidates:
            items.append(("paraphrase", rephrase[rng.choice(candidates)]))
        else:
            prompt = next(fresh)
            asked.append(prompt)
            items.append(("new", prompt))
    return items


def _version_dir(directory: Path, **changes: Any) -> Path:
    manifest_path = directory / "modelhost.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest.update(changes)
    manifest_path.write_text(yaml.safe_dump(manifest))
    return directory


def _triage(root: Path) -> Path:
    directory = root / "triage-1.0.0"
    directory.mkdir(parents=True)
    (directory / "triage.py").write_text(TRIAGE)
    manifest = {
        "name": "triage",
        "version": "1.0.0",
        "runtime": "python",
        "task": "classification",
        "entrypoint": "triage:Triage",
        "pricing": {"per_request": 0.000001, "currency": "USD"},
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return directory


def _cascade(root: Path) -> Path:
    directory = root / "support-1.0.0"
    directory.mkdir(parents=True)
    manifest = {
        "name": "support",
        "version": "1.0.0",
        "runtime": "cascade",
        "cascade": {
            "stages": [{"model": "triage", "min_score": 0.8}, {"model": "gemma-270m"}],
        },
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return directory


async def _services(root: Path, caching: bool) -> Services:
    settings = Settings(home=root / "home", demo={"enabled": False}, cache={"enabled": caching})
    services = build_services(settings)
    (gemma,) = build_gemma(root / "gemma")
    cache = {"semantic": {"enabled": True}}
    _version_dir(gemma, parameters={"temperature": 0, "max_tokens": 8}, cache=cache)
    (minilm,) = build_minilm(root / "minilm")
    for directory in (gemma, minilm, _triage(root), _cascade(root)):
        services.registry.push(directory, actor="bench", stage=Stage.PRODUCTION)
    await services.manager.refresh()
    await services.manager.wait_loaded()
    return services


def _hits(services: Services) -> dict[str, int]:
    """Cache hits by model and kind (``gemma-270m/semantic``), from the metrics."""
    hits: dict[str, int] = {}
    for family in services.metrics.registry.collect():
        if family.name != "modelhost_cache_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["outcome"] == "hit":
                key = f"{sample.labels['model']}/{sample.labels['kind']}"
                hits[key] = hits.get(key, 0) + int(sample.value)
    return hits


def _calls(services: Services, model: str) -> int:
    value = services.metrics.registry.get_sample_value(
        "modelhost_inference_duration_seconds_count", {"model": model, "version": "1.0.0"}
    )
    return int(value or 0)


async def run(mode: str, items: list[tuple[str, str]]) -> dict[str, Any]:
    """Send the workload once; the figures of that run."""
    root = Path(tempfile.mkdtemp(prefix=f"mh-caching-{mode}-"))
    services = await _services(root, caching=mode == "on")
    model = "support" if mode == "on" else "gemma-270m"
    latencies: list[float] = []
    cost = saved = 0.0
    try:
        for _, prompt in items:
            request = InferenceRequest(
                model=model, inputs=[{"prompt": prompt}], principal=WHO, protocol="bench"
            )
            started = time.perf_counter()
            response = await services.plane.infer(request)
            latencies.append(time.perf_counter() - started)
            cost += response.usage.cost or 0.0
            saved += response.usage.saved or 0.0
        calls = {name: _calls(services, name) for name in ("triage", "gemma-270m")}
        hits = _hits(services)
    finally:
        await close_services(services)
    latencies.sort()
    return {
        "mode": mode,
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "calls": calls,
        "cost": cost,
        "saved": saved,
        "hits": hits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=240)
    args = parser.parse_args()
    items = workload(args.prompts)
    kinds = {k: sum(1 for kind, _ in items if kind == k) for k in ("new", "repeat", "paraphrase")}
    print(f"workload: {len(items)} prompts: {kinds}")
    results = [asyncio.run(run(mode, items)) for mode in ("off", "on")]
    for r in results:
        print(
            f"{r['mode']:>3}: p50 {r['p50_ms']:8.2f} ms  p95 {r['p95_ms']:8.2f} ms  "
            f"mean {r['mean_ms']:8.2f} ms  runtime calls {r['calls']}  "
            f"cost {r['cost']:.8f} USD  saved {r['saved']:.8f} USD  cache hits {r['hits']}"
        )
    off, on = results
    gemma_off, gemma_on = off["calls"]["gemma-270m"], on["calls"]["gemma-270m"]
    print(
        f"on / off: mean latency x{on['mean_ms'] / off['mean_ms']:.3f}, "
        f"gemma calls {gemma_on}/{gemma_off}, cost x{on['cost'] / off['cost']:.3f}"
    )


if __name__ == "__main__":
    main()
