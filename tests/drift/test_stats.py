"""Drift statistics: PSI, KS and KL on known values, references from real training data
(sklearn's iris), and the done-when: a stream of iris inputs scaled by 1.5 is drift by PSI and
KS while the unscaled stream is not."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from modelhost.demo import IRIS_FEATURES
from modelhost.drift.stats import (
    OTHER,
    DataFormat,
    DriftStatus,
    FeatureKind,
    Reference,
    ReferenceOptions,
    ScoreOptions,
    bin_counts,
    build_reference,
    format_of,
    kl_divergence,
    ks_test,
    psi,
    quantile_edges,
    read_items,
    row_of,
    score_window,
    shares,
)
from modelhost.errors import InvalidInput
from modelhost.manifest import DriftThresholds, parse_manifest

IRIS = ReferenceOptions(features=tuple(IRIS_FEATURES), feature_names=tuple(IRIS_FEATURES))
SCORING = ScoreOptions(min_samples=100, feature_names=tuple(IRIS_FEATURES))


# -- the measures on known values ----------------------------------------------------------------


def test_psi_of_known_shares() -> None:
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5) = 0.25 (ln 2 + ln 1.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * (math.log(2) + math.log(1.5)))
    assert psi([50, 50], [25, 75]) == pytest.approx(0.274653, abs=1e-6)  # counts work too
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0


def test_psi_is_symmetric_and_the_sum_of_both_kl_divergences() -> None:
    e, a = [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]
    assert psi(e, a) == pytest.approx(psi(a, e))
    assert psi(e, a) == pytest.approx(kl_divergence(a, e) + kl_divergence(e, a))


def test_kl_of_known_shares() -> None:
    # KL(a || e) = 0.25 ln(0.25/0.5) + 0.75 ln(0.75/0.5)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl_divergence([0.25, 0.75], [0.5, 0.5]) == pytest.approx(expected)
    assert kl_divergence([1, 1], [1, 1]) == 0.0


def test_empty_bins_are_floored_so_scores_stay_finite() -> None:
    assert shares([0, 10]).min() == pytest.approx(1e-4, rel=1e-3)
    assert shares([0, 10]).sum() == pytest.approx(1.0)
    assert math.isfinite(psi([0, 100], [100, 0]))
    assert math.isfinite(kl_divergence([0, 100], [100, 0]))
    assert psi([0, 100], [100, 0]) > 10


def test_ks_of_identical_and_disjoint_samples() -> None:
    same = np.arange(100.0)
    assert ks_test(same, same) == (0.0, 1.0)
    statistic, pvalue = ks_test(same, same + 1000)
    assert statistic == 1.0
    assert pvalue < 1e-20


def test_quantile_bins_are_right_closed_and_hold_equal_shares() -> None:
    values = np.arange(1.0, 101.0)
    edges = quantile_edges(values, 4)
    assert edges == pytest.approx([25.75, 50.5, 75.25])
    assert bin_counts(values, edges).tolist() == [25, 25, 25, 25]
    assert bin_counts(np.array([25.75, 25.76, -1e9, 1e9]), edges).tolist() == [2, 1, 0, 1]
    assert quantile_edges(np.ones(50), 10) == [1.0]  # ties collapse to one edge


# -- inputs and reference data -------------------------------------------------------------------


def test_inputs_of_every_shape_become_rows() -> None:
    assert row_of([5.1, 3.5, 1.4, 0.2], IRIS_FEATURES) == dict(
        zip(IRIS_FEATURES, [5.1, 3.5, 1.4, 0.2], strict=True)
    )
    assert row_of([1, 2]) == {"x0": 1, "x1": 2}
    assert row_of({"a": 1, "b": "x", "nested": {"c": 1}}) == {"a": 1, "b": "x"}
    assert row_of("hello") == {"text": "hello"}
    assert row_of(3.0) == {"value": 3.0}
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "you"}]}
    assert row_of(chat) == {"messages": "hi\nyou"}


def test_reference_data_formats() -> None:
    assert format_of("train.csv") is DataFormat.CSV
    assert format_of("train.jsonl") is DataFormat.JSONL
    assert format_of("train.json") is DataFormat.JSON
    assert format_of("x", "application/x-ndjson; charset=utf-8") is DataFormat.JSONL
    assert format_of("x.csv", "application/json") is DataFormat.JSON
    csv_items = read_items(io.StringIO("a,b\n1,x\n2.5,\n"), DataFormat.CSV, limit=10)
    assert csv_items == [{"a": 1.0, "b": "x"}, {"a": 2.5, "b": None}]
    jsonl = read_items(io.StringIO('{"a": 1}\n\n[1, 2]\n'), DataFormat.JSONL, limit=10)
    assert jsonl == [{"a": 1}, [1, 2]]
    wrapped = read_items(io.StringIO('{"rows": [{"a": 1}]}'), DataFormat.JSON, limit=10)
    assert wrapped == [{"a": 1}]


def test_bad_reference_data_names_the_line() -> None:
    with pytest.raises(InvalidInput, match="line 2"):
        read_items(io.StringIO('{"a": 1}\n{oops\n'), DataFormat.JSONL, limit=10)
    with pytest.raises(InvalidInput, match="header"):
        read_items(io.StringIO(""), DataFormat.CSV, limit=10)
    with pytest.raises(InvalidInput, match="JSON array"):
        read_items(io.StringIO('{"a": 1}'), DataFormat.JSON, limit=10)


def test_large_reference_data_is_sampled_uniformly() -> None:
    lines = (json.dumps({"i": i}) + "\n" for i in range(10_000))
    kept = read_items(lines, DataFormat.JSONL, limit=500)
    assert len(kept) == 500
    assert np.mean([k["i"] for k in kept]) == pytest.approx(5000, rel=0.1)


def iris_split(iris_data: tuple[Any, Any]) -> tuple[Any, Any]:
    """The demo's training rows and every iris row."""
    x, y = iris_data
    x_train, _, _, _ = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_train, x


@pytest.fixture
def iris_reference(iris_data: tuple[Any, Any]) -> Reference:
    x_train, _ = iris_split(iris_data)
    rows = [dict(zip(IRIS_FEATURES, r, strict=True)) for r in x_train.tolist()]
    return build_reference(rows, IRIS, source="test", sha256="0" * 64)


def test_iris_reference_statistics(iris_reference: Reference) -> None:
    assert iris_reference.rows == 120
    assert list(iris_reference.features) == IRIS_FEATURES
    petal = iris_reference.features["petal_length"]
    assert petal.kind is FeatureKind.NUMERIC
    assert petal.count == 120
    assert len(petal.sample) == 120
    assert sum(petal.expected) == pytest.approx(1.0)
    assert len(petal.expected) == len(petal.edges) + 1
    assert 1.0 <= petal.summary["min"] < petal.summary["p50"] < petal.summary["max"] <= 6.9
    assert sum(petal.histogram["counts"]) == 120
    again = Reference.from_json(json.loads(json.dumps(iris_reference.to_json())))
    assert again == iris_reference


def test_kinds_are_inferred_or_declared() -> None:
    rows = [
        {"n": float(i), "color": ["red", "green"][i % 2], "note": f"free text number {i}"}
        for i in range(60)
    ]
    built = build_reference(rows, ReferenceOptions(), source="t", sha256="")
    kinds = {name: f.kind for name, f in built.features.items()}
    assert kinds == {
        "n": FeatureKind.NUMERIC,
        "color": FeatureKind.CATEGORICAL,
        "note": FeatureKind.TEXT,
    }
    assert built.features["color"].categories == ["red", "green", OTHER]
    declared = build_reference(
        rows, ReferenceOptions(categorical=frozenset({"n"})), source="t", sha256=""
    )
    assert declared.features["n"].kind is FeatureKind.CATEGORICAL


def test_a_named_feature_missing_from_the_data_is_refused() -> None:
    options = ReferenceOptions(features=("a", "b"))
    with pytest.raises(InvalidInput, match="'b'"):
        build_reference([{"a": 1.0}], options, source="t", sha256="")
    with pytest.raises(InvalidInput, match="no rows"):
        build_reference([], options, source="t", sha256="")


def test_options_follow_the_manifest() -> None:
    manifest = parse_manifest(
        {
            "name": "m",
            "version": "1.0.0",
            "runtime": "sklearn",
            "options": {"feature_names": ["a", "b"]},
            "monitoring": {"text": ["b"], "bins": 5},
        }
    )
    options = ReferenceOptions.of(manifest, 500)
    assert options.features == ("a", "b")
    assert options.text == frozenset({"b"})
    assert options.bins == 5
    assert options.fingerprint() != ReferenceOptions.of(manifest, 600).fingerprint()


# -- scoring: the done-when ----------------------------------------------------------------------


def stream(x: Any, scale: float, n: int, seed: int = 1) -> list[list[float]]:
    """``n`` iris rows drawn at random, every measurement multiplied by ``scale``."""
    rng = np.random.default_rng(seed)
    return [(row * scale).tolist() for row in x[rng.integers(0, len(x), n)]]


def test_unshifted_iris_stream_is_not_drift(
    iris_reference: Reference, iris_data: tuple[Any, Any]
) -> None:
    _, x = iris_split(iris_data)
    report = score_window(iris_reference, stream(x, 1.0, 400), SCORING)
    assert report.status is DriftStatus.OK
    thresholds = DriftThresholds()
    for score in report.features.values():
        assert score.psi is not None
        assert score.psi < thresholds.psi
        assert score.ks_pvalue is not None
        assert score.ks_pvalue > thresholds.ks_pvalue
        assert not score.drifted
    assert report.overall()["drifted_features"] == []


def test_iris_stream_scaled_by_one_and_a_half_is_drift_by_psi_and_ks(
    iris_reference: Reference, iris_data: tuple[Any, Any]
) -> None:
    _, x = iris_split(iris_data)
    report = score_window(iris_reference, stream(x, 1.5, 400), SCORING)
    assert report.status is DriftStatus.DRIFT
    thresholds = DriftThresholds()
    for score in report.features.values():
        assert score.reasons[:2] == ["psi", "ks"]
        assert score.psi is not None
        assert score.psi > thresholds.psi
        assert score.ks_statistic is not None
        assert score.ks_statistic > thresholds.ks_statistic
    overall = report.overall()
    assert overall["psi"] == max(s.psi or 0 for s in report.features.values())
    assert overall["drifted_features"] == IRIS_FEATURES
    assert overall["ks_pvalue"] < 1e-6


def test_object_inputs_score_like_arrays(
    iris_reference: Reference, iris_data: tuple[Any, Any]
) -> None:
    _, x = iris_split(iris_data)
    arrays = stream(x, 1.5, 200)
    objects = [dict(zip(IRIS_FEATURES, row, strict=True)) for row in arrays]
    by_array = score_window(iris_reference, arrays, SCORING)
    by_object = score_window(iris_reference, objects, SCORING)
    assert by_array.overall() == by_object.overall()


def test_too_few_inputs_or_no_reference_are_not_scored(iris_reference: Reference) -> None:
    few = score_window(iris_reference, [[5.0, 3.0, 1.5, 0.2]] * 99, SCORING)
    assert few.status is DriftStatus.INSUFFICIENT_DATA
    assert few.features == {}
    assert score_window(None, [], SCORING).status is DriftStatus.NO_REFERENCE
    unusable = score_window(iris_reference, [{"other": 1}] * 200, SCORING)
    assert unusable.status is DriftStatus.INSUFFICIENT_DATA
    assert unusable.features["sepal_length"].count == 0


def test_categorical_and_text_features_drift() -> None:
    reference_rows = [
        {"color": ["red", "green", "blue"][i % 3], "text": f"note {i} " + "x" * (20 + i % 10)}
        for i in range(300)
    ]
    reference = build_reference(reference_rows, ReferenceOptions(), source="t", sha256="")
    assert reference.features["text"].kind is FeatureKind.TEXT
    same = score_window(reference, reference_rows, SCORING)
    assert same.status is DriftStatus.OK
    shifted_rows = [
        {"color": ["red", "purple"][i % 2], "text": f"note {i} " + "x" * (80 + i % 10)}
        for i in range(300)
    ]
    shifted = score_window(reference, shifted_rows, SCORING)
    assert shifted.status is DriftStatus.DRIFT
    assert shifted.features["color"].ks_statistic is None  # no KS for categories
    assert shifted.features["color"].live["top"][0] == ["red", 0.5]
    assert shifted.features["text"].live["measure"] == "length"
    assert shifted.drifted == ["color", "text"]


def test_histograms_for_reports(iris_reference: Reference, iris_data: tuple[Any, Any]) -> None:
    _, x = iris_split(iris_data)
    options = ScoreOptions(min_samples=100, feature_names=tuple(IRIS_FEATURES), histograms=True)
    report = score_window(iris_reference, stream(x, 1.5, 200), options)
    histogram = report.features["sepal_length"].as_dict()["histogram"]
    assert len(histogram["edges"]) == len(histogram["live"]) + 1
    assert sum(histogram["reference"]) == pytest.approx(1.0)
    assert histogram["edges"][-1] >= 7.9 * 1.5 - 1e-9  # the range covers the shifted values
    plain = score_window(iris_reference, stream(x, 1.0, 200), SCORING)
    assert "histogram" not in plain.features["sepal_length"].as_dict()


def test_ks_needs_both_statistic_and_pvalue(iris_reference: Reference) -> None:
    lenient = ScoreOptions(
        thresholds=DriftThresholds(psi=100, ks_statistic=0.9),
        min_samples=100,
        feature_names=tuple(IRIS_FEATURES),
    )
    rows = [[v * 1.1 for v in (5.8, 3.0, 4.3, 1.3)]] * 200
    report = score_window(iris_reference, rows, lenient)
    assert all("ks" not in s.reasons for s in report.features.values())
    kl_only = ScoreOptions(
        thresholds=DriftThresholds(psi=100, ks_statistic=1.0, ks_pvalue=1e-300, kl=0.01),
        min_samples=100,
        feature_names=tuple(IRIS_FEATURES),
    )
    assert score_window(iris_reference, rows, kl_only).features["sepal_length"].reasons == ["kl"]
