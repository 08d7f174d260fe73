"""Does the server's memory stay flat? A mixed load for minutes, RSS sampled as it runs.

Starts ``modelhost serve`` with the demo models (iris, minilm, gemma-270m) in a fresh home,
then keeps ``--clients`` concurrent callers busy with a mix of REST v1 predicts (iris), v2
infers (iris), embeddings (minilm), short chat completions (gemma-270m, 8 tokens) and 404s.
Every ``--every`` seconds it prints the elapsed time, the requests answered so far and the
server's resident memory (``VmRSS`` of the server process and its children), and at the end
the growth after warm-up: the RSS at the end of ``--warmup`` against the last sample, and the
peak. ``--mix`` keeps only some kinds of request (to find which one grows); ``--vary-embeddings``
sends embedding texts of random lengths (1 to ~250 word pieces), so they miss the exact cache
and reach the model at many shapes; ``--idle`` keeps sampling for that many seconds after the
load stops (does memory come back?).

    .venv/bin/python benchmarks/soak.py --minutes 10 --warmup 2
    .venv/bin/python benchmarks/soak.py --minutes 3 --mix embed --vary-embeddings --idle 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.support import admin_key, free_port, serve, stop  # noqa: E402

ROW = [5.1, 3.5, 1.4, 0.2]
#: The kinds of request in one round of the mix, in order (``--mix`` picks some).
KINDS = ("v1", "v2", "embed", "batch", "404", "chat")
_WORDS = [
    "memory",
    "soak",
    "arena",
    "model",
    "server",
    "request",
    "embedding",
    "token",
    "batch",
    "sequence",
]


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of ``pid`` and its descendants, in MiB (from /proc): ``rss`` in all,
    ``anon`` (heap, arenas: what a leak grows) and ``file`` (mapped files, e.g. GGUF weights)."""
    fields = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    total = dict.fromkeys(fields.values(), 0.0)
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            name = line.split(maxsplit=1)[0] if line else ""
            if name in fields:
                total[fields[name]] += int(line.split()[1]) / 1024
        pending.extend(int(child) for child in children)
    return total


def _texts(vary: bool) -> list[str]:
    if not vary:
        return ["a soak test", "of memory"]
    return [
        " ".join(random.choices(_WORDS, k=random.randint(1, 250)))
        for _ in range(random.randint(1, 8))
    ]


def requests(vary_embeddings: bool = False) -> list[tuple[str, str, str, dict[str, object]]]:
    """One round of the mix: (kind, method, path, JSON body)."""
    return [
        ("v1", "POST", "/v1/models/iris/predict", {"inputs": [ROW, [6.2, 2.9, 4.3, 1.3]]}),
        (
            "v2",
            "POST",
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]},
        ),
        (
            "embed",
            "POST",
            "/v1/embeddings",
            {"model": "minilm", "input": _texts(vary_embeddings)},
        ),
        ("batch", "POST", "/v1/models/iris/predict", {"inputs": [ROW] * 32}),
        ("404", "POST", "/v1/models/nosuch/predict", {"inputs": [ROW]}),
        (
            "chat",
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
    http: httpx.AsyncClient, stop_at: float, counts: dict[str, int], args: argparse.Namespace
) -> None:
    """Send the mix until ``stop_at``; a chat completion only every ``chat_every`` rounds
    (every round when the mix is chat alone)."""
    chat_every = args.chat_every if args.mix - {"chat"} else 1
    rounds = 0
    while time.monotonic() < stop_at:
        rounds += 1
        for kind, method, path, body in requests(args.vary_embeddings):
            if kind not in args.mix or (kind == "chat" and rounds % chat_every):
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
            asyncio.create_task(client(http, stop_at, counts, args)) for _ in range(args.clients)
        ]
        print(f"{'minute':>7} {'requests':>9} {'rss MiB':>8} {'anon':>6} {'file':>6}")
        while time.monotonic() < stop_at:
            await asyncio.sleep(min(args.every, max(0.0, stop_at - time.monotonic())))
            elapsed = (time.monotonic() - started) / 60
            answered = sum(counts.values())
            memory = memory_mib(pid)
            samples.append((elapsed, answered, memory["rss"]))
            print(
                f"{elapsed:7.2f} {answered:9d} {memory['rss']:8.0f} {memory['anon']:6.0f} "
                f"{memory['file']:6.0f}",
                flush=True,
            )
        await asyncio.gather(*tasks)
    idle_until = time.monotonic() + args.idle
    while time.monotonic() < idle_until:
        await asyncio.sleep(min(args.every, max(0.0, idle_until - time.monotonic())))
        elapsed = (time.monotonic() - started) / 60
        memory = memory_mib(pid)
        print(
            f"{elapsed:7.2f} {'idle':>9} {memory['rss']:8.0f} {memory['anon']:6.0f} "
            f"{memory['file']:6.0f}",
            flush=True,
        )
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
    parser.add_argument(
        "--mix",
        type=lambda text: set(text.split(",")),
        default=set(KINDS),
        help=f"comma-separated kinds of request to send, of {','.join(KINDS)} (default: all)",
    )
    parser.add_argument(
        "--vary-embeddings",
        action="store_true",
        help="embedding texts of random lengths (exact-cache misses, many shapes)",
    )
    parser.add_argument(
        "--idle", type=float, default=0, help="seconds to keep sampling after the load"
    )
    args = parser.parse_args()
    if unknown := args.mix - set(KINDS):
        parser.error(f"--mix: unknown kinds {sorted(unknown)} (of {','.join(KINDS)})")
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
