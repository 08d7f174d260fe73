"""Versions of a real iris classifier (trained at load time from scikit-learn's bundled data)
that misbehave on purpose: slow, failing or wrong. Rollout tests push them as canaries,
shadows and promotion candidates."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import yaml

IRIS_MODULE = textwrap.dedent(
    '''
    import json
    import time
    from pathlib import Path

    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    LABELS = ["setosa", "versicolor", "virginica"]


    class Iris:
        """Logistic regression on the iris data; ``behaviour.json`` makes it slow, failing or
        wrong."""

        def __init__(self, path):
            self.behaviour = json.loads((Path(path) / "behaviour.json").read_text())
            self.calls = 0

        def load(self):
            x, y = load_iris(return_X_y=True)
            self.model = LogisticRegression(max_iter=1000).fit(x, y)

        def predict(self, inputs, parameters):
            self.calls += 1
            sleep_ms = self.behaviour.get("sleep_ms", 0)
            if sleep_ms:
                time.sleep(sleep_ms / 1000)
            every = self.behaviour.get("fail_every", 0)
            if every and self.calls % every == 0:
                raise RuntimeError("the canary broke")
            shift = 1 if self.behaviour.get("wrong") else 0
            proba = self.model.predict_proba(inputs)
            out = []
            for row in proba:
                best = int(row.argmax())
                out.append({"label": LABELS[(best + shift) % 3], "score": float(row[best])})
            return out
    '''
)

INPUT_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"type": "number"},
    "minItems": 4,
    "maxItems": 4,
}
OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
    "required": ["label"],
}


def write_iris_variant(
    root: Path,
    name: str,
    version: str,
    *,
    sleep_ms: float = 0,
    fail_every: int = 0,
    wrong: bool = False,
    **manifest: Any,
) -> Path:
    """A python-runtime iris version directory; ``manifest`` adds or overrides fields."""
    directory = root / f"{name}-{version}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "iris_model.py").write_text(IRIS_MODULE)
    behaviour = {"sleep_ms": sleep_ms, "fail_every": fail_every, "wrong": wrong}
    (directory / "behaviour.json").write_text(json.dumps(behaviour))
    data: dict[str, Any] = {
        "name": name,
        "version": version,
        "runtime": "python",
        "task": "classification",
        "entrypoint": "iris_model:Iris",
        "input_schema": INPUT_SCHEMA,
        "output_schema": OUTPUT_SCHEMA,
        **manifest,
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(data))
    return directory


def iris_rows() -> tuple[list[list[float]], list[str]]:
    """Every bundled iris row and its true label."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    labels = ["setosa", "versicolor", "virginica"]
    return [list(map(float, row)) for row in x], [labels[int(i)] for i in y]
