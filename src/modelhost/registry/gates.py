"""Promotion gates: what a version must pass, on the loaded model in this server, before it
becomes production.

* **load**: the candidate loads (a version that does not load cannot serve; ``--force``
  never skips this one).
* **warmup**: it answers a first request (``gates.warmup`` inputs, else the golden set's
  first input, else the input schema's ``examples``), so its first live callers do not pay
  for lazy initialisation.
* **golden**: it meets the thresholds of its golden set (registered, else shipped; see
  :mod:`modelhost.registry.golden`), run in batches on the loaded candidate through a
  :class:`Predict` (the promoter's: the data plane's validation and
  :meth:`~modelhost.serving.dataplane.DataPlane.predict`, like live traffic).
* **compatibility**: its input and output schemas do not break callers of the current
  production version unless the MAJOR version grows (:mod:`modelhost.registry.compat`).

A version with no golden set, or a model with no production version yet, passes the gate
concerned with a note saying it was not evaluated. The :class:`GateReport` is JSON-ready (the
body of a refused promotion, the history entry) and readable (:meth:`GateReport.text`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelhost.errors import Conflict, describe
from modelhost.registry.compat import check_promotion, compare, major
from modelhost.registry.golden import GoldenSet
from modelhost.registry.service import VersionInfo

#: The gates, in the order they run and are reported.
GATES = ("load", "warmup", "golden", "compatibility")


@dataclass(slots=True)
class GateResult:
    """The outcome of one gate."""

    gate: str
    passed: bool
    summary: str
    """One sentence: what was found, or why the gate was not evaluated."""
    evaluated: bool = True
    """False when there was nothing to evaluate (no golden set, no production version)."""
    numbers: dict[str, Any] = field(default_factory=dict)
    """Measured values and thresholds (items, accuracy, mae, rmse, seconds, ...)."""
    failures: list[str] = field(default_factory=list)
    """Each threshold or rule that failed, as a sentence."""
    examples: list[dict[str, Any]] = field(default_factory=list)
    """Some golden items answered wrongly: index, input, expected, got or error."""
    diff: list[str] = field(default_factory=list)
    """Schema changes against production, one line each, breaking ones marked."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "passed": self.passed,
            "evaluated": self.evaluated,
            "summary": self.summary,
            "numbers": self.numbers,
            "failures": self.failures,
            "examples": self.examples,
            "diff": self.diff,
        }


@dataclass(slots=True)
class GateReport:
    """Every gate's outcome for one candidate."""

    model: str
    version: str
    against: str | None
    """The production version the candidate was compared with (None: there was none)."""
    results: list[GateResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every gate passed."""
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[str]:
        """The names of the gates that failed."""
        return [r.gate for r in self.results if not r.passed]

    def result(self, gate: str) -> GateResult | None:
        """The outcome of ``gate``, if it ran."""
        return next((r for r in self.results if r.gate == gate), None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the body of a refusal, the detail of a history entry."""
        return {
            "model": self.model,
            "version": self.version,
            "against": self.against,
            "passed": self.passed,
            "failed": self.failed,
            "gates": {r.gate: r.as_dict() for r in self.results},
        }

    def text(self) -> str:
        """A report a person reads: one line per gate, then its failures, examples and
        breaking schema changes."""
        lines = [f"{self.model}@{self.version} against {self.against or 'no production'}:"]
        for result in self.results:
            mark = "PASS" if result.passed else "FAIL"
            if not result.evaluated:
                mark = "SKIP"
            lines.append(f"  [{mark}] {result.gate}: {result.summary}")
            lines.extend(f"      - {failure}" for failure in result.failures)
            if not result.passed:
                lines.extend(f"      {line}" for line in result.diff if "BREAKING" in line)
                lines.extend(f"      e.g. {_example(e)}" for e in result.examples[:3])
        return "\n".join(lines)


def _example(example: dict[str, Any]) -> str:
    got = f"error {example['error']}" if "error" in example else f"got {example.get('got')!r}"
    return f"item {example['index']}: expected {example['expected']!r}, {got}"


# -- load and warm-up -----------------------------------------------------------------------


class Predict(Protocol):
    """Runs inputs on the loaded candidate like a live request: validated against its
    schema, then through the data plane (its batcher, its timeout); one result per input."""

    async def __call__(self, inputs: list[Any], parameters: dict[str, Any]) -> list[Any]:
        """The results of ``inputs``; raises what the request path raises."""
        ...


def load_result(ref: str, ready: bool, seconds: float, error: str | None = None) -> GateResult:
    """The load gate: whether the candidate loaded (``error`` says why not)."""
    if not ready:
        return GateResult(
            "load",
            False,
            f"{ref} did not load: {error or 'not loaded'}",
            failures=[error or "not loaded"],
        )
    return GateResult(
        "load", True, f"loaded and ready in {seconds:.2f}s", numbers={"seconds": seconds}
    )


def warmup_inputs(info: VersionInfo, golden: GoldenSet | None) -> list[Any]:
    """What warms a version up: ``gates.warmup``, else the golden set's first input, else the
    first of the input schema's ``examples``; empty when there is none."""
    if info.manifest.gates.warmup:
        return list(info.manifest.gates.warmup)
    if golden is not None and golden.items:
        return [golden.items[0].input]
    examples = info.manifest.input_schema.get("examples")
    return list(examples[:1]) if isinstance(examples, list) else []


async def warm(predict: Predict, inputs: list[Any]) -> GateResult:
    """Run the warm-up inputs once."""
    if not inputs:
        return GateResult(
            "warmup",
            True,
            "no warm-up input (set gates.warmup, ship a golden set or give the input schema "
            "'examples'); loaded only",
            evaluated=False,
        )
    started = time.perf_counter()
    try:
        await predict(inputs, {})
    except Exception as exc:  # the model's own code failed: that is this gate's verdict
        reason = describe(exc)
        return GateResult(
            "warmup", False, f"the warm-up request failed: {reason}", failures=[reason]
        )
    seconds = time.perf_counter() - started
    return GateResult(
        "warmup",
        True,
        f"answered {len(inputs)} warm-up input(s) in {seconds:.3f}s",
        numbers={"inputs": len(inputs), "seconds": round(seconds, 4)},
    )


# -- the golden gate ------------------------------------------------------------------------


@dataclass(slots=True)
class _Outcome:
    got: Any = None
    error: str | None = None


async def _one(predict: Predict, item: Any, parameters: dict[str, Any]) -> _Outcome:
    try:
        (got,) = await predict([item], parameters)
    except Exception as exc:  # the model failed on this item: it counts as wrong
        return _Outcome(error=describe(exc))
    return _Outcome(got)


async def _outcomes(predict: Predict, info: VersionInfo, golden: GoldenSet) -> list[_Outcome]:
    """Every golden item's result, in batches; a batch that fails runs again item by item,
    so one bad item costs only itself."""
    size = min(golden.gate.batch_size, info.manifest.limits.max_batch_items)
    parameters = golden.gate.parameters
    outcomes: list[_Outcome] = []
    items = golden.items
    for start in range(0, len(items), size):
        inputs = [item.input for item in items[start : start + size]]
        try:
            results = await predict(inputs, parameters)
        except Exception:  # one of them is bad: find out which, one by one
            outcomes.extend([await _one(predict, single, parameters) for single in inputs])
        else:
            outcomes.extend(_Outcome(got) for got in results)
    return outcomes


def _value(result: Any, name: str | None) -> Any:
    """The compared part of a result or an expected answer."""
    if name is not None and isinstance(result, dict) and name in result:
        return result[name]
    return result


def _same(got: Any, expected: Any) -> bool:
    if isinstance(got, str) and isinstance(expected, str):
        return got.strip().casefold() == expected.strip().casefold()
    return bool(got == expected)


def matches(got: Any, expected: Any, match: str = "exact") -> bool:
    """True when an answer matches a golden item's expected value (``match``: see
    :class:`~modelhost.manifest.GoldenGate`)."""
    if match != "subset":
        return bool(got == expected)
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(
            key in got and _same(got[key], value) for key, value in expected.items()
        )
    return _same(got, expected)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(slots=True)
class _Tally:
    """What the golden evaluation counted."""

    items: int = 0
    errors: int = 0
    matches: int = 0
    absolute: list[float] = field(default_factory=list)
    unnumbered: int = 0
    wrong: list[dict[str, Any]] = field(default_factory=list)


def _tally(golden: GoldenSet, outcomes: Sequence[_Outcome]) -> _Tally:
    tally = _Tally(items=len(outcomes))
    name = golden.gate.field
    for index, (item, outcome) in enumerate(zip(golden.items, outcomes, strict=True)):
        expected = _value(item.expected, name)
        got = _value(outcome.got, name) if outcome.error is None else None
        diff = None
        if outcome.error is None:
            a, b = _number(got), _number(expected)
            diff = abs(a - b) if a is not None and b is not None else None
        if diff is None:
            tally.unnumbered += 1
        else:
            tally.absolute.append(diff)
        if outcome.error is None and matches(got, expected, golden.gate.match):
            tally.matches += 1
            continue
        tally.errors += outcome.error is not None
        if len(tally.wrong) < golden.gate.examples:
            wrong: dict[str, Any] = {"index": index, "input": item.input, "expected": expected}
            wrong.update({"error": outcome.error} if outcome.error else {"got": got})
            tally.wrong.append(wrong)
    return tally


def _measures(tally: _Tally) -> dict[str, float | None]:
    errors = tally.absolute
    return {
        "accuracy": tally.matches / tally.items if tally.items else None,
        "mae": sum(errors) / len(errors) if errors else None,
        "rmse": math.sqrt(sum(e * e for e in errors) / len(errors)) if errors else None,
    }


def _judge(
    thresholds: dict[str, float], measures: dict[str, float | None], tally: _Tally
) -> list[str]:
    """The thresholds that failed, as sentences."""
    failures = []
    for metric, limit in thresholds.items():
        value = measures[metric]
        if metric == "accuracy":
            if value is None or value < limit:
                failures.append(f"accuracy {_fmt(value)} is below the required {limit:g}")
            continue
        if tally.unnumbered:
            failures.append(
                f"{metric}: {tally.unnumbered} of {tally.items} items gave no number to "
                "compare (failed, or not numeric)"
            )
        elif value is None or value > limit:
            failures.append(f"{metric} {_fmt(value)} is above the allowed {limit:g}")
    return failures


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


async def golden_gate(predict: Predict, info: VersionInfo, golden: GoldenSet | None) -> GateResult:
    """Run the golden set on the candidate and judge it against its thresholds."""
    if golden is None:
        return GateResult(
            "golden",
            True,
            "no golden set (ship one with gates.golden in the manifest or register one)",
            evaluated=False,
        )
    started = time.perf_counter()
    tally = _tally(golden, await _outcomes(predict, info, golden))
    measures = _measures(tally)
    thresholds = golden.gate.thresholds.named()
    failures = _judge(thresholds, measures, tally)
    shown = ", ".join(f"{m} {_fmt(measures[m])}" for m in thresholds)
    numbers: dict[str, Any] = {
        "items": tally.items,
        "errors": tally.errors,
        "matches": tally.matches,
        **{m: v for m, v in measures.items() if v is not None},
        "thresholds": thresholds,
        "field": golden.gate.field,
        "source": golden.source,
        "sha256": golden.sha256,
        "seconds": round(time.perf_counter() - started, 3),
    }
    verdict = "failed" if failures else "passed"
    return GateResult(
        "golden",
        not failures,
        f"{verdict} on {tally.items} items ({golden.source}): {shown}",
        numbers=numbers,
        failures=failures,
        examples=tally.wrong if failures else [],
    )


# -- the compatibility gate -----------------------------------------------------------------


def compatibility_gate(candidate: VersionInfo, production: VersionInfo | None) -> GateResult:
    """Compare ``candidate``'s schemas with ``production``'s under semver."""
    if not candidate.manifest.gates.compatibility:
        return GateResult(
            "compatibility",
            True,
            "not checked: the candidate's manifest sets gates.compatibility to false",
            evaluated=False,
        )
    if production is None or production.version == candidate.version:
        return GateResult(
            "compatibility", True, "no production version to compare with", evaluated=False
        )
    old, new = production.manifest, candidate.manifest
    changes = compare(old.input_schema, new.input_schema, old.output_schema, new.output_schema)
    diff = [str(change) for change in changes]
    breaking = sum(change.breaking for change in changes)
    numbers = {"changes": len(changes), "breaking": breaking, "against": production.version}
    try:
        check_promotion(production.version, candidate.version, changes)
    except Conflict as exc:
        first, *_ = exc.message.splitlines()
        return GateResult(
            "compatibility", False, first, numbers=numbers, failures=[first], diff=diff
        )
    if breaking:
        summary = (
            f"{breaking} breaking change(s), allowed by the MAJOR bump "
            f"{major(production.version)} → {major(candidate.version)}"
        )
    elif changes:
        summary = f"{len(changes)} compatible change(s) against {production.version}"
    else:
        summary = f"same schemas as {production.version}"
    return GateResult("compatibility", True, summary, numbers=numbers, diff=diff)


async def run_gates(
    predict: Predict,
    info: VersionInfo,
    golden: GoldenSet | None,
    production: VersionInfo | None,
    *,
    before: Sequence[GateResult] = (),
) -> GateReport:
    """The golden and compatibility gates of a loaded candidate, after the results of the
    gates it passed already (``before``: load, warm-up)."""
    report = GateReport(info.model, info.version, production.version if production else None)
    report.results.extend(before)
    report.results.append(await golden_gate(predict, info, golden))
    report.results.append(compatibility_gate(info, production))
    return report
