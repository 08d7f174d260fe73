"""``modelhost replay`` and ``modelhost provenance list|show``: the provenance records of a
running server, over HTTP (``--url`` / ``MODELHOST_URL``, ``--api-key`` /
``MODELHOST_API_KEY``; the key needs the ``provenance`` scope, and ``predict`` to replay).

    modelhost replay REQUEST_ID [--version V]
    modelhost replay --model M --since 1h --against V [--until T] [--limit N]
    modelhost provenance list [--model M] [--since 1h] [--status error] ...
    modelhost provenance show REQUEST_ID
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from modelhost.cli.common import (
    DEFAULT_URL,
    ApiKey,
    Remote,
    Timeout,
    Url,
    fail,
    out,
    print_json,
    print_table,
    say,
)

provenance_app = typer.Typer(
    help="Provenance records of a running server: list, show (see also `modelhost replay`).",
    no_args_is_help=True,
)
#: Longest value shown in a table cell.
_CELL = 60

Json = Annotated[bool, typer.Option("--json", help="Print the server's JSON answer.")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``modelhost`` command line."""
    app.command("replay")(replay)
    app.add_typer(provenance_app, name="provenance")


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def _when(stamp: str) -> str:
    return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _diff_table(diff: list[dict[str, Any]]) -> Table:
    table = Table(Column("path", no_wrap=True), "original", "replay", "distance")
    for row in diff:
        table.add_row(
            row["path"], _cell(row["original"]), _cell(row["replay"]), f"{row['distance']:.3g}"
        )
    return table


def _show_one(body: dict[str, Any]) -> None:
    original, again = body["original"], body["replay"]
    say(
        f"replay of {original['request_id']}: {original['model']}@{original['version']} "
        f"(recorded, {original['status']}) -> {again['model']}@{again['version'] or '?'} "
        f"(replay {again['request_id']}, {again['status']})"
    )
    if again["status"] != "ok":
        error = again["error"] or {}
        say(f"  replay failed: {error.get('type')}: {error.get('message')}")
    if body["same"]:
        out.print("  outputs: [green]the same[/green]")
    else:
        out.print(
            f"  outputs: [yellow]differ[/yellow] (largest distance {body['distance']:.3g}, "
            f"{len(body['diff'])} differences shown)"
        )
    latency = body["latency_ms"]
    say(f"  latency: {_ms(latency['original'])} recorded, {_ms(latency['replay'])} replayed")
    if body["diff"]:
        print_table(_diff_table(body["diff"]))


def _show_window(body: dict[str, Any]) -> None:
    versions = ", ".join(f"{v} x{n}" for v, n in body["original_versions"].items()) or "none"
    say(
        f"replayed {body['replayed']} {body['model']} requests against {body['against']} "
        f"(recorded on {versions}); {body['answered']} answered, {body['failed']} failed, "
        f"{body['not_replayable']} in the window not replayable"
    )
    if body["agreement"] is not None:
        say(
            f"  agreement {body['agreement'] * 100:.1f} % (tolerance {body['tolerance']:g}), "
            f"exactly the same {body['exact'] * 100:.1f} %"
        )
    latency = body["latency_ms"]
    change = latency["change_pct"]
    say(
        f"  latency p50: {_ms(latency['original_p50'])} recorded -> "
        f"{_ms(latency['replay_p50'])} replayed"
        + (f" ({change:+.1f} %)" if change is not None else "")
    )
    if body["errors"]:
        say("  errors: " + ", ".join(f"{k} x{n}" for k, n in body["errors"].items()))
    if not body["most_different"]:
        return
    table = Table(
        Column("request", no_wrap=True),
        "distance",
        "path",
        "original",
        "replay",
        title="most different",
    )
    for example in body["most_different"]:
        first = (
            example["diff"][0] if example["diff"] else {"path": "", "original": "", "replay": ""}
        )
        table.add_row(
            example["request_id"],
            f"{example['distance']:.3g}",
            first["path"],
            _cell(first["original"]),
            _cell(first["replay"]),
        )
    print_table(table)


def replay(
    request_id: Annotated[
        str | None, typer.Argument(help="Request id (X-Request-ID) or record id to replay.")
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(
            help="Version, alias or stage to replay on (default: the one that served it)."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Replay a window of this model's requests.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Window start: 30m, 1h, 7d, an ISO time or a unix time.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Window end (default: now).")] = None,
    against: Annotated[
        str | None, typer.Option(help="Version, alias or stage to replay on.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Most requests replayed (newest first).")] = 100,
    tolerance: Annotated[
        float, typer.Option(help="Largest distance at which two answers still agree.")
    ] = 1e-4,
    as_json: Json = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 300.0,
) -> None:
    """Run recorded requests again and show how the answers differ.

    One request: REQUEST_ID [--version V]. A window: --model M --since 1h --against V, which
    reports the agreement rate, the latency change and the most different examples. Replays
    are recorded (marked as replays) and never count as live traffic.
    """
    window = (model, since, against)
    if request_id is not None:
        if any(window):
            raise fail("give a REQUEST_ID or --model/--since/--against, not both")
        with Remote(url, api_key, timeout) as remote:
            body = remote.json(
                "POST",
                f"/v1/provenance/{request_id}/replay",
                json={"version": version} if version else {},
            )
        if as_json:
            print_json(body)
        else:
            _show_one(body)
        return
    if not all(window):
        raise fail("give a REQUEST_ID, or --model, --since and --against to replay a window")
    payload: dict[str, Any] = {
        "model": model,
        "since": since,
        "against": against,
        "limit": limit,
        "tolerance": tolerance,
    }
    if until:
        payload["until"] = until
    with Remote(url, api_key, timeout) as remote:
        body = remote.json("POST", "/v1/provenance/replay", json=payload)
    if as_json:
        print_json(body)
    else:
        _show_window(body)


@provenance_app.command("list")
def list_records(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    version: Annotated[str | None, typer.Option(help="Only this version.")] = None,
    since: Annotated[str | None, typer.Option(help="Started at or after: 1h, ISO, unix.")] = None,
    until: Annotated[str | None, typer.Option(help="Started before: 1h, ISO, unix.")] = None,
    status: Annotated[str | None, typer.Option(help="ok or error.")] = None,
    principal: Annotated[str | None, typer.Option(help="tenant/subject or subject.")] = None,
    protocol: Annotated[
        str | None, typer.Option(help="v1, openai, v2, grpc, jobs, replay.")
    ] = None,
    replays: Annotated[str, typer.Option(help="exclude, include or only.")] = "exclude",
    limit: Annotated[int, typer.Option(help="How many (1 to 200), newest first.")] = 20,
    as_json: Json = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """List provenance records, newest first."""
    filters = {
        "model": model,
        "version": version,
        "since": since,
        "until": until,
        "status": status,
        "principal": principal,
        "protocol": protocol,
    }
    params: dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
    params.update(limit=limit, replays=replays)
    with Remote(url, api_key, timeout) as remote:
        body = remote.json("GET", "/v1/provenance", params=params)
    if as_json:
        print_json(body)
        return
    columns = ("created", "model", "protocol", "principal", "status", "latency", "payload")
    table = Table(Column("request", no_wrap=True), *columns)
    for record in body["data"]:
        table.add_row(
            record["request_id"],
            _when(record["created"]),
            record["model"] + (f"@{record['version']}" if record["version"] else ""),
            record["protocol"],
            record["principal"],
            record["status"]
            if record["status"] == "ok"
            else f"{record['status']} ({(record['error'] or {}).get('type', '')})",
            _ms(record["duration_ms"]),
            record["payload"],
        )
    print_table(table)


@provenance_app.command("show")
def show(
    request_id: Annotated[str, typer.Argument(help="Request id (X-Request-ID) or record id.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Print one provenance record as JSON (the newest one of a request id)."""
    with Remote(url, api_key, timeout) as remote:
        print_json(remote.json("GET", f"/v1/provenance/{request_id}"))
