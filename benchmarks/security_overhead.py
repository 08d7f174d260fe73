"""Added latency of the security steps per request, in-process through the real DataPlane.

Runs the same iris predict (1 row) and the same echo-model predict through a DataPlane without
access control and through one with the full default security path: principal + scope check,
rate limit, token quota and budget counters (memory storage), and — for the guarded echo model —
prompt-injection heuristics and PII output redaction. Prints p50/p99 of each and the difference.

    .venv/bin/python benchmarks/security_overhead.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import yaml

from modelhost.app import build_services
from modelhost.config import Settings
from modelhost.inference import InferenceRequest
from modelhost.registry import Stage
from modelhost.security.keys import Principal
from modelhost.serving.dataplane import DataPlane

FLOWER = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
TEXT = "Please write to jane.doe@example.com about order 1234; the weather is fine today."


def _echo(root: Path) -> Path:
    directory = root / "echo"
    directory.mkdir(parents=True)
    (directory / "echo_model.py").write_text(
        textwrap.dedent(
            """
            class Echo:
                def __init__(self, path):
                    pass

                def predict(self, inputs, parameters):
                    return [{"text": item["text"]} for item in inputs]
            """
        )
    )
    manifest = {
        "name": "echo",
        "version": "1.0.0",
        "runtime": "python",
        "entrypoint": "echo_model:Echo",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "guards": {"output": {}, "prompt_injection": {"action": "flag"}},
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return directory


async def _measure(plane: DataPlane, model: str, item: Any, n: int, who: Principal) -> list[float]:
    out = []
    for i in range(n + 200):
        request = InferenceRequest(model=model, inputs=[item], principal=who)
        t0 = time.perf_counter()
        await plane.infer(request)
        if i >= 200:
            out.append(time.perf_counter() - t0)
    return out


def _p(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e6, ordered[int(len(ordered) * 0.99)] * 1e6


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = Settings(
            home=home, demo={"models": ["iris"]}, guards={"injection_embedding_model": None}
        )
        services = build_services(settings)
        from modelhost.demo import ensure_demo

        ensure_demo(services.registry, settings)
        services.registry.push(_echo(home / "src"), actor="bench")
        services.registry.set_stage("echo", "1.0.0", Stage.PRODUCTION, actor="bench")
        await services.manager.refresh()
        await services.manager.wait_loaded()
        who = Principal(
            tenant="bench",
            subject="b",
            scopes=frozenset({"predict"}),
            rpm=10**9,
            tpm=10**9,
            budget=10**6,
        )
        secured = services.plane
        bare = DataPlane(
            services.manager,
            threads=settings.inference.threads,
            default_timeout_s=30,
            default_max_request_bytes=1 << 20,
        )
        rows = []
        for model, item in (("iris", FLOWER), ("echo", {"text": TEXT})):
            off = _p(await _measure(bare, model, item, n, who))
            on = _p(await _measure(secured, model, item, n, who))
            rows.append((model, off, on))
        await services.manager.close()
        await services.access.limiter.close()
        bare.close()
        secured.close()
    print(f"DataPlane.infer in-process, 1 input, {n} sequential calls (µs)")
    print(
        f"{'model':<8} {'plain p50':>10} {'secured p50':>12} {'added p50':>10} "
        f"{'plain p99':>10} {'secured p99':>12}"
    )
    for model, off, on in rows:
        print(
            f"{model:<8} {off[0]:>10.1f} {on[0]:>12.1f} {on[0] - off[0]:>10.1f} "
            f"{off[1]:>10.1f} {on[1]:>12.1f}"
        )
    print("iris: scope + rate/token/budget counters; echo: + injection heuristics + PII guard")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    asyncio.run(main(parser.parse_args().requests))
