"""``modelhost usage``: requests, tokens, compute and cost of a running server, over HTTP
(``GET /v1/usage``; ``--url`` / ``MODELHOST_URL``, ``--api-key`` / ``MODELHOST_API_KEY``)."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from modelhost.cli.common import DEFAULT_URL, ApiKey, Remote, Timeout, Url, fail, out

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NUMBERS = (
    "requests",
    "errors",
    "cache_hits",
    "input_tokens",
    "output_tokens",
    "compute_seconds",
    "cost",
    "cost_saved",
)
#: Most columns the table takes when standard output is not a terminal.
_PIPE_WIDTH = 240


def when(value: str | None, now: float) -> str | None:
    """A time the server reads: ``7d``, ``12h``, ``30m`` (that long before now) become ISO
    8601; anything else (ISO 8601, unix seconds) is passed on as it is."""
    if value is None:
        return None
    match = _RELATIVE.match(value.strip())
    if match is None:
        return value
    ago = float(match.group(1)) * _SECONDS[match.group(2)]
    return datetime.fromtimestamp(now - ago, UTC).isoformat().replace("+00:00", "Z")


def _cell(name: str, value: Any) -> str:
    if name in ("cost", "cost_saved"):
        return f"{float(value):.6f}"
    if name == "compute_seconds":
        return f"{float(value):.3f}"
    return str(value)


def usage_table(body: dict[str, Any]) -> Table:
    """The report as a table: a line per group and currency, then a total per currency."""
    dims = [d for d in ("tenant", "principal", "model", "version") if d in body["group_by"]]
    table = Table(*dims, "currency", *(n.replace("_", " ") for n in _NUMBERS))
    last = len(body["data"]) - 1
    for index, line in enumerate(body["data"]):
        table.add_row(
            *(str(line[d]) for d in dims),
            line.get("currency") or "",
            *(_cell(n, line[n]) for n in _NUMBERS),
            end_section=index == last,
        )
    for total in body["totals"]:
        table.add_row(
            *(["total"] + [""] * (len(dims) - 1) if dims else []),
            total.get("currency") or "",
            *(_cell(n, total[n]) for n in _NUMBERS),
            style="bold",
        )
    return table


def usage(
    since: Annotated[
        str | None,
        typer.Option(help="Start: 7d, 24h, 30m ago, an ISO 8601 time or unix seconds (30d)."),
    ] = None,
    until: Annotated[str | None, typer.Option(help="End, the same way (now).")] = None,
    group_by: Annotated[
        str, typer.Option(help="Comma-separated: tenant, principal, model, version.")
    ] = "model",
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    principal: Annotated[str | None, typer.Option(help="Only this principal.")] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Only this tenant (system admins; others see theirs).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON.")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Requests, errors, tokens, compute seconds and cost, summed per model (or tenant,
    principal, version) over a time window."""
    now = time.time()
    params = {
        "since": when(since, now),
        "until": when(until, now),
        "group_by": group_by,
        "model": model,
        "principal": principal,
        "tenant": tenant,
    }
    with Remote(url, api_key, timeout) as remote:
        body = remote.json("GET", "/v1/usage", params={k: v for k, v in params.items() if v})
    if as_json:
        out.print_json(json.dumps(body))
        return
    if not body["data"]:
        raise fail(f"no usage from {body['since']} to {body['until']}")
    console = out if out.is_terminal else Console(width=_PIPE_WIDTH)
    console.print(f"usage from {body['since']} to {body['until']}", highlight=False)
    console.print(usage_table(body))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``modelhost`` command line."""
    app.command("usage")(usage)
