from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import pytest
import yaml
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

from modelhost.errors import InvalidInput
from modelhost.runtimes.sklearn import SklearnRuntime
from tests.runtimes.conftest import load_runtime


def test_classifier_matches_the_estimator(
    iris_dirs: list[Path], iris_data: tuple[Any, Any]
) -> None:
    runtime = load_runtime(iris_dirs[0])
    assert isinstance(runtime, SklearnRuntime)
    x, _ = iris_data
    estimator = joblib.load(iris_dirs[0] / "model.joblib")
    expected = estimator.predict(x)
    prediction = runtime.predict([list(row) for row in x], {})
    names = ["setosa", "versicolor", "virginica"]
    assert [r["label"] for r in prediction.results] == [names[i] for i in expected]
    assert prediction.usage.input_tokens == len(x)
    assert runtime.metadata()["classes"] == names


def test_named_features_and_missing_feature(iris_dirs: list[Path]) -> None:
    runtime = load_runtime(iris_dirs[0])
    flower = {"sepal_length": 5.0, "sepal_width": 3.4, "petal_length": 1.5, "petal_width": 0.2}
    assert runtime.predict([flower], {}).results[0]["label"] == "setosa"
    del flower["petal_width"]
    with pytest.raises(InvalidInput) as info:
        runtime.predict([flower], {})
    assert info.value.param == "inputs[0].petal_width"


def test_regressor_returns_values(tmp_path: Path) -> None:
    x, y = load_diabetes(return_X_y=True)
    model = LinearRegression().fit(x, y)
    joblib.dump(model, tmp_path / "model.joblib")
    (tmp_path / "modelhost.yaml").write_text(
        yaml.safe_dump(
            {"name": "diabetes", "version": "1.0.0", "runtime": "sklearn", "task": "regression"}
        )
    )
    runtime = load_runtime(tmp_path)
    results = runtime.predict([list(x[0]), list(x[1])], {}).results
    assert results[0]["value"] == pytest.approx(float(model.predict(x[:1])[0]))
    assert len(results) == 2
