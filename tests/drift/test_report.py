"""The HTML drift report, rendered from scores of real iris data (matplotlib, the ``reports``
extra), and its message when matplotlib is not installed."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import textwrap
from typing import Any

from modelhost.demo import IRIS_FEATURES
from modelhost.drift.report import render_report, verdict
from modelhost.drift.stats import (
    ReferenceOptions,
    ScoreOptions,
    build_reference,
    score_window,
)
from modelhost.manifest import DriftThresholds

PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def drift_body(iris_data: tuple[Any, Any], scale: float, n: int = 300) -> dict[str, Any]:
    """A drift answer (the shape of ``GET .../drift?detail=histograms``) for the first 120 iris
    rows as reference and ``n`` rows scaled by ``scale`` as live inputs, plus a categorical
    feature whose name needs escaping."""
    x, _ = iris_data
    names = [*IRIS_FEATURES, "<colour>"]
    colours = ["red", "green", "blue"]
    reference_rows = [
        [*row, colours[i % 3]] for i, row in enumerate(x[::5].tolist() + x[1::5].tolist())
    ]
    shown = 2 if scale != 1.0 else 3  # shifted: blue is gone
    live_rows = [[*(v * scale for v in x[i % 150]), colours[i % shown]] for i in range(n)]
    options = ReferenceOptions(features=tuple(names), feature_names=tuple(names))
    reference = build_reference(reference_rows, options, source="artifact:train.csv", sha256="0")
    scoring = ScoreOptions(min_samples=100, feature_names=tuple(names), histograms=True)
    report = score_window(reference, live_rows, scoring)
    return {
        "model": "flowers",
        "version": "1.0.0",
        "status": report.status.value,
        "window": {
            "size": n,
            "min_samples": 100,
            "since": "2024-06-10T06:00:00+00:00",
            "until": "2024-06-10T07:00:00+00:00",
        },
        "overall": report.overall(),
        "features": {name: s.as_dict() for name, s in report.features.items()},
        "thresholds": DriftThresholds().model_dump(),
        "reference": {"source": reference.source, "rows": reference.rows},
        "alerts": [
            {
                "at": "2024-06-10T07:00:00+00:00",
                "event": "drift.alert",
                "drifted_features": ["sepal_length"],
                "overall": {"psi": 3.2},
                "deliveries": [{"status_code": 200}],
            }
        ],
    }


def test_a_drifted_version_reads_at_a_glance(iris_data: tuple[Any, Any]) -> None:
    body = drift_body(iris_data, 1.5)
    page = render_report(body)
    assert page.startswith("<!doctype html>")
    assert "Drift detected in 5 of 5 features" in page
    assert page.index("Drift detected") < page.index("<table>")  # the verdict comes first
    images = PNG.findall(page)
    assert len(images) == 1 + 5  # the overview, then one plot per feature
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert page.count('class="bad"') >= 10  # PSI and KS of each numeric feature, at least
    assert "&lt;colour&gt;" in page
    assert "<colour>" not in page
    assert "drift.alert" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing to fetch


def test_an_unshifted_version_and_one_without_data(iris_data: tuple[Any, Any]) -> None:
    body = drift_body(iris_data, 1.0)
    assert body["status"] == "ok"
    page = render_report(body)
    assert "No drift" in page
    assert 'class="bad"' not in page
    waiting = {**body, "status": "insufficient_data", "features": {}, "alerts": []}
    waiting["window"] = {"size": 12, "min_samples": 100}
    page = render_report(waiting)
    assert "Not enough live data yet" in page
    assert "12 live inputs in the window; scoring starts at 100" in page
    assert not PNG.findall(page)
    assert verdict({"status": "no_reference", "reference_error": "no file"}) == (
        "No reference to compare with",
        "no file",
    )


def test_without_matplotlib_the_report_names_the_extra() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["matplotlib"] = None  # as if it were not installed
        from modelhost.errors import MissingDependencyError
        from modelhost.drift.report import render_report
        try:
            render_report({"model": "m", "version": "1", "status": "ok"})
        except MissingDependencyError as exc:
            print(exc.message)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'modelhost[reports]'" in done.stdout
