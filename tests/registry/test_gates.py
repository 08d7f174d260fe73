"""Promotion gates without a server: the golden evaluation (accuracy, mae, rmse, failing
items, batches), warm-up, schema compatibility, the report, and golden sets shipped in an
artifact or registered in ``mh_golden`` (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import Engine

from modelhost.errors import ConfigError, InvalidInput, ManifestError
from modelhost.manifest import GoldenGate, load_manifest, parse_manifest
from modelhost.registry import ArtifactStore, Registry, Stage, VersionInfo
from modelhost.registry.gates import (
    GateReport,
    GateResult,
    compatibility_gate,
    golden_gate,
    load_result,
    run_gates,
    warm,
    warmup_inputs,
)
from modelhost.registry.golden import (
    GoldenItem,
    GoldenSet,
    GoldenStore,
    digest,
    golden_of,
    parse_registration,
    read_jsonl,
    shipped,
)

SCHEMA_IN: dict[str, Any] = {"type": "array", "items": {"type": "number"}}
SCHEMA_OUT: dict[str, Any] = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
    "required": ["label"],
}


def version(number: str = "1.0.0", **manifest: Any) -> VersionInfo:
    data = {
        "name": "iris",
        "version": number,
        "runtime": "python",
        "entrypoint": "m:M",
        "input_schema": SCHEMA_IN,
        "output_schema": SCHEMA_OUT,
        **manifest,
    }
    return VersionInfo(
        "iris", number, "python", Stage.STAGING, parse_manifest(data), {}, 0, datetime.now(UTC), "t"
    )


def golden(
    pairs: list[tuple[Any, Any]], *, field: str | None = "label", **thresholds: float
) -> GoldenSet:
    gate = GoldenGate.model_validate(
        {"field": field, "thresholds": thresholds or {"accuracy": 0.9}, "batch_size": 4}
    )
    items = tuple(GoldenItem(i, e) for i, e in pairs)
    return GoldenSet(items, gate, "test", digest(items))


class Labeller:
    """A fake model: the label of a number is its sign; ``boom`` fails the batch holding it."""

    def __init__(self, wrong: bool = False) -> None:
        self.batches: list[list[Any]] = []
        self.wrong = wrong

    async def __call__(self, inputs: list[Any], parameters: dict[str, Any]) -> list[Any]:
        self.batches.append(list(inputs))
        if "boom" in inputs:
            raise RuntimeError("boom is not a number")
        flip = self.wrong
        return [{"label": "pos" if (x >= 0) != flip else "neg", "score": 0.9} for x in inputs]


class Regressor:
    """A fake regression model: doubles its input; a string input gets a string back."""

    async def __call__(self, inputs: list[Any], parameters: dict[str, Any]) -> list[Any]:
        return [x * 2 if isinstance(x, int | float) else "?" for x in inputs]


SIGNS = [(float(x), "pos" if x >= 0 else "neg") for x in range(-5, 5)]


@pytest.mark.asyncio
async def test_the_golden_gate_passes_at_the_threshold_in_batches() -> None:
    model = Labeller()
    result = await golden_gate(model, version(), golden(SIGNS, accuracy=1.0))

    assert result.passed
    assert result.numbers["accuracy"] == 1.0
    assert (result.numbers["items"], result.numbers["errors"]) == (10, 0)
    assert [len(b) for b in model.batches] == [4, 4, 2]
    assert result.summary == "passed on 10 items (test): accuracy 1"
    assert result.examples == []


@pytest.mark.asyncio
async def test_a_wrong_model_fails_with_numbers_and_examples() -> None:
    result = await golden_gate(Labeller(wrong=True), version(), golden(SIGNS, accuracy=0.9))

    assert not result.passed
    assert result.numbers["accuracy"] == 0.0
    assert result.failures == ["accuracy 0 is below the required 0.9"]
    assert len(result.examples) == 5
    assert result.examples[0] == {"index": 0, "input": -5.0, "expected": "neg", "got": "pos"}


@pytest.mark.asyncio
async def test_a_failing_item_costs_only_itself() -> None:
    model = Labeller()
    pairs = [*SIGNS[:3], ("boom", "pos")]
    result = await golden_gate(model, version(), golden(pairs, accuracy=0.7))

    assert result.passed
    assert result.numbers["accuracy"] == 0.75
    assert result.numbers["errors"] == 1
    assert model.batches[0] == [-5.0, -4.0, -3.0, "boom"]  # the batch, then one by one
    assert model.batches[1:] == [[-5.0], [-4.0], [-3.0], ["boom"]]

    failed = await golden_gate(model, version(), golden(pairs, accuracy=0.8))
    (example,) = failed.examples
    assert example["index"] == 3
    assert example["error"] == "RuntimeError: boom is not a number"


@pytest.mark.asyncio
async def test_batches_never_exceed_the_versions_item_limit() -> None:
    model = Labeller()
    await golden_gate(model, version(limits={"max_batch_items": 3}), golden(SIGNS))
    assert max(len(b) for b in model.batches) == 3


@pytest.mark.asyncio
async def test_expected_may_be_an_object_holding_the_field() -> None:
    pairs = [(1.0, {"label": "pos"}), (-1.0, {"label": "neg", "note": "ignored"})]
    result = await golden_gate(Labeller(), version(), golden(pairs, accuracy=1.0))
    assert result.passed


@pytest.mark.asyncio
async def test_mae_and_rmse_judge_numeric_answers() -> None:
    pairs = [(1.0, 2.0), (2.0, 5.0), (3.0, 6.0)]  # answers 2, 4, 6: errors 0, 1, 0
    passed = await golden_gate(Regressor(), version(), golden(pairs, field=None, mae=0.5))
    assert passed.passed
    assert passed.numbers["mae"] == pytest.approx(1 / 3)
    assert passed.numbers["rmse"] == pytest.approx((1 / 3) ** 0.5)

    failed = await golden_gate(Regressor(), version(), golden(pairs, field=None, rmse=0.5))
    assert failed.failures == ["rmse 0.5774 is above the allowed 0.5"]

    odd = await golden_gate(
        Regressor(), version(), golden([*pairs, ("x", 1.0)], field=None, mae=10)
    )
    assert odd.failures == ["mae: 1 of 4 items gave no number to compare (failed, or not numeric)"]


@pytest.mark.asyncio
async def test_no_golden_set_passes_unevaluated() -> None:
    result = await golden_gate(Labeller(), version(), None)
    assert (result.passed, result.evaluated) == (True, False)
    assert "no golden set" in result.summary


@pytest.mark.asyncio
async def test_warm_up_runs_once_and_a_failure_fails_its_gate() -> None:
    model = Labeller()
    assert (await warm(model, [1.0])).passed
    assert model.batches == [[1.0]]

    failed = await warm(model, ["boom"])
    assert not failed.passed
    assert "the warm-up request failed: RuntimeError: boom" in failed.summary

    skipped = await warm(model, [])
    assert (skipped.passed, skipped.evaluated) == (True, False)


def test_warm_up_inputs_come_from_the_manifest_the_golden_set_or_schema_examples() -> None:
    assert warmup_inputs(version(gates={"warmup": [[1.0]]}), golden(SIGNS)) == [[1.0]]
    assert warmup_inputs(version(), golden(SIGNS)) == [-5.0]
    with_examples = version(input_schema={**SCHEMA_IN, "examples": [[5.1], [6.2]]})
    assert warmup_inputs(with_examples, None) == [[5.1]]
    assert warmup_inputs(version(), None) == []


def test_compatibility_refuses_a_breaking_change_without_a_major_bump() -> None:
    stricter = {**SCHEMA_IN, "items": {"type": "number", "minimum": 0}}
    result = compatibility_gate(version("1.1.0", input_schema=stricter), version("1.0.0"))

    assert not result.passed
    assert result.summary == (
        "1.1.0 breaks callers of 1.0.0 without a MAJOR version bump (it would need 2.0.0):"
    )
    assert result.diff == ["[BREAKING] input inputs[][]: minimum None → 0"]
    assert result.numbers == {"changes": 1, "breaking": 1, "against": "1.0.0"}

    bumped = compatibility_gate(version("2.0.0", input_schema=stricter), version("1.0.0"))
    assert bumped.passed
    assert bumped.summary == "1 breaking change(s), allowed by the MAJOR bump 1 → 2"


def test_compatible_changes_pass_with_their_diff() -> None:
    looser = {**SCHEMA_OUT, "properties": {**SCHEMA_OUT["properties"], "extra": {}}}
    result = compatibility_gate(version("1.1.0", output_schema=looser), version("1.0.0"))
    assert result.passed
    assert result.summary == "1 compatible change(s) against 1.0.0"
    assert result.diff == ["[ok] output results[].extra: field added"]


def test_compatibility_is_not_evaluated_without_production_or_when_switched_off() -> None:
    assert compatibility_gate(version(), None).evaluated is False
    assert compatibility_gate(version("1.0.0"), version("1.0.0")).evaluated is False
    stricter = {**SCHEMA_IN, "minItems": 4}
    off = compatibility_gate(
        version("1.1.0", input_schema=stricter, gates={"compatibility": False}), version()
    )
    assert (off.passed, off.evaluated) == (True, False)
    assert "gates.compatibility" in off.summary


@pytest.mark.asyncio
async def test_the_report_is_json_ready_and_readable() -> None:
    stricter = {**SCHEMA_IN, "items": {"type": "number", "minimum": 0}}
    candidate = version("1.1.0", input_schema=stricter)
    before = [load_result("iris@1.1.0", True, 0.5), GateResult("warmup", True, "ok")]
    report = await run_gates(
        Labeller(wrong=True), candidate, golden(SIGNS), version("1.0.0"), before=before
    )

    assert not report.passed
    assert report.failed == ["golden", "compatibility"]
    body = report.as_dict()
    assert list(body["gates"]) == ["load", "warmup", "golden", "compatibility"]
    assert body["against"] == "1.0.0"
    json.dumps(body)
    text = report.text()
    assert text.splitlines()[0] == "iris@1.1.0 against 1.0.0:"
    assert "  [PASS] load: loaded and ready in 0.50s" in text
    assert "  [FAIL] golden: failed on 10 items (test): accuracy 0" in text
    assert "      - accuracy 0 is below the required 0.9" in text
    assert "      e.g. item 0: expected 'neg', got 'pos'" in text
    assert "      [BREAKING] input inputs[][]: minimum None → 0" in text


def test_a_failed_load_is_reported_with_its_error() -> None:
    result = load_result("iris@1.1.0", False, 0.1, "ImportError: no module x")
    assert not result.passed
    assert result.summary == "iris@1.1.0 did not load: ImportError: no module x"
    report = GateReport("iris", "1.1.0", None, [result])
    assert report.failed == ["load"]
    assert "against no production" in report.text()


def test_golden_jsonl_is_read_line_by_line_naming_a_bad_line() -> None:
    text = '{"input": [1], "expected": "a"}\n\n{"input": [2], "expected": "b"}\n'
    assert read_jsonl(text) == [GoldenItem([1], "a"), GoldenItem([2], "b")]
    with pytest.raises(InvalidInput, match="line 2: not valid JSON"):
        read_jsonl('{"input": 1, "expected": 1}\n{oops\n')
    with pytest.raises(InvalidInput, match=r"golden set\[0\]: each golden item is an object"):
        read_jsonl('{"input": 1}\n')
    with pytest.raises(InvalidInput, match="non-empty"):
        read_jsonl("\n")


def test_a_registration_body_is_items_and_gate_fields() -> None:
    item = {"input": [1.0], "expected": "pos"}
    assert parse_registration([item]) == ([GoldenItem([1.0], "pos")], {})
    items, overrides = parse_registration(
        {"items": [item], "thresholds": {"accuracy": 0.5}, "field": None}
    )
    assert overrides == {"thresholds": {"accuracy": 0.5}, "field": None}
    assert items == [GoldenItem([1.0], "pos")]
    with pytest.raises(InvalidInput, match="unknown field 'extra'"):
        parse_registration({"items": [item], "extra": 1})
    with pytest.raises(InvalidInput, match="'items' must be a non-empty array"):
        parse_registration({"thresholds": {"accuracy": 1}})
    with pytest.raises(InvalidInput, match="unknown field 'why'"):
        parse_registration([{**item, "why": 1}])
    with pytest.raises(InvalidInput, match="must be"):
        parse_registration("items")


def test_registered_sets_replace_and_merge_with_the_manifest(engine: Engine) -> None:
    store = GoldenStore(engine)
    shipped_gate = {"file": None, "thresholds": {"accuracy": 0.9}, "field": "label"}
    info = version(gates={"golden": shipped_gate})
    items = [GoldenItem([1.0], "pos"), GoldenItem([-1.0], "neg")]
    assert store.get(info) is None

    first = store.put(info, items, {}, actor="alice")
    assert first.gate.thresholds.named() == {"accuracy": 0.9}
    replaced = store.put(info, items[:1], {"thresholds": {"mae": 1}}, actor="bob")
    assert replaced.gate.thresholds.named() == {"mae": 1.0}
    assert replaced.gate.field == "label"

    found = store.get(info)
    assert found is not None
    assert (found.items, found.source, found.registered_by) == (
        tuple(items[:1]),
        "registered",
        "bob",
    )
    assert found.sha256 == digest(items[:1])
    assert found.registered_at is not None
    assert found.registered_at.tzinfo is not None
    assert found.describe()["thresholds"] == {"mae": 1.0}
    assert store.delete("iris", "1.0.0")
    assert not store.delete("iris", "1.0.0")
    assert store.get(info) is None


def test_a_registration_needs_thresholds_and_valid_inputs(engine: Engine) -> None:
    store = GoldenStore(engine)
    with pytest.raises(InvalidInput, match="no thresholds"):
        store.put(version(), [GoldenItem([1.0], "pos")], {}, actor="a")
    with pytest.raises(InvalidInput, match=r"items\[1\]\.input\[0\]: 'x' is not of type"):
        store.put(
            version(),
            [GoldenItem([1.0], "pos"), GoldenItem(["x"], "pos")],
            {"thresholds": {"accuracy": 1}},
            actor="a",
        )
    with pytest.raises(InvalidInput, match="at least one of accuracy, mae, rmse"):
        store.put(version(), [GoldenItem([1.0], "pos")], {"thresholds": {}}, actor="a")


def _push(registry: Registry, root: Path, number: str, golden_text: str | None) -> VersionInfo:
    directory = root / number
    directory.mkdir(parents=True)
    gates: dict[str, Any] = {}
    if golden_text is not None:
        (directory / "golden.jsonl").write_text(golden_text)
        gates = {"golden": {"file": "golden.jsonl", "thresholds": {"accuracy": 1}}}
    manifest = {
        "name": "iris",
        "version": number,
        "runtime": "python",
        "entrypoint": "m:M",
        "gates": gates,
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return registry.push(directory, actor="t")


def test_the_shipped_set_is_read_from_the_artifact_and_a_registered_one_wins(
    engine: Engine, tmp_path: Path
) -> None:
    registry = Registry(engine, ArtifactStore(tmp_path / "artifacts"))
    store = GoldenStore(engine)
    info = _push(registry, tmp_path / "src", "1.0.0", '{"input": [1], "expected": "a"}\n')

    found = shipped(registry, info)
    assert found is not None
    assert (found.items, found.source) == ((GoldenItem([1], "a"),), "artifact:golden.jsonl")
    assert golden_of(registry, store, info) == found

    store.put(info, [GoldenItem([2], "b")], {}, actor="alice")
    registered = golden_of(registry, store, info)
    assert registered is not None
    assert registered.source == "registered"

    bare = _push(registry, tmp_path / "src", "1.1.0", None)
    assert golden_of(registry, store, bare) is None


def test_a_broken_shipped_set_is_a_config_error(engine: Engine, tmp_path: Path) -> None:
    registry = Registry(engine, ArtifactStore(tmp_path / "artifacts"))
    info = _push(registry, tmp_path / "src", "1.0.0", "not json\n")
    with pytest.raises(ConfigError, match=r"iris@1\.0\.0: golden\.jsonl, line 1"):
        shipped(registry, info)


def test_the_manifest_gates_section_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="at least one of accuracy, mae, rmse"):
        version(gates={"golden": {"file": "g.jsonl", "thresholds": {}}})
    with pytest.raises(ManifestError, match=r"gates\.golden\.thresholds\.accuracy"):
        version(gates={"golden": {"thresholds": {"accuracy": 2}}})
    with pytest.raises(ManifestError, match=r"gates\.golden\.thresholds"):
        version(gates={"golden": {"file": "g.jsonl"}})
    defaults = version().manifest.gates
    assert (defaults.golden, defaults.compatibility, defaults.warmup) == (None, True, [])

    directory = tmp_path / "v"
    directory.mkdir()
    manifest = {
        "name": "iris",
        "version": "1.0.0",
        "runtime": "python",
        "entrypoint": "m:M",
        "gates": {"golden": {"file": "golden.jsonl", "thresholds": {"accuracy": 0.9}}},
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(ManifestError, match=r"'gates\.golden\.file' names 'golden\.jsonl'"):
        load_manifest(directory)
    (directory / "golden.jsonl").write_text('{"input": 1, "expected": 1}\n')
    assert load_manifest(directory).gates.golden is not None
