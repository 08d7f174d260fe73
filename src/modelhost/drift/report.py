"""The drift report: one self-contained HTML page from a ``GET .../drift?detail=histograms``
answer, with its plots embedded as PNG images (matplotlib, the ``reports`` extra).

From the top: a verdict a person can act on (drift or not, where, how much), a chart of every
feature's PSI and KS distance against its threshold, the score table with the values past a
threshold highlighted, then one panel per feature overlaying the live distribution on the
reference, with their summaries side by side, the recent alerts, and what the numbers mean.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from modelhost.errors import MissingDependencyError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

REFERENCE_COLOR = "#4c72b0"
LIVE_COLOR = "#dd8452"
DRIFT_COLOR = "#c0392b"
OK_COLOR = "#2e8b57"
_VERDICT_COLORS = {
    "ok": OK_COLOR,
    "drift": DRIFT_COLOR,
    "insufficient_data": "#7f8c8d",
    "no_reference": "#7f8c8d",
}
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;
color:#1f2933}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:32px 0 12px}
h3{font-size:17px;margin:0 0 8px}
.meta{color:#52606d;font-size:14px;margin:0}
.verdict{color:#fff;border-radius:10px;padding:18px 22px;margin:20px 0}
.verdict h2{margin:0 0 6px;font-size:24px} .verdict p{margin:0;font-size:15px}
table{border-collapse:collapse;background:#fff;width:100%;font-size:14px}
th,td{padding:7px 10px;border-bottom:1px solid #e4e7eb;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#eef1f4;font-weight:600}
td.bad{background:#fdecea;color:#a61b1b;font-weight:600}
.card{background:#fff;border-radius:10px;padding:16px;margin:14px 0;
box-shadow:0 1px 2px rgba(0,0,0,.06)}
.card.drifted{border-left:6px solid #c0392b} .card.ok{border-left:6px solid #2e8b57}
.grid{display:grid;grid-template-columns:3fr 2fr;gap:16px;align-items:start}
.badge{display:inline-block;border-radius:10px;padding:2px 9px;font-size:12px;color:#fff;
vertical-align:middle;margin-left:6px}
img{max-width:100%} .small{font-size:13px;color:#52606d}
footer{font-size:13px;color:#52606d;margin-top:36px;line-height:1.5}
"""


def _matplotlib() -> type[Figure]:
    """matplotlib's Figure (no pyplot: no global state, no display needed).

    Raises:
        MissingDependencyError: matplotlib is not installed (the ``reports`` extra).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("matplotlib", "reports") from None
    return Figure


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{encoded}">'


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 10**-digits or abs(value) >= 10**6):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _e(value: Any) -> str:
    return html.escape(str(value))


# -- the verdict ---------------------------------------------------------------------------------


def verdict(body: dict[str, Any]) -> tuple[str, str]:
    """The headline and the sentence under it."""
    status = body["status"]
    overall = body.get("overall") or {}
    thresholds = body.get("thresholds") or {}
    features = body.get("features") or {}
    window = body.get("window") or {}
    if status == "drift":
        drifted = overall.get("drifted_features") or []
        return (
            f"Drift detected in {len(drifted)} of {len(features)} features",
            f"{', '.join(drifted)} moved away from the training data. Largest PSI "
            f"{_fmt(overall.get('psi'))} ({overall.get('feature')}) against a threshold of "
            f"{_fmt(thresholds.get('psi'))}; consider retraining on recent data.",
        )
    if status == "ok":
        return (
            "No drift",
            f"All {len(features)} features are within their thresholds. Largest PSI "
            f"{_fmt(overall.get('psi'))} (threshold {_fmt(thresholds.get('psi'))}), largest KS "
            f"distance {_fmt(overall.get('ks'))}.",
        )
    if status == "insufficient_data":
        return (
            "Not enough live data yet",
            f"{window.get('size', 0)} live inputs in the window; scoring starts at "
            f"{window.get('min_samples')}.",
        )
    return "No reference to compare with", str(body.get("reference_error") or "")


# -- plots ---------------------------------------------------------------------------------------


def _bars(ax: Axes, names: Sequence[str], values: Sequence[float | None], threshold: float) -> None:
    present = [v or 0.0 for v in values]
    colors = [DRIFT_COLOR if v >= threshold else OK_COLOR for v in present]
    positions = list(range(len(names)))
    ax.barh(positions, present, color=colors)
    ax.set_yticks(positions, labels=list(names))
    ax.set_xlim(0, max([*present, threshold]) * 1.2)
    ax.axvline(
        threshold, color="#333", linestyle="--", linewidth=1, label=f"threshold {threshold:g}"
    )
    for y, value in zip(positions, values, strict=True):
        ax.text(
            value or 0.0, y, " n/a" if value is None else f" {value:.3g}", va="center", fontsize=8
        )
    ax.spines[["top", "right"]].set_visible(False)


def overview_plot(body: dict[str, Any], figure_cls: type[Figure]) -> str | None:
    """PSI and KS distance per feature, each against its threshold."""
    scored = [(n, f) for n, f in (body.get("features") or {}).items() if f.get("psi") is not None]
    if not scored:
        return None
    thresholds = body["thresholds"]
    names = [n for n, _ in scored]
    figure = figure_cls(figsize=(10, 0.45 * len(names) + 1.4), layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True)
    _bars(left, names, [f["psi"] for _, f in scored], thresholds["psi"])
    left.invert_yaxis()  # once: the axes share it
    left.set_title(
        f"Population stability index (PSI); threshold {thresholds['psi']:g}", fontsize=11
    )
    _bars(right, names, [f.get("ks_statistic") for _, f in scored], thresholds["ks_statistic"])
    right.tick_params(labelleft=False)
    right.set_title(
        f"Kolmogorov-Smirnov distance; threshold {thresholds['ks_statistic']:g}", fontsize=11
    )
    return _png(figure)


def _numeric_axes(ax: Axes, histogram: dict[str, Any]) -> None:
    edges = histogram["edges"]
    widths = [b - a for a, b in itertools.pairwise(edges)]
    for key, color, label in (
        ("reference", REFERENCE_COLOR, "reference (training)"),
        ("live", LIVE_COLOR, "live"),
    ):
        ax.bar(
            edges[:-1],
            histogram[key],
            width=widths,
            align="edge",
            color=color,
            alpha=0.55,
            label=label,
        )
    ax.set_ylabel("share of values")


def _categorical_axes(ax: Axes, histogram: dict[str, Any]) -> None:
    categories = [str(c) for c in histogram["categories"]]
    positions = list(range(len(categories)))
    ax.bar(
        [p - 0.2 for p in positions],
        histogram["reference"],
        width=0.4,
        color=REFERENCE_COLOR,
        label="reference (training)",
    )
    ax.bar(
        [p + 0.2 for p in positions], histogram["live"], width=0.4, color=LIVE_COLOR, label="live"
    )
    ax.set_xticks(positions, labels=categories, rotation=30, ha="right")
    ax.set_ylabel("share of values")


def feature_plot(name: str, feature: dict[str, Any], figure_cls: type[Figure]) -> str | None:
    """The reference and live distributions of one feature, overlaid."""
    histogram = feature.get("histogram")
    if not histogram:
        return None
    figure = figure_cls(figsize=(6.4, 3.2))
    ax = figure.subplots()
    draw: Callable[[Axes, dict[str, Any]], None] = (
        _categorical_axes if "categories" in histogram else _numeric_axes
    )
    draw(ax, histogram)
    label = f"{name} (length in characters)" if feature["kind"] == "text" else name
    ax.set_xlabel(label)
    ax.set_title(f"{name}: PSI {_fmt(feature.get('psi'))}", fontsize=11)
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(figure)


# -- tables --------------------------------------------------------------------------------------


def _cell(value: Any, bad: bool) -> str:
    return f'<td class="bad">{_fmt(value)}</td>' if bad else f"<td>{_fmt(value)}</td>"


def score_table(body: dict[str, Any]) -> str:
    """Every feature's scores; the ones past their threshold highlighted."""
    t = body["thresholds"]
    rows = []
    for name, f in (body.get("features") or {}).items():
        reasons = set(f.get("reasons") or [])
        verdict_cell = (
            "drifted" if f.get("drifted") else ("ok" if f.get("psi") is not None else "-")
        )
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_e(f['kind'])}</td><td>{f['count']}</td>"
            + _cell(f.get("psi"), "psi" in reasons)
            + _cell(f.get("ks_statistic"), "ks" in reasons)
            + _cell(f.get("ks_pvalue"), "ks" in reasons)
            + _cell(f.get("kl"), "kl" in reasons)
            + _cell(verdict_cell, bool(f.get("drifted")))
            + "</tr>"
        )
    kl = f"&ge; {t['kl']:g}" if t.get("kl") is not None else "reported only"
    head = (
        "<tr><th>feature</th><th>kind</th><th>live values</th>"
        f"<th>PSI<br><span class=small>&ge; {t['psi']:g}</span></th>"
        f"<th>KS distance<br><span class=small>&ge; {t['ks_statistic']:g}</span></th>"
        f"<th>KS p-value<br><span class=small>&lt; {t['ks_pvalue']:g}</span></th>"
        f"<th>KL<br><span class=small>{kl}</span></th><th>verdict</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


_SUMMARY_KEYS = ("count", "mean", "std", "min", "p05", "p50", "p95", "max")


def summary_table(feature: dict[str, Any]) -> str:
    """Reference and live summaries side by side."""
    ref, live = feature.get("reference") or {}, feature.get("live") or {}
    if feature["kind"] == "categorical":
        ref_top = {k: v for k, v in ref.get("top", [])}
        live_top = {k: v for k, v in live.get("top", [])}
        names = list(dict.fromkeys([*ref_top, *live_top]))[:10]
        rows = "".join(
            f"<tr><td>{_e(n)}</td><td>{_fmt(ref_top.get(n))}</td><td>{_fmt(live_top.get(n))}</td></tr>"
            for n in names
        )
        return f"<table><tr><th>category</th><th>reference</th><th>live</th></tr>{rows}</table>"
    rows = "".join(
        f"<tr><td>{k}</td><td>{_fmt(ref.get(k))}</td><td>{_fmt(live.get(k))}</td></tr>"
        for k in _SUMMARY_KEYS
        if k in ref or k in live
    )
    return f"<table><tr><th></th><th>reference</th><th>live</th></tr>{rows}</table>"


def _feature_card(name: str, feature: dict[str, Any], figure_cls: type[Figure]) -> str:
    drifted = bool(feature.get("drifted"))
    scored = feature.get("psi") is not None
    badge_color = DRIFT_COLOR if drifted else (OK_COLOR if scored else "#7f8c8d")
    badge = "drifted" if drifted else ("ok" if scored else "not scored")
    plot = feature_plot(name, feature, figure_cls) or "<p class=small>No live values yet.</p>"
    why = ""
    if drifted:
        why = f"<p class=small>Past threshold: {', '.join(feature.get('reasons') or [])}.</p>"
    return (
        f'<div class="card {"drifted" if drifted else "ok"}">'
        f"<h3>{_e(name)} <span class=small>({_e(feature['kind'])})</span>"
        f'<span class=badge style="background:{badge_color}">{badge}</span></h3>{why}'
        f"<div class=grid><div>{plot}</div><div>{summary_table(feature)}</div></div></div>"
    )


def _alerts(body: dict[str, Any]) -> str:
    alerts = body.get("alerts") or []
    if not alerts:
        return "<p class=small>No drift alert has been sent for this version.</p>"
    rows = []
    for alert in alerts:
        deliveries = alert.get("deliveries") or []
        last = deliveries[-1] if deliveries else {}
        delivered = last.get("status_code") or last.get("error") or "not sent"
        psi = (alert.get("overall") or {}).get("psi")
        rows.append(
            f"<tr><td>{_e(alert['at'])}</td><td>{_e(alert['event'])}</td>"
            f"<td>{_e(', '.join(alert.get('drifted_features') or []) or '-')}</td>"
            f"<td>{_fmt(psi)}</td><td>{_e(delivered)}</td></tr>"
        )
    head = "<tr><th>when</th><th>event</th><th>features</th><th>PSI</th><th>webhook</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


_METHODS = """<footer><h3>How to read this</h3>
<p><b>PSI</b> (population stability index) compares the share of live values in each of the
reference's quantile bins with the share of training values: under 0.1 is stable, 0.1 to 0.2 is
moving, over 0.2 has shifted. <b>KS distance</b> is the largest gap between the two cumulative
distributions (0 to 1), with the Kolmogorov-Smirnov test's p-value: both must pass their
thresholds. <b>KL</b> is the Kullback-Leibler divergence of the live distribution from the
reference, over the same bins, in nats. A feature has drifted when any test passes its
threshold; the version's overall scores are the worst over its features. Text fields are
compared by their length in characters.</p></footer>"""


def render_report(body: dict[str, Any], *, generated: datetime | None = None) -> str:
    """The HTML report of one drift answer (``GET .../drift?detail=histograms``).

    Raises:
        MissingDependencyError: matplotlib is not installed (the ``reports`` extra).
    """
    figure_cls = _matplotlib()
    ref = f"{body['model']}@{body['version']}"
    headline, detail = verdict(body)
    color = _VERDICT_COLORS.get(body["status"], "#7f8c8d")
    window = body.get("window") or {}
    reference = body.get("reference") or {}
    when = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    meta = (
        f"Generated {when} &middot; window of {window.get('size', 0)} live inputs"
        + (f" from {_e(window['since'])} to {_e(window['until'])}" if window.get("since") else "")
        + (
            f" &middot; reference: {_e(reference.get('source'))}, {reference.get('rows')} rows"
            if reference
            else ""
        )
    )
    features = body.get("features") or {}
    ordered = sorted(features.items(), key=lambda kv: -(kv[1].get("psi") or 0.0))
    overview = overview_plot(body, figure_cls)
    cards = "".join(_feature_card(n, f, figure_cls) for n, f in ordered)
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>Drift report: {_e(ref)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>Input drift: {_e(ref)}</h1><p class=meta>{meta}</p>",
        f'<section class=verdict style="background:{color}"><h2>{_e(headline)}</h2>'
        f"<p>{_e(detail)}</p></section>",
    ]
    if features:
        parts.append("<h2>Scores</h2>" + (overview or "") + score_table(body))
        parts.append("<h2>Features, worst first</h2>" + cards)
    parts.append("<h2>Alerts</h2>" + _alerts(body))
    parts.append(_METHODS + "</main></body></html>")
    return "\n".join(parts)
