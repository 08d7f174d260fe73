"""Serve minilm with sentence-transformers (torch) or as an ONNX export? Measure both.

Builds the ``minilm`` demo directory, loads it with sentence-transformers (CPU, offline), exports
the underlying transformer (``input_ids``, ``attention_mask``, ``token_type_ids`` ->
``last_hidden_state``) with ``torch.onnx.export`` and runs it with onnxruntime, pooling (mean
over the attention mask) and L2-normalising in numpy. Checks the two agree (cosine) on ~50
varied sentences, then times both end to end (tokenise -> normalised vectors) at batch 1 (a
short and a ~60-word sentence) and batch 32, interleaving the backends round by round; prints
the median over rounds of each round's p50/p99 and of each round's torch/onnx p50 ratio, plus
export and load times.

    .venv/bin/python benchmarks/embeddings_backend.py [--rounds 7] [--iters 200] [--threads 2]

Runs offline; nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SHORT = "How do I reset my password?"
LONG = (
    "The quarterly report shows that revenue from the European market grew by twelve percent, "
    "driven mostly by new enterprise contracts in Germany and the Netherlands, while costs rose "
    "only slightly because the team moved its batch workloads to cheaper spot instances and "
    "renegotiated two of its largest software licences before the end of the financial year, "
    "leaving a comfortable margin for hiring in the spring."
)

_SUBJECTS = [
    "The cat",
    "A retired engineer from Lyon",
    "Our payment service",
    "The new vaccine",
    "Quantum error correction",
    "My grandmother's recipe for apple pie",
    "The committee",
    "This GPU kernel",
    "A small fishing village",
    "The central bank",
]
_PREDICATES = [
    "sleeps on the warm windowsill all afternoon.",
    "finally published the memoir he had been writing for thirty years.",
    "returns HTTP 503 whenever the upstream database is under heavy load.",
    "showed ninety-one percent efficacy in the phase three trial.",
    "remains the main obstacle to building a useful fault-tolerant computer.",
    "calls for twice as much cinnamon as anyone would expect.",
    "postponed the vote until the auditors have finished their review of the accounts.",
    "is memory-bound, so fusing the two reductions roughly halves its runtime on large inputs.",
    "depends on tourism in summer and on the sea in winter.",
    "raised interest rates by a quarter point, citing persistent inflation.",
]


def sentences() -> list[str]:
    """About fifty varied sentences (lengths from 1 word to ~300 word pieces) for the check."""
    n = len(_PREDICATES)
    out = [f"{s} {_PREDICATES[(i + 3 * k) % n]}" for k in range(4) for i, s in enumerate(_SUBJECTS)]
    out += [
        "Hello",
        "?",
        "ok",
        SHORT,
        LONG,
        "Ünïcödé, émojis 🙂 and CJK 日本語 text mixed together.",
        "def f(x): return x ** 2  # python code",
        " ".join([LONG] * 5),  # longer than 256 word pieces: truncated
        "numbers 3.14159 2.71828 1.41421 and dates 2024-02-29",
        "   leading and trailing spaces   ",
        "UPPER CASE SHOUTING ABOUT THE WEATHER TODAY",
        "a " * 40,
        "The quick brown fox jumps over the lazy dog.",
        "Semantic search finds documents by meaning rather than by exact keywords.",
        "I'd like to cancel my subscription, please.",
        "Totally unrelated: the mitochondria is the powerhouse of the cell.",
    ]
    return out


class OnnxEncoder:
    """Tokenise with the model's tokenizer, run the ONNX graph, mean-pool and L2-normalise."""

    def __init__(self, path: Path, tokenizer: Any, max_length: int, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.inputs = {i.name for i in self.session.get_inputs()}

    def encode(self, texts: list[str]) -> np.ndarray:
        """Normalised float32 embeddings, one row per text."""
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        feeds = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in self.inputs}
        if "token_type_ids" in self.inputs and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        mask = feeds["attention_mask"][:, :, None].astype(np.float32)
        summed = (hidden * mask).sum(axis=1)
        pooled = summed / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.clip(norms, 1e-12, None), dtype=np.float32)


def export(st_model: Any, target: Path, opset: int) -> None:
    """Export the transformer inside ``st_model`` to ``target`` (legacy TorchScript exporter)."""
    import torch

    bert = st_model[0].auto_model.eval()

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                return_dict=True,
            )
            return out.last_hidden_state

    enc = st_model.tokenizer(["a sample sentence", "another one, a bit longer"], padding=True)
    args = tuple(
        torch.tensor(enc[k], dtype=torch.int64)
        for k in ("input_ids", "attention_mask", "token_type_ids")
    )
    seq = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            Wrapper().eval(),
            args,
            str(target),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": seq,
                "attention_mask": seq,
                "token_type_ids": seq,
                "last_hidden_state": seq,
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _timed(fn: Callable[[], Any], iters: int) -> list[float]:
    for _ in range(max(3, iters // 20)):  # warm-up
        fn()
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    """Build, load, export, check, time; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=200, help="calls per round at batch 1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from modelhost.demo import build_minilm

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads {args.threads}, cores {os.cpu_count()}, "
        f"load avg {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        build_minilm(root)
        model_dir = root / "minilm-1.0.0" / "model"
        print(f"build_minilm: {time.perf_counter() - started:.2f} s")

        started = time.perf_counter()
        st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        st_load = time.perf_counter() - started
        print(f"load sentence-transformers: {st_load:.2f} s (max_seq_length {st.max_seq_length})")

        onnx_path = root / "model.onnx"
        started = time.perf_counter()
        export(st, onnx_path, args.opset)
        print(
            f"export to ONNX (opset {args.opset}): {time.perf_counter() - started:.2f} s, "
            f"{onnx_path.stat().st_size / 1e6:.1f} MB"
        )

        from transformers import AutoTokenizer

        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        ox = OnnxEncoder(onnx_path, tokenizer, int(st.max_seq_length or 256), args.threads)
        print(f"load onnxruntime session + tokenizer: {time.perf_counter() - started:.2f} s")

        def st_encode(texts: list[str]) -> np.ndarray:
            return np.asarray(
                st.encode(
                    texts,
                    batch_size=32,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            )

        # Agreement.
        check = sentences()
        a, b = st_encode(check), ox.encode(check)
        cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        batch1 = np.stack([ox.encode([t])[0] for t in check])
        cos1 = (a * batch1).sum(axis=1)
        print(
            f"agreement on {len(check)} sentences: min cosine {cos.min():.7f} (batched), "
            f"{cos1.min():.7f} (one at a time); max |diff| {np.abs(a - b).max():.2e}"
        )
        if cos.min() < 0.9999 or cos1.min() < 0.9999:
            raise SystemExit("ONNX embeddings disagree with sentence-transformers")

        batch32 = [check[i % len(check)] for i in range(7, 7 + 32)]
        cases = {"batch 1 short": [SHORT], "batch 1 ~60 words": [LONG], "batch 32": batch32}
        backends: dict[str, Callable[[list[str]], np.ndarray]] = {
            "torch": st_encode,
            "onnx": ox.encode,
        }
        print(f"LONG has {len(LONG.split())} words, {len(tokenizer(LONG)['input_ids'])} tokens")
        stats: dict[tuple[str, str], dict[str, list[float]]] = {}
        for r in range(args.rounds):
            for case, texts in cases.items():
                iters = args.iters if len(texts) == 1 else max(10, args.iters // 8)
                order = list(backends) if r % 2 == 0 else list(reversed(backends))
                for name in order:
                    times = _timed(functools.partial(backends[name], texts), iters)
                    entry = stats.setdefault((case, name), {"p50": [], "p99": []})
                    entry["p50"].append(_p(times, 0.5))
                    entry["p99"].append(_p(times, 0.99))
            print(f"  round {r + 1}/{args.rounds} done (load avg {os.getloadavg()[0]:.2f})")

        print(f"\nmedians over {args.rounds} interleaved rounds (ms, end to end incl. tokenising)")
        print(
            f"{'case':<20}{'torch p50':>10}{'p99':>8}{'onnx p50':>10}{'p99':>8}{'torch/onnx':>12}"
        )
        for case in cases:
            t, o = stats[(case, "torch")], stats[(case, "onnx")]
            ratios = [x / y for x, y in zip(t["p50"], o["p50"], strict=True)]
            print(
                f"{case:<20}{statistics.median(t['p50']):>10.2f}{statistics.median(t['p99']):>8.2f}"
                f"{statistics.median(o['p50']):>10.2f}{statistics.median(o['p99']):>8.2f}"
                f"{statistics.median(ratios):>11.2f}x  "
                f"(per-round ratios {min(ratios):.2f}-{max(ratios):.2f})"
            )


if __name__ == "__main__":
    main()
