"""What reading stored features adds to a request: the same model served twice by one server.

``scorer`` reads its features from a Feast repository (the caller sends ``customer_id`` and
``amount``; one online read per request fetches the stored values and runs the on-demand
transformation); ``plain`` is the same scikit-learn model whose callers send the five values
themselves. Requests alternate between the two on one keep-alive connection, so machine noise
hits both; the difference of their p50 latencies is what the feature store adds, at batch 1 and
batch 32. Run with the SQLite online store and, when Redis answers, with Redis.

    .venv/bin/python benchmarks/featurestore.py [--requests 400] [--no-redis]

The repository and model are the ones the tests use (tests/featurestore/builder.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from support import bench_key, free_port, pin_to_cpu0, serve, stop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.featurestore.builder import (
    CUSTOMERS,
    DAYS,
    stats_at,
    write_model,
    write_repo,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


def _plain(scorer: Path) -> Path:
    """The same model without a feature store: callers send all five values."""
    plain = scorer.parent / "plain-1.0.0"
    plain.mkdir()
    (plain / "model.joblib").write_bytes((scorer / "model.joblib").read_bytes())
    manifest = yaml.safe_load((scorer / "modelhost.yaml").read_text())
    manifest["name"] = "plain"
    del manifest["feature_store"]
    names = manifest["options"]["feature_names"]
    manifest["input_schema"] = {
        "type": "object",
        "properties": {"customer_id": {"type": "integer"}} | {n: {"type": "number"} for n in names},
        "required": names,
    }
    (plain / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return plain


def _cli(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "modelhost.cli", *args], env=env, check=True)


def _rows(batch: int, offset: int) -> list[dict[str, Any]]:
    return [
        {"customer_id": 1 + (offset + i) % CUSTOMERS, "amount": 20.0 + (offset + i) % 90}
        for i in range(batch)
    ]


def _measure(
    client: httpx.Client, stored: dict[int, dict[str, Any]], batch: int, requests: int
) -> dict[str, list[float]]:
    """Alternate scorer / plain requests; seconds per request of each."""
    times: dict[str, list[float]] = {"scorer": [], "plain": []}
    for n in range(requests):
        rows = _rows(batch, n)
        full = [{**row, **stored[row["customer_id"]], "amount_ratio": 0.0} for row in rows]
        for row in full:
            row["amount_ratio"] = row["amount"] / row["avg_amount_7d"]
        for model, inputs in (
            (("scorer", rows), ("plain", full))
            if n % 2
            else (
                ("plain", full),
                ("scorer", rows),
            )
        ):
            started = time.perf_counter()
            answer = client.post(f"/v1/models/{model}/predict", json={"inputs": inputs})
            times[model].append(time.perf_counter() - started)
            if answer.status_code != 200:
                raise RuntimeError(f"{model}: {answer.status_code} {answer.text}")
    return times


def _stored() -> dict[int, dict[str, Any]]:
    """The newest stored values of every customer (what ``plain``'s callers send)."""
    return {
        c: dict(zip(("avg_amount_7d", "txn_count_7d"), stats_at(c, DAYS - 1), strict=True))
        for c in range(1, CUSTOMERS + 1)
    }


def run(store: str, requests: int) -> list[tuple[str, int, float, float, float, float]]:
    """Serve both models with ``store`` (sqlite or redis) and measure batch 1 and 32."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"
        env = {
            **os.environ,
            "MODELHOST_HOME": str(home),
            "MODELHOST_DEMO__ENABLED": "false",
            "MODELHOST_REDIS_URL": REDIS_URL if store == "redis" else "",
            "MODELHOST_CACHE__ENABLED": "false",
        }
        repo = write_repo(root, f"bench{uuid.uuid4().hex[:8]}")
        _cli(env, "featurestore", "apply", str(repo.path))
        _cli(env, "featurestore", "materialize", "--repo", str(repo.path))
        scorer = write_model(root, repo.path)
        for directory in (scorer, _plain(scorer)):
            _cli(env, "models", "push", str(directory), "--stage", "production")
        key = bench_key(home, "bench")
        port = free_port()
        proc = serve(env, port, pin_to_cpu0())
        rows: list[tuple[str, int, float, float, float, float]] = []
        try:
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60
            ) as client:
                stored = _stored()
                _measure(client, stored, 1, 30)  # warm-up: the store opens on first use
                for batch in (1, 32):
                    times = _measure(client, stored, batch, requests)
                    with_fs = statistics.median(times["scorer"]) * 1000
                    without = statistics.median(times["plain"]) * 1000
                    p99 = statistics.quantiles(times["scorer"], n=100)[98] * 1000
                    rows.append((store, batch, without, with_fs, with_fs - without, p99))
        finally:
            stop(proc)
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400, help="per model and batch size")
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    stores = ["sqlite"] if args.no_redis else ["sqlite", "redis"]
    results = [row for store in stores for row in run(store, args.requests)]
    print(f"\n{args.requests} requests per model and batch size, alternating, one connection")
    print("| online store | batch | p50 plain | p50 with feature store | added p50 | p99 with |")
    print("|---|---|---|---|---|---|")
    for store, batch, without, with_fs, added, p99 in results:
        print(
            f"| {store} | {batch} | {without:.2f} ms | {with_fs:.2f} ms | "
            f"**{added:+.2f} ms** | {p99:.2f} ms |"
        )


if __name__ == "__main__":
    main()
