"""Does grammar-constrained output hold its schema? The support-desk features, many times.

Renders every support-desk feature (``examples/support-desk/features``) over the 50 inputs of
``tests/features/test_support_desk.py`` (a fresh random fence boundary each render, as served),
runs gemma-270m in-process through the llama.cpp runtime with the feature's
``response_format`` grammar, and parses each answer with the features' own parser. Prints, per
feature and in all: invokes, answers cut at ``max_tokens`` (``finish_reason: length``) and
``output_mismatch`` answers that were *not* cut (the count that must be 0). Every answer's raw
text and finish reason go to a JSON-lines log.

``--temperature 1`` samples instead of decoding greedily, which reaches unusual texts (a
newline inside a string, say) far more often than the greedy specs; ``--load`` starts a process
that keeps one core busy for the whole run.

    .venv/bin/python benchmarks/feature_schema.py --runs 5 --temperature 1 --load
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.features.test_support_desk import FEATURES, _inputs  # noqa: E402

from modelhost.demo import build_gemma  # noqa: E402
from modelhost.features.structured import (  # noqa: E402
    output_validator,
    parse_output,
    response_format_for,
)
from modelhost.features.template import FeatureTemplate  # noqa: E402
from modelhost.manifest import ModelManifest  # noqa: E402
from modelhost.runtimes.base import RuntimeContext  # noqa: E402
from modelhost.runtimes.llamacpp import LlamaCppRuntime  # noqa: E402

SPECS = ROOT / "examples" / "support-desk" / "features"


def _burn() -> None:
    while True:
        pass


def _runtime(root: Path) -> LlamaCppRuntime:
    [directory] = build_gemma(root)
    data = yaml.safe_load((directory / "modelhost.yaml").read_text())
    runtime = LlamaCppRuntime(
        RuntimeContext(manifest=ModelManifest.model_validate(data), path=directory, threads=1)
    )
    runtime.load()
    return runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="passes over the 4 x 50 inputs")
    parser.add_argument("--features", default=",".join(FEATURES))
    parser.add_argument("--temperature", type=float, default=None, help="default: the spec's")
    parser.add_argument("--load", action="store_true", help="keep one other core busy")
    parser.add_argument("--log", default="feature_schema.jsonl")
    args = parser.parse_args()
    hog = multiprocessing.Process(target=_burn, daemon=True) if args.load else None
    if hog is not None:
        hog.start()
    counts: Counter[tuple[str, str]] = Counter()
    with tempfile.TemporaryDirectory() as tmp, open(args.log, "w") as log:
        runtime = _runtime(Path(tmp))
        started = time.perf_counter()
        for run in range(args.runs):
            for name in args.features.split(","):
                spec = yaml.safe_load((SPECS / f"{name}.yaml").read_text())
                template = FeatureTemplate(spec["template"])
                validator = output_validator(spec["output_schema"])
                parameters: dict[str, Any] = {
                    **spec.get("parameters", {}),
                    "response_format": response_format_for(spec["output_schema"], name),
                }
                if args.temperature is not None:
                    parameters.update(temperature=args.temperature, seed=run)
                examples = [(e["input"], e["output"]) for e in spec.get("examples", [])]
                for index, item in enumerate(_inputs(name)):
                    messages = template.render(item, examples=examples).messages(
                        spec.get("instructions")
                    )
                    out = runtime.predict([{"messages": messages}], parameters).results[0]
                    _, error = parse_output(out["text"], validator)
                    cut = out["finish_reason"] == "length"
                    counts[name, "invokes"] += 1
                    counts[name, "cut"] += cut
                    counts[name, "mismatch"] += error is not None and not cut
                    record = {"run": run, "feature": name, "input": index, "error": error, **out}
                    log.write(json.dumps(record) + "\n")
                    log.flush()
            print(f"pass {run + 1}/{args.runs} done, {time.perf_counter() - started:.0f} s")
    if hog is not None:
        hog.terminate()
    print(f"{'feature':<12} {'invokes':>8} {'cut':>5} {'output_mismatch (not cut)':>26}")
    for name in [*args.features.split(","), None]:
        rows = [k for k in counts if name is None or k[0] == name]
        total = {kind: sum(counts[k] for k in rows if k[1] == kind) for kind in counts_kinds()}
        label = name or "all"
        print(f"{label:<12} {total['invokes']:>8} {total['cut']:>5} {total['mismatch']:>26}")


def counts_kinds() -> tuple[str, ...]:
    """The counters kept per feature."""
    return ("invokes", "cut", "mismatch")


if __name__ == "__main__":
    main()
