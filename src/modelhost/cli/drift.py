"""``modelhost drift …``: input drift of a running server's models, over HTTP (``--url`` /
``MODELHOST_URL``, ``--api-key`` / ``MODELHOST_API_KEY``).

* ``drift show MODEL`` prints the verdict and the score table.
* ``drift report MODEL`` writes a self-contained HTML report with plots (the ``reports``
  extra: matplotlib).
* ``drift reference MODEL VERSION FILE`` supplies a version's reference data (CSV, JSONL or
  JSON rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from modelhost.cli.common import DEFAULT_URL, ApiKey, Remote, Timeout, Url, fail, out, say

drift_app = typer.Typer(
    help="Input drift of a running server's models: show, report, reference.",
    no_args_is_help=True,
)

Version = Annotated[
    str | None,
    typer.Option("--version", help="Version, alias or stage (default: production)."),
]
_CONTENT_TYPES = {
    ".csv": "text/csv",
    ".jsonl": "application/x-ndjson",
    ".ndjson": "application/x-ndjson",
    ".json": "application/json",
}
_STATUS_STYLE = {"ok": "green", "drift": "bold red"}


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``modelhost`` command line."""
    app.add_typer(drift_app, name="drift")


def _fetch(
    remote: Remote, model: str, version: str | None, *, histograms: bool = False
) -> dict[str, Any]:
    params: dict[str, str] = {}
    if version:
        params["version"] = version
    if histograms:
        params["detail"] = "histograms"
    return remote.json("GET", f"/v1/models/{model}/drift", params=params)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if abs(value) < 1e-3 and value != 0:
        return f"{value:.1e}"
    return f"{value:.3f}"


def _score(value: Any, bad: bool) -> str:
    text = _number(value)
    return f"[bold red]{text}[/bold red]" if bad else text


def _table(body: dict[str, Any]) -> Table:
    t = body["thresholds"]
    table = Table(
        "feature",
        "kind",
        "live",
        f"PSI (≥{t['psi']:g})",
        f"KS (≥{t['ks_statistic']:g})",
        f"KS p (<{t['ks_pvalue']:g})",
        "KL",
        "verdict",
    )
    for name, f in body["features"].items():
        reasons = set(f.get("reasons") or [])
        verdict = (
            "[bold red]drifted[/]" if f["drifted"] else ("ok" if f["psi"] is not None else "-")
        )
        table.add_row(
            name,
            f["kind"],
            str(f["count"]),
            _score(f["psi"], "psi" in reasons),
            _score(f["ks_statistic"], "ks" in reasons),
            _score(f["ks_pvalue"], "ks" in reasons),
            _score(f["kl"], "kl" in reasons),
            verdict,
        )
    return table


@drift_app.command("show")
def drift_show(
    model: Annotated[str, typer.Argument(help="The model.")],
    version: Version = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw answer.")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Print a version's drift verdict and scores per feature."""
    with Remote(url, api_key, timeout) as remote:
        body = _fetch(remote, model, version)
    if as_json:
        import json

        out.print_json(json.dumps(body))
        return
    window = body["window"]
    style = _STATUS_STYLE.get(body["status"], "yellow")
    out.print(
        f"{body['model']}@{body['version']}: [{style}]{body['status']}[/] "
        f"({window['size']} live inputs, scoring from {window['min_samples']}; "
        f"alerting: {body['alerting']['state']})",
        highlight=False,
    )
    if body.get("reference_error"):
        say(body["reference_error"])
    if body["features"]:
        console = out if out.is_terminal else Console(width=200)
        console.print(_table(body))


@drift_app.command("report")
def drift_report(
    model: Annotated[str, typer.Argument(help="The model.")],
    version: Version = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="HTML file to write (default MODEL-VERSION-drift.html)."
        ),
    ] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 60.0,
) -> None:
    """Write an HTML report with plots of a version's drift (needs modelhost[reports])."""
    from modelhost.drift.report import render_report
    from modelhost.errors import MissingDependencyError

    with Remote(url, api_key, timeout) as remote:
        body = _fetch(remote, model, version, histograms=True)
    try:
        page = render_report(body)
    except MissingDependencyError as exc:
        raise fail(exc.message) from None
    target = output or Path(f"{body['model']}-{body['version']}-drift.html")
    target.write_text(page, encoding="utf-8")
    say(f"wrote {target} ({body['model']}@{body['version']}: {body['status']})")


@drift_app.command("reference")
def drift_reference(
    model: Annotated[str, typer.Argument(help="The model.")],
    version: Annotated[str, typer.Argument(help="The version it is the reference of.")],
    file: Annotated[
        Path,
        typer.Argument(
            help="Training data: CSV with a header row, JSONL or a JSON array of inputs.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 300.0,
) -> None:
    """Supply the reference data a version's live inputs are compared with."""
    content_type = _CONTENT_TYPES.get(file.suffix.lower(), "text/csv")
    with Remote(url, api_key, timeout) as remote:
        body = remote.json(
            "PUT",
            f"/v1/models/{model}/versions/{version}/drift/reference",
            content=file.read_bytes(),
            headers={"Content-Type": content_type},
        )
    kinds = ", ".join(f"{n} ({k})" for n, k in body["features"].items())
    say(f"{body['model']}@{body['version']}: reference of {body['rows']} rows: {kinds}")
