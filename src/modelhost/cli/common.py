"""What the command groups share: the consoles and how a line, a table, JSON and an error are
printed; the options and the client of a running server (``--url`` / ``MODELHOST_URL``,
``--api-key`` / ``MODELHOST_API_KEY``); and the in-process helpers of the registry commands
(the local registry, the actor, a push and a promotion through the gates run here).

Groups import this module, never :mod:`modelhost.cli` (which imports every group). Heavy
imports (httpx, the app, the registry) happen inside the functions, so the CLI starts fast.
"""

from __future__ import annotations

import getpass
import json
import os
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from modelhost.registry import Registry, Stage
    from modelhost.rollouts.promotion import PromotionReport

out = Console()
err = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8000"
#: Most columns a table takes when standard output is not a terminal.
_PIPE_WIDTH = 240

Url = Annotated[str, typer.Option(envvar="MODELHOST_URL", help="Server URL.")]
ApiKey = Annotated[str | None, typer.Option(envvar="MODELHOST_API_KEY", help="API key (mhk_…).")]
Timeout = Annotated[float, typer.Option(help="Seconds one HTTP call may take.")]
Force = Annotated[
    bool, typer.Option(help="Promote even if a gate fails (audited; says what it skipped).")
]


# -- output --------------------------------------------------------------------------------------


def say(text: str, console: Console = out) -> None:
    """Print a plain line, unwrapped (paths and ids stay whole in scripts and logs)."""
    console.print(text, highlight=False, soft_wrap=True, markup=False)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr; raise the returned exit (code 1)."""
    err.print("[red]error:[/red] ", end="")
    say(message, err)
    return typer.Exit(code=1)


def fail_markup(message: str) -> typer.Exit:
    """Like :func:`fail`, but ``message`` is rich markup, as the registry and server commands
    (``models``, ``serve``, ``worker``, ``predict``) have always printed it."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def print_table(table: Table) -> None:
    """A table at its natural width when standard output is not a terminal (a pipe, a log),
    rather than cut to rich's default 80 columns."""
    console = out if out.is_terminal else Console(width=_PIPE_WIDTH)
    console.print(table)


def print_json(body: Any) -> None:
    """Pretty-print a JSON value on standard output."""
    out.print_json(json.dumps(body))


# -- a running server over HTTP ------------------------------------------------------------------


def error_message(response: httpx.Response) -> str:
    """The server's error body as one line: ``404 not_found_error: no batch 'x'``."""
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['type']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text[:500]}"


class Remote:
    """A modelhost server over HTTP; an unreachable server or an error answer becomes
    :func:`fail`."""

    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Remote:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a 4xx/5xx answer fails with the server's message."""
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise fail(f"cannot reach {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise fail(error_message(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One request answered with a JSON object."""
        body: dict[str, Any] = self.call(method, path, **kwargs).json()
        return body

    def download(self, path: str, params: dict[str, str], sink: Any) -> int:
        """Stream a JSONL answer into ``sink`` (a binary file); returns the lines written."""
        import httpx

        lines = 0
        try:
            with self.http.stream("GET", path, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise fail(error_message(response))
                for chunk in response.iter_bytes():
                    sink.write(chunk)
                    lines += chunk.count(b"\n")
        except httpx.HTTPError as exc:
            raise fail(f"cannot reach {self.url}: {exc}") from None
        return lines


# -- the local registry, in this process ---------------------------------------------------------


def actor() -> str:
    """Who is acting, for the registry's history: ``MODELHOST_ACTOR`` or the login name."""
    try:
        return os.environ.get("MODELHOST_ACTOR") or getpass.getuser()
    except OSError:
        return "unknown"


def local_registry() -> Registry:
    """The registry of this machine's settings (``MODELHOST_HOME``, ``MODELHOST_DATABASE_URL``)."""
    from modelhost.config import Settings
    from modelhost.registry import build_registry

    return build_registry(Settings())


def history_table(registry: Registry, model: str) -> Table:
    """The registry's change history of ``model`` as a table."""
    table = Table("when", "who", "version", "action", "from", "to")
    for h in registry.history(model):
        table.add_row(
            h.at.strftime("%Y-%m-%d %H:%M:%S"),
            h.actor,
            h.version or "",
            h.action,
            h.from_value or "",
            h.to_value or "",
        )
    return table


async def promote_here(model: str, version: str, *, force: bool) -> PromotionReport:
    """Promote through the gates in this process: the version is loaded here, its golden set
    evaluated on it and its schemas compared with production's, as a server would."""
    from modelhost.app import build_services, close_services
    from modelhost.config import Settings

    services = build_services(Settings())
    try:
        await services.manager.refresh(load=False)
        return await services.promoter.promote(model, version, actor=actor(), force=force)
    finally:
        await close_services(services)


def promoted(report: PromotionReport) -> None:
    """Say what a promotion did (or that the version was production already)."""
    ref = f"{report.model}@{report.version}"
    if not report.changed:
        out.print(f"{ref} is production already", highlight=False)
        return
    out.print(
        f"{ref} is now production (was {report.previous or 'none'}); gates passed"
        if not report.forced
        else f"{ref} is now production (was {report.previous or 'none'}); FORCED past: "
        + ", ".join(report.skipped),
        highlight=False,
    )


def push_version(directory: Path, stage: Stage, *, force: bool) -> None:
    """Validate a model version directory, store its files by sha256 and register it;
    ``Stage.PRODUCTION`` registers it in staging, then promotes it through the gates here."""
    import asyncio

    from modelhost.registry import Stage

    if not directory.is_dir():
        raise fail_markup(f"{directory} is not a directory")
    gated = stage is Stage.PRODUCTION
    info = local_registry().push(directory, actor=actor(), stage=Stage.STAGING if gated else stage)
    out.print(
        f"registered {info.ref} ({info.runtime}, {info.stage.value}, "
        f"{len(info.files)} files, {info.size_bytes} bytes)",
        highlight=False,
    )
    if gated:
        promoted(asyncio.run(promote_here(info.model, info.version, force=force)))
