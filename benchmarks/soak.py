"""Does the server's memory stay flat? A mixed load for minutes, RSS sampled as it runs.

Starts ``modelhost serve`` with the demo models (iris, minilm, gemma-270m) in a fresh home,
then keeps ``--clients`` concurrent callers busy with a mix of REST v1 predicts (iris), v2
infers (iris), embeddings (minilm), short chat completions (gemma-270m, 8 tokens) and 404s.
Every ``--every`` seconds it prints the elapsed time, the requests answered so far and the
server's resident memory (``VmRSS`` of the server process and its children), and at the end
the growth after warm-up: the RSS at the end of ``--warmup`` against the last sample, and the
peak.

    .venv/bin/python benchmarks/soak.py --minutes 10 --warmup 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.support import admin_key, free_port, serve, stop  # noqa: E402

ROW = [5.1, 3.5, 1.4, 0.2]


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, in MiB (from /proc)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        pending.extend(int(child) for child in children)
    return total / 1024


def requests() -> list[tuple[str, str, dict[str, object]]]:
    """One round of the mix: (method, path, JSON body)."""
    return [
        ("POST", "/v1/models/iris/predict", {"inputs": [ROW, [6.2, 2.9, 4.3, 1.3]]}),
        (
            "POST",
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]},
        ),
        ("POST", "/v1/embeddings", {"model": "minilm", "input": ["a soak test", "of memory"]}),
        ("POST", "/v1/models/iris/predict", {"inputs": [ROW] * 32}),
        ("POST", "/v1/models/nosuch/predict", {"inputs": [ROW]}),
        (
            "POST",
            "/v1/chat/completions",
            {
                "model": "gemma-270m",
                "messages": [{"role": "user", "content": f"Say hello {time.time_ns()}"}],
                "max_tokens": 8,
            },
        ),
    ]


async def client(
    http: httpx.AsyncClient, stop_at: float, counts: dict[str, int], chat_every: int
) -> None:
    """Send the mix until ``stop_at``; a chat completion only every ``chat_every`` rounds."""
    rounds = 0
    while time.monotonic() < stop_at:
        rounds += 1
        for method, path, body in requests():
            if path == "/v1/chat/completions" and rounds % chat_every:
                continue
            try:
                answer = await http.request(method, path, json=body)
                counts[str(answer.status_code)] = counts.get(str(answer.status_code), 0) + 1
            except httpx.HTTPError as exc:
                counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1


async def drive(args: argparse.Namespace, url: str, key: str, pid: int) -> None:
    started = time.monotonic()
    stop_at = started + args.minutes * 60
    counts: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {key}"}
    samples: list[tuple[float, int, float]] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
        tasks = [
            asyncio.create_task(client(http, stop_at, counts, args.chat_every))
            for _ in range(args.clients)
        ]
        print(f"{'minute':>7} {'requests':>9} {'rss MiB':>8}")
        while time.monotonic() < stop_at:
            await asyncio.sleep(min(args.every, max(0.0, stop_at - time.monotonic())))
            elapsed = (time.monotonic() - started) / 60
            answered = sum(counts.values())
            samples.append((elapsed, answered, rss_mib(pid)))
            print(f"{elapsed:7.2f} {answered:9d} {samples[-1][2]:8.0f}", flush=True)
        await asyncio.gather(*tasks)
    after_warmup = [s for s in samples if s[0] >= args.warmup]
    print(f"statuses: {dict(sorted(counts.items()))}")
    if after_warmup:
        first, last = after_warmup[0], after_warmup[-1]
        peak = max(s[2] for s in after_warmup)
        print(
            f"after warm-up ({args.warmup:g} min): {first[2]:.0f} MiB at {first[0]:.1f} min -> "
            f"{last[2]:.0f} MiB at {last[0]:.1f} min ({last[2] - first[2]:+.0f} MiB over "
            f"{last[1] - first[1]} requests); peak {peak:.0f} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2, help="minutes not judged")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--every", type=float, default=30, help="seconds between samples")
    parser.add_argument("--chat-every", type=int, default=10, help="rounds per chat call")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        port = free_port()
        env = {**os.environ, "MODELHOST_HOME": str(home)}
        proc = serve(env, port)
        try:
            asyncio.run(drive(args, f"http://127.0.0.1:{port}", admin_key(home), proc.pid))
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
