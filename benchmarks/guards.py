"""Latency of the output guards on typical LLM outputs.

Prints p50/p99 per call of ``OutputGuard.apply`` on a ~200-character and a ~2000-character
answer (prose with a few e-mail addresses, phone and card numbers, and number-like hard
negatives), of ``apply_json`` on a v1-style result, and of streaming the 2000-character answer
through a ``StreamRedactor`` in 4-character pieces (the whole stream, and per piece). The
default guard redacts every kind and checks a few blocked terms and one blocked pattern.

    .venv/bin/python benchmarks/guards.py [--repeat 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from modelhost.security.guards import OnBlocked, OutputGuard, OutputGuardConfig

PARAGRAPH = (
    "Thanks for reaching out. I have updated the ticket (order 1048576, build 2.14.3) and "
    "copied jane.doe@example.com; she can be reached at +44 20 7946 0958 until 17:30 on "
    "2024-06-11. The refund of 129.99 EUR goes to card 4111 1111 1111 1111, not to the old "
    "IBAN. Let me know if anything else is needed, and have a great day. "
)


def _text(size: int) -> str:
    return (PARAGRAPH * (size // len(PARAGRAPH) + 1))[:size]


def _percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


def _time(call: Callable[[], object], repeat: int) -> list[float]:
    for _ in range(min(repeat, 50)):  # warm-up
        call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def _stream(guard: OutputGuard, text: str, piece: int) -> str:
    redactor = guard.stream()
    out = [redactor.feed(text[i : i + piece]) for i in range(0, len(text), piece)]
    out.append(redactor.finish())
    return "".join(out)


def _report(name: str, samples: list[float], per: int = 1) -> None:
    p50, p99 = _percentiles(samples)
    print(f"{name:<46} p50 {p50 * 1e6 / per:9.1f} µs   p99 {p99 * 1e6 / per:9.1f} µs")


def main() -> None:
    """Run every measurement and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    config = OutputGuardConfig(
        blocked_terms=["project falcon", "internal only", "do not share"],
        blocked_patterns=[r"\bACME-[0-9]{4,8}\b"],
        on_blocked=OnBlocked.REDACT,
    )
    guard = OutputGuard(config)
    pii_only = OutputGuard(OutputGuardConfig())
    short, long = _text(200), _text(2000)
    assert _stream(guard, long, 4) == guard.apply(long).text
    print(f"redactions in the 2000-char text: {guard.apply(long).redactions}")
    _report("apply, 200 chars", _time(lambda: guard.apply(short), args.repeat))
    _report("apply, 2000 chars", _time(lambda: guard.apply(long), args.repeat))
    _report("apply, 2000 chars, PII only", _time(lambda: pii_only.apply(long), args.repeat))
    result = {"results": [{"text": long, "finish_reason": "stop", "tokens": 512}]}
    _report(
        "apply_json, one 2000-char result", _time(lambda: guard.apply_json(result), args.repeat)
    )
    streams = _time(lambda: _stream(guard, long, 4), max(args.repeat // 10, 50))
    _report("stream 2000 chars in 4-char pieces (whole)", streams)
    _report("stream 2000 chars in 4-char pieces (per piece)", streams, per=len(long) // 4)
    apply_p50 = _percentiles(_time(lambda: guard.apply(long), args.repeat))[0]
    print(f"stream / apply (p50, 2000 chars): {_percentiles(streams)[0] / apply_p50:.1f}x")


if __name__ == "__main__":
    main()
