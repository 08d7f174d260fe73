"""``modelhost deploy …``: canary, shadow and blue-green rollouts of a running server, over HTTP
(``--url`` / ``MODELHOST_URL``, ``--api-key`` / ``MODELHOST_API_KEY``; the key needs the
``deploy`` scope).

``modelhost deploy MODEL --canary 1.1.0 --weight 10`` changes a deployment (it is short for
``modelhost deploy set MODEL …``); ``status``, ``promote``, ``rollback``, ``history`` and
``list`` are subcommands.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from modelhost.cli.common import DEFAULT_URL, ApiKey, Remote, Timeout, Url, fail, out, say


class _DeployGroup(TyperGroup):
    """Reads ``deploy MODEL --options`` as ``deploy set MODEL --options``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's own click Context
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["set", *args]
        return super().parse_args(ctx, args)


deploy_app = typer.Typer(
    cls=_DeployGroup,
    help="Roll out model versions on a running server: canary (with a ramp and automatic "
    "rollback), shadows, promotion through the gates, rollback. "
    "`modelhost deploy MODEL --canary 1.1.0 --weight 10` sets a canary.",
    no_args_is_help=True,
)


def _guards(pairs: list[str]) -> dict[str, float]:
    guards: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            if not sep:
                raise ValueError
            guards[key.strip()] = float(value)
        except ValueError:
            raise fail(f"--guard takes NAME=NUMBER, e.g. min_samples=200; got {pair!r}") from None
    return guards


def change_body(
    canary: str | None,
    weight: float | None,
    ramp: str | None,
    step: float,
    promote: bool,
    options: dict[str, Any],
) -> dict[str, Any]:
    """The PATCH body the ``set`` options ask for."""
    body: dict[str, Any] = {}
    if options.get("end_canary"):
        body["canary"] = None
    elif canary is not None:
        body["canary"] = canary
    if weight is not None:
        body["weight"] = weight
    if ramp is not None:
        try:
            steps = [float(s) for s in ramp.split(",") if s.strip()]
        except ValueError:
            raise fail(f"--ramp takes weights such as 1,5,25,100; got {ramp!r}") from None
        body["ramp"] = {"steps": steps, "interval_s": step, "promote": promote}
    for key in ("add_shadow", "remove_shadow", "sticky"):
        if options.get(key) is not None:
            body[key] = options[key]
    if options.get("guards"):
        body["guards"] = _guards(options["guards"])
    return body


@deploy_app.command("set")
def set_deployment(
    model: Annotated[str, typer.Argument(help="Model name.")],
    canary: Annotated[str | None, typer.Option(help="Version to run as the canary.")] = None,
    weight: Annotated[
        float | None, typer.Option(help="Percent of unpinned traffic the canary takes.")
    ] = None,
    ramp: Annotated[
        str | None, typer.Option(help="Ramp the canary through these weights: 1,5,25,100.")
    ] = None,
    step: Annotated[float, typer.Option(help="Seconds each ramp step must run healthy.")] = 300,
    promote: Annotated[
        bool, typer.Option(help="Promote the canary when the ramp completes.")
    ] = True,
    shadow: Annotated[str | None, typer.Option(help="Add a shadow version.")] = None,
    unshadow: Annotated[str | None, typer.Option(help="Stop shadowing a version.")] = None,
    end_canary: Annotated[bool, typer.Option(help="Stop the canary (weight 0).")] = False,
    sticky: Annotated[
        str | None, typer.Option(help="principal, or session (the X-Session-ID header).")
    ] = None,
    guard: Annotated[
        list[str] | None,
        typer.Option(
            help="A guard setting NAME=NUMBER (window_s, min_samples, latency_ratio, "
            "max_error_rate, max_accuracy_drop, min_feedback); repeat for more."
        ),
    ] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Change a deployment: canary and weight, ramp, shadows, guards, stickiness."""
    options = {
        "end_canary": end_canary,
        "add_shadow": shadow,
        "remove_shadow": unshadow,
        "sticky": sticky,
        "guards": guard or [],
    }
    body = change_body(canary, weight, ramp, step, promote, options)
    if not body:
        raise fail("nothing to change: give --canary, --weight, --ramp, --shadow, ... (--help)")
    with Remote(url, api_key, timeout) as remote:
        spec = remote.json("PATCH", f"/v1/models/{model}/deployment", json=body)
    say(summary(spec))


def summary(spec: dict[str, Any]) -> str:
    """One line: ``iris: canary 1.1.0 at 10% (canary); shadows 1.2.0``."""
    parts = [f"{spec['model']}:"]
    if spec.get("canary"):
        parts.append(f"canary {spec['canary']} at {spec['weight']:g}% ({spec['state']})")
    else:
        parts.append(f"no canary ({spec['state']})")
    if spec.get("ramp"):
        steps = ",".join(f"{s:g}" for s in spec["ramp"]["steps"])
        parts.append(f"ramp {steps} every {spec['ramp']['interval_s']:g}s")
    if spec.get("shadows"):
        parts.append("shadows " + ", ".join(spec["shadows"]))
    return " ".join(parts)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _live_table(status: dict[str, Any]) -> Table:
    table = Table("side", "version", "requests", "errors", "error rate", "p50 ms", "p95 ms")
    feedback = status.get("feedback") or {}
    table.add_column("accuracy")
    table.add_column("feedback")
    for side, stats in (status.get("live") or {}).items():
        version = status["production"] if side == "production" else status["canary"]
        fb = feedback.get(version) or {}
        accuracy = fb.get("accuracy")
        table.add_row(
            side,
            version,
            str(stats.get("requests", 0)),
            str(stats.get("errors", 0)),
            f"{float(stats.get('error_rate') or 0):.4f}",
            _ms(stats.get("p50_ms")),
            _ms(stats.get("p95_ms")),
            "-" if accuracy is None else f"{accuracy:.3f}",
            str(fb.get("n", 0)),
        )
    return table


def _shadow_table(reports: list[dict[str, Any]]) -> Table:
    table = Table("shadow", "compared", "agreement", "errors", "dropped", "p50 Δ ms", "p95 Δ ms")
    for report in reports:
        agreement = report.get("agreement")
        difference = (report.get("latency") or {}).get("difference") or {}
        table.add_row(
            str(report.get("version")),
            str(report.get("requests", 0)),
            "-" if agreement is None else f"{agreement:.3f}",
            str(report.get("errors", 0)),
            str(report.get("dropped", 0)),
            _ms(difference.get("p50_ms")),
            _ms(difference.get("p95_ms")),
        )
    return table


@deploy_app.command("status")
def status(
    model: Annotated[str, typer.Argument(help="Model name.")],
    window: Annotated[
        float | None, typer.Option(help="Seconds of traffic to report (the guards' window).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Production, canary, shadows, live numbers per side, shadow agreement, recent history."""
    params = {"window_s": str(window)} if window else {}
    with Remote(url, api_key, timeout) as remote:
        body = remote.json("GET", f"/v1/models/{model}/deployment", params=params)
    if as_json:
        say(json.dumps(body, indent=2))
        return
    say(f"{model}: production {body['production'] or '-'}; " + summary(body).split(": ", 1)[1])
    if body.get("reason"):
        say("last automatic action: " + json.dumps(body["reason"]))
    out.print(_live_table(body))
    reports = body.get("shadow_reports") or []
    if reports:
        out.print(_shadow_table(reports))
        for report in reports:
            for example in (report.get("examples") or [])[:3]:
                say(f"  {report.get('version')} disagreed: " + json.dumps(example)[:300])
    for event in body.get("history") or []:
        say(f"{event['at']}  {event['actor']}  {event['action']}  {json.dumps(event['detail'])}")


def _report(body: dict[str, Any]) -> None:
    verb = "promoted" if body.get("action") == "promote" else "rolled back to"
    say(
        f"{body['model']}: {verb} {body['version']} (was {body.get('previous') or '-'}) "
        f"in {body.get('seconds', 0):.2f}s"
    )
    if body.get("forced"):
        say("forced: skipped " + (", ".join(body.get("skipped") or []) or "nothing"))
    for name, gate in (body.get("gates") or {}).items():
        if isinstance(gate, dict):
            say(f"  gate {name}: {'passed' if gate.get('passed') else 'FAILED'}")


@deploy_app.command("promote")
def promote(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        str | None, typer.Argument(help="Version to promote (default: the canary).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Promote even if a gate fails (audited, says what it skipped).")
    ] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 300.0,
) -> None:
    """Load and warm a version, run its promotion gates, then switch production to it."""
    body: dict[str, Any] = {"force": force}
    if version:
        body["version"] = version
    with Remote(url, api_key, timeout) as remote:
        _report(remote.json("POST", f"/v1/models/{model}/deployment/promote", json=body))


@deploy_app.command("rollback")
def rollback(
    model: Annotated[str, typer.Argument(help="Model name.")],
    to: Annotated[
        str | None, typer.Option(help="Version to return to (default: the previous one).")
    ] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 300.0,
) -> None:
    """Return production to the previous production version (loaded first, then switched)."""
    body = {"to": to} if to else {}
    with Remote(url, api_key, timeout) as remote:
        _report(remote.json("POST", f"/v1/models/{model}/deployment/rollback", json=body))


@deploy_app.command("history")
def history(
    model: Annotated[str, typer.Argument(help="Model name.")],
    limit: Annotated[int, typer.Option(help="Most entries.")] = 50,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Every change of a deployment, newest first, with who and why."""
    with Remote(url, api_key, timeout) as remote:
        body = remote.json(
            "GET", f"/v1/models/{model}/deployment/history", params={"limit": str(limit)}
        )
    for event in body["data"]:
        say(f"{event['at']}  {event['actor']}  {event['action']}  {json.dumps(event['detail'])}")


@deploy_app.command("list")
def list_deployments(
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Every model with a canary, shadows or rollout history."""
    with Remote(url, api_key, timeout) as remote:
        body = remote.json("GET", "/v1/deployments")
    for spec in body["data"]:
        say(summary(spec))


def register(app: typer.Typer) -> None:
    """Add ``modelhost deploy`` to the command line."""
    app.add_typer(deploy_app, name="deploy")
