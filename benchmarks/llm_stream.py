"""LLM streaming through ``/v1/chat/completions`` vs llama-cpp-python called in-process.

Same GGUF file, same chat prompt (the Gemma chat format), same parameters (greedy, fixed
``max_tokens``), 2 threads each; rounds alternate between the two so drift hits both. Prints
time to first token and tokens per second (medians over rounds) and their ratio. The server runs
its full default path: API key, limits, injection screening, output guards on the stream.

    .venv/bin/python benchmarks/llm_stream.py [--rounds 5] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from openai import OpenAI
from support import bench_key, free_port, serve_gemma, stop

MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def _in_process(llm: Any, tokens: list[int], max_tokens: int) -> tuple[float, int, float]:
    """Time to first piece, tokens generated, total seconds (one piece per token here)."""
    started = time.perf_counter()
    first = 0.0
    count = 0
    for chunk in llm.create_completion(
        prompt=tokens, max_tokens=max_tokens, temperature=0.0, stream=True, stop=["<end_of_turn>"]
    ):
        if chunk["choices"][0]["text"]:
            count += 1
            if count == 1:
                first = time.perf_counter() - started
    return first, count, time.perf_counter() - started


def _http(client: OpenAI, max_tokens: int) -> tuple[float, int, float]:
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    stream = client.chat.completions.create(
        model="gemma-270m",
        messages=MESSAGES,
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and not first:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return first, tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import format_gemma

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        port = free_port()
        proc = serve_gemma(home, port)
        try:
            client = OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1",
                api_key=bench_key(home, "stream"),
                max_retries=0,
            )
            gguf = next(home.glob("artifacts/versions/gemma-270m/*/model.gguf"))
            llm = Llama(
                model_path=str(gguf), n_ctx=2048, n_threads=2, n_threads_batch=2, verbose=False
            )
            prompt = format_gemma(messages=MESSAGES).prompt
            tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
            rows: dict[str, list[tuple[float, int, float]]] = {"in-process": [], "http": []}
            _in_process(llm, tokens, 8)
            _http(client, 8)
            for _ in range(args.rounds):
                rows["in-process"].append(_in_process(llm, tokens, args.max_tokens))
                rows["http"].append(_http(client, args.max_tokens))
        finally:
            stop(proc)
    summary = {}
    for name, runs in rows.items():
        ttft = statistics.median(r[0] for r in runs) * 1000
        rate = statistics.median((r[1] - 1) / (r[2] - r[0]) for r in runs if r[1] > 1)
        summary[name] = (ttft, rate, statistics.median(r[1] for r in runs))
        print(
            f"{name:<11} TTFT p50 {ttft:7.1f} ms   {rate:6.1f} tokens/s   "
            f"({summary[name][2]:.0f} pieces, {args.rounds} rounds)"
        )
    base, http = summary["in-process"], summary["http"]
    print(
        f"HTTP/in-process tokens/s: {http[1] / base[1]:.3f}   TTFT difference: "
        f"{http[0] - base[0]:+.1f} ms"
    )


if __name__ == "__main__":
    main()
