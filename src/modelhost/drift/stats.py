"""Drift statistics: what the training data looked like, and how far live inputs are from it.

A :class:`Reference` is computed once per model version from its training data: per numeric
feature the quantile bins PSI and KL count in, a histogram, summary quantiles and a sample of
values for the Kolmogorov-Smirnov test; per categorical feature the category frequencies; per
text feature the same as a number, over the text's length in characters.

A window of live inputs is then scored against it (:func:`score_window`), per feature:

* **PSI**, the population stability index, ``Σ (a - e) · ln(a / e)`` over the reference's
  quantile bins (or categories), ``e`` the reference share and ``a`` the live share of a bin,
  both floored at :data:`EPSILON` so an empty bin does not make it infinite. Rule of thumb:
  under 0.1 stable, 0.1-0.2 moving, over 0.2 shifted.
* **KS**, the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``) of the live values
  against the reference sample: its statistic (the largest gap between the two cumulative
  distributions, 0 to 1) and p-value. Numeric and text features only.
* **KL**, the Kullback-Leibler divergence ``KL(live ‖ reference)`` (``scipy.stats.entropy``)
  over the same bins as PSI, in nats.

A version's overall scores are the worst over its features (largest PSI, KS statistic and KL,
smallest p-value). Everything here is pure computation on plain data: callers read files and
run this in a thread.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats  # type: ignore[import-untyped]  # scipy ships no stubs

from modelhost.errors import InvalidInput
from modelhost.manifest import DriftThresholds, ModelManifest

#: Smallest share a bin is given, so that an empty bin keeps PSI and KL finite.
EPSILON = 1e-4
#: The category every value not among the reference's categories is counted in.
OTHER = "__other__"
#: The field a bare string input is called.
TEXT_FIELD = "text"
#: The field a bare number input is called.
VALUE_FIELD = "value"
#: Most categories of one feature; rarer ones are counted as :data:`OTHER`.
MAX_CATEGORIES = 50
#: Bins of the equal-width histograms kept in a reference and drawn in reports.
HISTOGRAM_BINS = 30

Row = dict[str, Any]
Floats = npt.NDArray[np.float64]


class FeatureKind(StrEnum):
    """How a feature is compared."""

    NUMERIC = "numeric"  #: numbers: quantile bins (PSI, KL) and KS against a sample
    CATEGORICAL = "categorical"  #: a small set of values: category frequencies (PSI, KL)
    TEXT = "text"  #: free text: its length in characters, compared like a number


class DriftStatus(StrEnum):
    """The verdict on a version's live window."""

    OK = "ok"  #: every feature within its thresholds
    DRIFT = "drift"  #: at least one feature past a threshold
    INSUFFICIENT_DATA = "insufficient_data"  #: fewer live inputs than ``min_samples``
    NO_REFERENCE = "no_reference"  #: nothing to compare with (no or unreadable training data)


class DataFormat(StrEnum):
    """How reference data is written."""

    CSV = "csv"  #: a header row of field names, then one row per input
    JSONL = "jsonl"  #: one input (object, array, string or number) per line
    JSON = "json"  #: an array of inputs, or ``{"rows": [...]}`` / ``{"inputs": [...]}``


# -- inputs as rows ------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _flatten(item: Mapping[str, Any]) -> Row:
    row: Row = {}
    for key, value in item.items():
        if _scalar(value):
            row[str(key)] = value
        elif key == "messages" and isinstance(value, list):  # chat: the text of every turn
            parts = (m.get("content") for m in value if isinstance(m, Mapping))
            row["messages"] = "\n".join(p for p in parts if isinstance(p, str))
    return row


def row_of(item: Any, feature_names: Sequence[str] = ()) -> Row:
    """One model input as named fields.

    An object gives its scalar fields (and the joined text of chat ``messages``); an array
    gives its items named by ``feature_names`` (``x0``, ``x1``, ... when the lengths differ);
    a string is the field ``text``; a number the field ``value``.
    """
    if isinstance(item, str):
        return {TEXT_FIELD: item}
    if _number(item):
        return {VALUE_FIELD: item}
    if isinstance(item, Mapping):
        return _flatten(item)
    if isinstance(item, list | tuple):
        names = (
            list(feature_names)
            if len(feature_names) == len(item)
            else [f"x{i}" for i in range(len(item))]
        )
        return {name: value for name, value in zip(names, item, strict=True) if _scalar(value)}
    return {}


def rows_of(items: Iterable[Any], feature_names: Sequence[str] = ()) -> list[Row]:
    """Every input as a row (see :func:`row_of`)."""
    return [row_of(item, feature_names) for item in items]


# -- reading reference data ----------------------------------------------------------------------


def format_of(name: str, content_type: str | None = None) -> DataFormat:
    """The format of reference data from its content type, else its file name (CSV when
    neither says)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in ("text/csv", "application/csv"):
        return DataFormat.CSV
    if media in ("application/x-ndjson", "application/jsonl", "application/x-jsonlines"):
        return DataFormat.JSONL
    if media == "application/json" or media.endswith("+json"):
        return DataFormat.JSON
    lower = name.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return DataFormat.JSONL
    if lower.endswith(".json"):
        return DataFormat.JSON
    return DataFormat.CSV


def _cell(text: str) -> Any:
    """A CSV cell: empty is missing, a number is a number, anything else a string."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _csv_items(lines: Iterable[str], source: str) -> Iterator[Any]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if not header:
        raise InvalidInput(f"{source}: the CSV has no header row of field names", param="body")
    names = [name.strip() for name in header]
    for cells in reader:
        if cells:
            yield {name: _cell(cell) for name, cell in zip(names, cells, strict=False)}


def _json_error(source: str, where: str, exc: json.JSONDecodeError) -> InvalidInput:
    return InvalidInput(f"{source}: {where} is not valid JSON: {exc.msg}", param="body")


def _jsonl_items(lines: Iterable[str], source: str) -> Iterator[Any]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise _json_error(source, f"line {number}", exc) from None


def _json_items(text: str, source: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _json_error(source, "the body", exc) from None
    if isinstance(data, Mapping):
        data = data.get("rows", data.get("inputs"))
    if not isinstance(data, list):
        raise InvalidInput(
            f'{source}: send a JSON array of inputs, or {{"rows": [...]}}', param="body"
        )
    return data


def _reservoir(items: Iterable[Any], limit: int, seed: int = 0) -> list[Any]:
    """At most ``limit`` items, a uniform sample when there are more (algorithm R)."""
    rng = random.Random(seed)
    kept: list[Any] = []
    for index, item in enumerate(items):
        if index < limit:
            kept.append(item)
            continue
        slot = rng.randint(0, index)
        if slot < limit:
            kept[slot] = item
    return kept


def read_items(
    lines: Iterable[str], fmt: DataFormat, *, limit: int, source: str = "reference data"
) -> list[Any]:
    """The inputs of reference data, a uniform sample of ``limit`` when there are more.

    Raises:
        InvalidInput: the data cannot be parsed (naming the line).
    """
    if fmt is DataFormat.CSV:
        return _reservoir(_csv_items(lines, source), limit)
    if fmt is DataFormat.JSONL:
        return _reservoir(_jsonl_items(lines, source), limit)
    return _reservoir(_json_items("".join(lines), source), limit)


# -- the reference -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReferenceOptions:
    """What a reference keeps, from a version's ``monitoring`` manifest section."""

    features: tuple[str, ...] = ()
    """Fields to keep; empty: every field of the data."""
    feature_names: tuple[str, ...] = ()
    """Names of the items of array inputs (``options.feature_names``)."""
    categorical: frozenset[str] = frozenset()
    text: frozenset[str] = frozenset()
    bins: int = 10
    sample_size: int = 2000

    @classmethod
    def of(cls, manifest: ModelManifest, sample_size: int = 2000) -> ReferenceOptions:
        """The options a version's manifest asks for."""
        config = manifest.monitoring
        names = tuple(str(n) for n in manifest.options.get("feature_names") or ())
        return cls(
            features=tuple(config.features) or names,
            feature_names=names,
            categorical=frozenset(config.categorical),
            text=frozenset(config.text),
            bins=config.bins,
            sample_size=sample_size,
        )

    def fingerprint(self) -> str:
        """A hash of the options: a stored reference built with other options is rebuilt."""
        data = [
            list(self.features),
            list(self.feature_names),
            sorted(self.categorical),
            sorted(self.text),
            self.bins,
            self.sample_size,
        ]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()

    def kind_of(self, name: str, values: list[Any]) -> FeatureKind:
        """Declared, else numbers are numeric, and strings categorical when they take few
        distinct values (at most :data:`MAX_CATEGORIES`, and half the rows), text otherwise."""
        if name in self.categorical:
            return FeatureKind.CATEGORICAL
        if name in self.text:
            return FeatureKind.TEXT
        numbers = sum(1 for v in values if _number(v))
        if numbers >= 0.95 * len(values):
            return FeatureKind.NUMERIC
        distinct = len({_category(v) for v in values})
        if distinct <= MAX_CATEGORIES and distinct <= max(2, len(values) // 2):
            return FeatureKind.CATEGORICAL
        return FeatureKind.TEXT


@dataclass(slots=True)
class FeatureReference:
    """The reference statistics of one feature."""

    name: str
    kind: FeatureKind
    count: int
    """Reference rows with a usable value of the feature."""
    summary: dict[str, Any]
    """Count and quantiles (numeric, text length) or the top categories."""
    expected: list[float]
    """Reference share per bin (numeric, text) or per category (categorical)."""
    edges: list[float] = field(default_factory=list)
    """Inner edges of the quantile bins: bin ``i`` holds values in ``(edges[i-1], edges[i]]``,
    the first and last bins are open-ended."""
    categories: list[str] = field(default_factory=list)
    """The categories of ``expected``, :data:`OTHER` last."""
    sample: list[float] = field(default_factory=list)
    """Up to ``sample_size`` reference values, for the KS test and the report's plots."""
    histogram: dict[str, list[float]] = field(default_factory=dict)
    """Equal-width histogram of the reference values: ``edges`` and ``counts``."""


@dataclass(slots=True)
class Reference:
    """The reference statistics of one model version."""

    features: dict[str, FeatureReference]
    rows: int
    """Rows of reference data the statistics come from."""
    source: str
    """``artifact:<path>`` or ``supplied``."""
    sha256: str
    """Hash of the data the statistics come from."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (see :meth:`from_json`)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reference:
        """Read back what :meth:`to_json` wrote."""
        features = {
            name: FeatureReference(**{**value, "kind": FeatureKind(value["kind"])})
            for name, value in data["features"].items()
        }
        return cls(features, int(data["rows"]), str(data["source"]), str(data["sha256"]))


def _category(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def numbers_of(values: Iterable[Any]) -> Floats:
    """The finite numbers among ``values``."""
    array = np.fromiter((float(v) for v in values if _number(v)), dtype=np.float64)
    return array[np.isfinite(array)]


def lengths_of(values: Iterable[Any]) -> Floats:
    """The lengths in characters of the strings among ``values``."""
    return np.fromiter((len(v) for v in values if isinstance(v, str)), dtype=np.float64)


def quantile_edges(values: Floats, bins: int) -> list[float]:
    """Inner edges of ``bins`` equal-count bins of ``values`` (fewer when values repeat)."""
    inner = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return [float(x) for x in np.unique(inner)]


def bin_counts(values: Floats, edges: Sequence[float]) -> npt.NDArray[np.int64]:
    """How many values fall in each bin of ``edges`` (see :attr:`FeatureReference.edges`)."""
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    return np.bincount(index, minlength=len(edges) + 1).astype(np.int64)


def shares(counts: npt.ArrayLike, eps: float = EPSILON) -> Floats:
    """Counts as shares of their total, each at least ``eps`` (then summing to 1 again)."""
    array = np.asarray(counts, dtype=np.float64)
    total = array.sum()
    if total <= 0:
        return np.full(array.shape, 1.0 / max(1, array.size), dtype=np.float64)
    floored: Floats = np.maximum(array / total, eps)
    result: Floats = floored / floored.sum()
    return result


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike, eps: float = EPSILON) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts or shares of the
    same bins)."""
    e, a = shares(expected, eps), shares(actual, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def kl_divergence(actual: npt.ArrayLike, expected: npt.ArrayLike, eps: float = EPSILON) -> float:
    """``KL(actual ‖ expected)`` in nats, over the same bins (counts or shares)."""
    return float(stats.entropy(shares(actual, eps), shares(expected, eps)))


def ks_test(reference: npt.ArrayLike, live: npt.ArrayLike) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov statistic and p-value."""
    result = stats.ks_2samp(np.asarray(reference), np.asarray(live))
    return float(result.statistic), float(result.pvalue)


def numeric_summary(values: Floats) -> dict[str, Any]:
    """Count, mean, standard deviation and quantiles."""
    if values.size == 0:
        return {"count": 0}
    q = np.quantile(values, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    keys = ("min", "p05", "p25", "p50", "p75", "p95", "max")
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        **{key: float(x) for key, x in zip(keys, q, strict=True)},
    }


def categorical_summary(values: list[str]) -> dict[str, Any]:
    """Count, distinct values and the ten most frequent with their shares."""
    counts = Counter(values)
    total = max(1, len(values))
    top = [[name, n / total] for name, n in counts.most_common(10)]
    return {"count": len(values), "distinct": len(counts), "top": top}


def _numeric_reference(
    name: str, kind: FeatureKind, values: Floats, options: ReferenceOptions
) -> FeatureReference:
    edges = quantile_edges(values, options.bins)
    counts, hist_edges = np.histogram(values, bins=HISTOGRAM_BINS)
    rng = np.random.default_rng(0)
    sample = (
        values
        if values.size <= options.sample_size
        else rng.choice(values, options.sample_size, replace=False)
    )
    summary = numeric_summary(values)
    if kind is FeatureKind.TEXT:
        summary["measure"] = "length"
    return FeatureReference(
        name=name,
        kind=kind,
        count=int(values.size),
        summary=summary,
        expected=[float(x) for x in shares(bin_counts(values, edges), 0.0)],
        edges=edges,
        sample=[float(x) for x in sample],
        histogram={
            "edges": [float(x) for x in hist_edges],
            "counts": [float(x) for x in counts],
        },
    )


def _categorical_reference(name: str, values: list[str]) -> FeatureReference:
    counts = Counter(values)
    categories = [c for c, _ in counts.most_common(MAX_CATEGORIES) if c != OTHER]
    other = len(values) - sum(counts[c] for c in categories)
    total = max(1, len(values))
    expected = [counts[c] / total for c in categories] + [other / total]
    return FeatureReference(
        name=name,
        kind=FeatureKind.CATEGORICAL,
        count=len(values),
        summary=categorical_summary(values),
        expected=expected,
        categories=[*categories, OTHER],
    )


def feature_reference(
    name: str, values: list[Any], options: ReferenceOptions
) -> FeatureReference | None:
    """The reference of one feature from its non-missing values; None when none is usable."""
    if not values:
        return None
    kind = options.kind_of(name, values)
    if kind is FeatureKind.CATEGORICAL:
        return _categorical_reference(name, [_category(v) for v in values])
    array = numbers_of(values) if kind is FeatureKind.NUMERIC else lengths_of(values)
    if array.size == 0:
        return None
    return _numeric_reference(name, kind, array, options)


def build_reference(
    items: Iterable[Any], options: ReferenceOptions, *, source: str, sha256: str
) -> Reference:
    """The reference statistics of training data given as model inputs.

    Raises:
        InvalidInput: no rows, a feature named in ``options.features`` has no value, or no
            feature is usable.
    """
    rows = rows_of(items, options.feature_names)
    if not rows:
        raise InvalidInput(f"{source}: the reference data has no rows", param="body")
    columns: dict[str, list[Any]] = {}
    for row in rows:
        for key, value in row.items():
            if value is not None:
                columns.setdefault(key, []).append(value)
    features: dict[str, FeatureReference] = {}
    for name in options.features or tuple(columns):
        built = feature_reference(name, columns.get(name, []), options)
        if built is None:
            if options.features:
                raise InvalidInput(
                    f"{source}: feature {name!r} has no usable value in the reference data; "
                    f"its fields are {', '.join(sorted(columns)) or 'none'}",
                    param="monitoring.features",
                )
            continue
        features[name] = built
    if not features:
        raise InvalidInput(f"{source}: the reference data has no usable field", param="body")
    return Reference(features, len(rows), source, sha256)


# -- scoring a live window -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScoreOptions:
    """How a live window is scored."""

    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    min_samples: int = 100
    """Live inputs needed before scoring (per feature too)."""
    feature_names: tuple[str, ...] = ()
    histograms: bool = False
    """Add reference and live histograms to each feature (for reports)."""


@dataclass(slots=True)
class FeatureScore:
    """How far one feature's live values are from its reference."""

    name: str
    kind: FeatureKind
    count: int
    """Live values of the feature in the window."""
    psi: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    kl: float | None = None
    drifted: bool = False
    reasons: list[str] = field(default_factory=list)
    """The tests past their thresholds: ``psi``, ``ks``, ``kl``."""
    reference: dict[str, Any] = field(default_factory=dict)
    """The reference's summary."""
    live: dict[str, Any] = field(default_factory=dict)
    """The live values' summary."""
    histogram: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``histogram`` only when computed)."""
        data = asdict(self)
        if self.histogram is None:
            data.pop("histogram")
        return data


def _judge(score: FeatureScore, thresholds: DriftThresholds) -> None:
    reasons = []
    if score.psi is not None and score.psi >= thresholds.psi:
        reasons.append("psi")
    if (
        score.ks_statistic is not None
        and score.ks_pvalue is not None
        and score.ks_statistic >= thresholds.ks_statistic
        and score.ks_pvalue < thresholds.ks_pvalue
    ):
        reasons.append("ks")
    if thresholds.kl is not None and score.kl is not None and score.kl >= thresholds.kl:
        reasons.append("kl")
    score.reasons, score.drifted = reasons, bool(reasons)


def _numeric_histogram(ref: FeatureReference, live: Floats, actual: Floats) -> dict[str, Any]:
    sample = np.asarray(ref.sample, dtype=np.float64)
    both = np.concatenate([sample, live])
    low, high = float(both.min()), float(both.max())
    edges = np.linspace(low, high if high > low else low + 1.0, HISTOGRAM_BINS + 1)
    ref_counts, _ = np.histogram(sample, bins=edges)
    live_counts, _ = np.histogram(live, bins=edges)
    return {
        "edges": [float(x) for x in edges],
        "reference": [float(x) for x in shares(ref_counts, 0.0)],
        "live": [float(x) for x in shares(live_counts, 0.0)],
        "bins": {"edges": ref.edges, "reference": ref.expected, "live": actual.tolist()},
    }


def _score_numeric(
    ref: FeatureReference, live: Floats, options: ScoreOptions, score: FeatureScore
) -> None:
    counts = bin_counts(live, ref.edges)
    score.psi = psi(ref.expected, counts)
    score.kl = kl_divergence(counts, ref.expected)
    score.ks_statistic, score.ks_pvalue = ks_test(ref.sample, live)
    score.live = numeric_summary(live)
    if ref.kind is FeatureKind.TEXT:
        score.live["measure"] = "length"
    if options.histograms:
        score.histogram = _numeric_histogram(ref, live, shares(counts, 0.0))


def _score_categorical(
    ref: FeatureReference, live: list[str], options: ScoreOptions, score: FeatureScore
) -> None:
    index = {category: i for i, category in enumerate(ref.categories)}
    other = index[OTHER]
    counts = np.zeros(len(ref.categories), dtype=np.int64)
    for value in live:
        counts[index.get(value, other)] += 1
    score.psi = psi(ref.expected, counts)
    score.kl = kl_divergence(counts, ref.expected)
    score.live = categorical_summary(live)
    if options.histograms:
        score.histogram = {
            "categories": ref.categories,
            "reference": ref.expected,
            "live": shares(counts, 0.0).tolist(),
        }


def score_feature(ref: FeatureReference, values: list[Any], options: ScoreOptions) -> FeatureScore:
    """Score one feature's live values (the non-missing ones) against its reference; a feature
    with fewer than ``min_samples`` usable values gets no scores."""
    if ref.kind is FeatureKind.CATEGORICAL:
        categories = [_category(v) for v in values]
        score = FeatureScore(ref.name, ref.kind, len(categories), reference=ref.summary)
        if len(categories) >= options.min_samples:
            _score_categorical(ref, categories, options, score)
    else:
        array = numbers_of(values) if ref.kind is FeatureKind.NUMERIC else lengths_of(values)
        score = FeatureScore(ref.name, ref.kind, int(array.size), reference=ref.summary)
        if array.size >= options.min_samples:
            _score_numeric(ref, array, options, score)
    _judge(score, options.thresholds)
    return score


@dataclass(slots=True)
class DriftReport:
    """The scores of one live window."""

    status: DriftStatus
    samples: int
    """Live inputs in the window."""
    features: dict[str, FeatureScore] = field(default_factory=dict)

    @property
    def drifted(self) -> list[str]:
        """Names of the features past a threshold."""
        return [name for name, score in self.features.items() if score.drifted]

    def overall(self) -> dict[str, Any]:
        """The worst scores over the features: largest PSI, KS statistic and KL, smallest
        KS p-value, and the feature with the largest PSI."""
        scored = [s for s in self.features.values() if s.psi is not None]

        def worst(values: Iterable[float | None], pick: Any) -> float | None:
            present = [v for v in values if v is not None]
            return pick(present) if present else None

        top = max(scored, key=lambda s: s.psi or 0.0, default=None)
        return {
            "psi": worst((s.psi for s in scored), max),
            "ks": worst((s.ks_statistic for s in scored), max),
            "ks_pvalue": worst((s.ks_pvalue for s in scored), min),
            "kl": worst((s.kl for s in scored), max),
            "feature": top.name if top is not None else None,
            "drifted_features": self.drifted,
        }


def _values(rows: list[Row], name: str) -> list[Any]:
    return [row[name] for row in rows if row.get(name) is not None]


def score_window(
    reference: Reference | None, items: Sequence[Any], options: ScoreOptions
) -> DriftReport:
    """Score live inputs against a version's reference."""
    if reference is None:
        return DriftReport(DriftStatus.NO_REFERENCE, len(items))
    if len(items) < options.min_samples:
        return DriftReport(DriftStatus.INSUFFICIENT_DATA, len(items))
    rows = rows_of(items, options.feature_names)
    features = {
        name: score_feature(ref, _values(rows, name), options)
        for name, ref in reference.features.items()
    }
    report = DriftReport(DriftStatus.OK, len(items), features)
    if not any(s.psi is not None for s in features.values()):
        report.status = DriftStatus.INSUFFICIENT_DATA
    elif report.drifted:
        report.status = DriftStatus.DRIFT
    return report
