from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelhost.errors import ManifestError
from modelhost.manifest import RuntimeKind, Task, load_manifest, parse_manifest


def _valid() -> dict[str, Any]:
    return {
        "name": "sentiment",
        "version": "2.1.0",
        "runtime": "onnx",
        "task": "classification",
        "artifacts": {"model": "model.onnx"},
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "limits": {"max_batch_items": 8, "timeout_ms": 500, "max_request_bytes": 1000},
        "card": {"description": "d", "license": "MIT", "metrics": {"f1": 0.9}},
        "pricing": {"input": 0.001, "output": 0.002},
    }


def test_valid_manifest_parses_every_section() -> None:
    manifest = parse_manifest(_valid())
    assert manifest.ref == "sentiment@2.1.0"
    assert manifest.runtime is RuntimeKind.ONNX
    assert manifest.task is Task.CLASSIFICATION
    assert manifest.limits.timeout_ms == 500
    assert manifest.card.metrics == {"f1": 0.9}
    assert manifest.pricing is not None
    assert manifest.pricing.output == 0.002


@pytest.mark.parametrize(
    ("change", "field", "hint"),
    [
        ({"version": "2.1"}, "version", "MAJOR.MINOR.PATCH"),
        ({"name": "Bad Name"}, "name", "lower-case"),
        ({"runtime": "tensorflow"}, "runtime", "sklearn"),
        ({"limits": {"timeout_ms": -1}}, "limits.timeout_ms", "greater than 0"),
        ({"input_schema": {"type": "nonsense"}}, "input_schema", "not a valid JSON Schema"),
        ({"colour": "red"}, "colour", "not a known field"),
    ],
)
def test_invalid_manifest_names_field_and_fix(
    change: dict[str, Any], field: str, hint: str
) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest({**_valid(), **change})
    assert f"field '{field}'" in info.value.message
    assert hint in info.value.message


def test_pricing_takes_fees_per_request_and_per_compute_second() -> None:
    pricing = {"input": 0.5, "unit": "1m_tokens", "per_request": 0.001, "per_second": 0.02}
    manifest = parse_manifest({**_valid(), "pricing": {**pricing, "currency": "EUR"}})
    assert manifest.pricing is not None
    assert (manifest.pricing.per_request, manifest.pricing.per_second) == (0.001, 0.02)
    assert manifest.pricing.currency == "EUR"
    old = parse_manifest(_valid()).pricing  # what earlier manifests said still means the same
    assert old is not None
    assert (old.unit, old.per_request, old.per_second, old.currency) == ("1k_tokens", 0, 0, "USD")
    for wrong, hint in (({"unit": "1k"}, "pricing.unit"), ({"per_second": -1}, "per_second")):
        with pytest.raises(ManifestError, match=hint):
            parse_manifest({**_valid(), "pricing": wrong})


def test_missing_required_field_says_to_add_it() -> None:
    data = _valid()
    del data["runtime"]
    with pytest.raises(ManifestError, match="field 'runtime': is required"):
        parse_manifest(data)


def test_seed_artifact_layout_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (tmp_path / "config.yaml").write_text("layers: 2\n")
    (tmp_path / "requirements.txt").write_text("onnxruntime\n")
    (tmp_path / "evaluation_report.json").write_text(json.dumps({"accuracy": 0.93}))
    (tmp_path / "training_config.yaml").write_text("lr: 0.1\n")
    (tmp_path / "data_manifest.json").write_text(json.dumps({"sha256": "abc"}))
    (tmp_path / "modelhost.yaml").write_text(yaml.safe_dump(_valid()))
    manifest = load_manifest(tmp_path)
    assert manifest.evaluation == {"accuracy": 0.93}


def test_artifact_that_is_not_in_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "modelhost.yaml").write_text(yaml.safe_dump(_valid()))
    with pytest.raises(ManifestError, match=r"field 'artifacts.model' names 'model.onnx'"):
        load_manifest(tmp_path)


def test_directory_without_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no modelhost\.yaml"):
        load_manifest(tmp_path)


def test_manifest_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "modelhost.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(tmp_path)
