"""The support-desk features (``examples/support-desk``) on gemma-270m: golden pass rates, latency.

Starts its own ``modelhost serve`` (only the ``gemma-270m`` demo model, 2 inference threads) in a
temporary ``MODELHOST_HOME`` on a free port, or uses ``--url``/``--key`` of a running server (an
admin key). Then, for each spec in ``examples/support-desk/features``:

1. pushes it (``POST /v1/features``) and promotes it (``POST /v1/models/{name}/deployment/
   promote``), which runs its golden set as the promotion gate (the gate's accuracy is printed);
2. sends every golden case, one request each, to ``POST /v1/features/{name}/invoke`` with
   ``Cache-Control: no-cache`` (the gate already answered the same inputs), and counts the
   answers whose fields hold every expected value (the gate's subset match).

Printed per feature: cases, pass rate and the spec's threshold, p50/p95 latency of an invoke,
the share of invokes that needed more than one model call (a repair), and the share whose
output validates against the feature's output schema (checked here again with jsonschema).

    .venv/bin/python benchmarks/features.py [--features triage,extract] [--url URL --key KEY]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import yaml
from support import bench_key, free_port, serve_gemma, stop

from modelhost.registry.gates import matches

SPECS = Path(__file__).resolve().parent.parent / "examples" / "support-desk" / "features"
ORDER = ("triage", "extract", "summarise", "draft-reply")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Result:
    """What one feature's golden run measured."""

    name: str
    threshold: float
    gate: float | None = None
    seconds: list[float] = field(default_factory=list)
    passed: int = 0
    repaired: int = 0
    valid: int = 0

    def row(self) -> str:
        """One line of the printed table."""
        n = len(self.seconds)
        gate = f"{self.gate:.2f}" if self.gate is not None else "-"
        return (
            f"{self.name:<12} {n:>5} {self.passed / n:>9.2f} {self.threshold:>9.2f} {gate:>6} "
            f"{_pct(self.seconds, 0.5):>7.2f} {_pct(self.seconds, 0.95):>7.2f} "
            f"{self.repaired / n:>8.2f} {self.valid / n:>7.2f}"
        )


def _deploy(client: httpx.Client, spec: dict[str, Any]) -> float | None:
    """Push and promote ``spec``; the promotion gate's golden accuracy."""
    pushed = client.post("/v1/features", json=spec)
    pushed.raise_for_status()
    name, version = spec["name"], spec["version"]
    promoted = client.post(f"/v1/models/{name}/deployment/promote", json={"version": version})
    if promoted.status_code != 200:
        message = promoted.json()["error"]["message"]
        print(f"{name}: promotion refused: {message.splitlines()[0]}", file=sys.stderr)
        found = re.search(r"golden: accuracy ([0-9.]+)", message)
        return float(found.group(1)) if found else None
    golden = promoted.json().get("gates", {}).get("gates", {}).get("golden", {})
    accuracy = golden.get("numbers", {}).get("accuracy")
    return float(accuracy) if accuracy is not None else None


def _golden(client: httpx.Client, spec: dict[str, Any]) -> Result:
    """Every golden case through the invoke route, one request each."""
    result = Result(spec["name"], float(spec["golden"]["threshold"]))
    validator = jsonschema.Draft202012Validator(spec["output_schema"])
    for case in spec["golden"]["cases"]:
        started = time.perf_counter()
        answer = client.post(
            f"/v1/features/{spec['name']}/invoke",
            json={"input": case["input"], "version": spec["version"]},
            headers={"Cache-Control": "no-cache"},
        )
        result.seconds.append(time.perf_counter() - started)
        if answer.status_code != 200:
            continue
        body = answer.json()
        output = body["output"]
        result.valid += validator.is_valid(output)
        result.passed += matches(output, case["expected"], "subset")
        result.repaired += any(attempts > 1 for attempts in body.get("attempts") or [])
    return result


def run(url: str, key: str, names: list[str]) -> list[Result]:
    """Deploy and measure each named feature against the server at ``url``."""
    results = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=900) as client:
        for name in names:
            spec = yaml.safe_load((SPECS / f"{name}.yaml").read_text())
            gate = _deploy(client, spec)
            result = _golden(client, spec)
            result.gate = gate
            results.append(result)
            print(result.row(), flush=True)
    return results


def main() -> None:
    """Parse arguments, start a server unless given one, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default=",".join(ORDER), help="comma-separated names")
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--key", help="an admin API key of --url")
    args = parser.parse_args()
    names = [n for n in args.features.split(",") if n]
    print("gemma-270m (Q4_K_M, llama.cpp, 2 threads); one invoke per golden case, no cache")
    header = "feature      cases pass_rate threshold   gate     p50     p95 repaired   valid"
    print(header)
    started = time.perf_counter()
    if args.url:
        results = run(args.url, args.key or "", names)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            home = Path(scratch)
            port = free_port()
            proc = serve_gemma(home, port)
            try:
                key = bench_key(home, "features", scopes=["admin"])
                results = run(f"http://127.0.0.1:{port}", key, names)
            finally:
                stop(proc)
    print(
        f"({sum(len(r.seconds) for r in results)} invokes, {time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
