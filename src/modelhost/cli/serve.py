"""``modelhost serve``, ``modelhost worker`` and ``modelhost demo``: run the HTTP server (uvicorn
or granian), run async jobs without HTTP, build the demo models the server serves."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import typer

from modelhost.cli.common import err, fail_markup, local_registry, out
from modelhost.config import HttpServer, Settings
from modelhost.errors import MissingDependencyError, ModelhostError


def register(app: typer.Typer) -> None:
    """Add ``modelhost serve``, ``worker`` and ``demo`` to the command line."""
    app.command()(serve)
    app.command()(worker)
    app.command("demo")(demo_cmd)


def _serve_granian(settings: Settings, log_level: str, log_config: dict[str, Any]) -> None:
    """Granian (Rust HTTP server; the ASGI interface runs the lifespan in every worker)."""
    try:
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces, Loops
        from granian.log import LogLevels
    except ImportError:
        raise fail_markup(MissingDependencyError("granian", extra="granian").message) from None

    Granian(
        "modelhost.app:create_app",
        factory=True,
        address=settings.server.host,
        port=settings.server.port,
        interface=Interfaces.ASGI,  # runs the ASGI lifespan in every worker process
        workers=settings.server.workers,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        log_level=LogLevels(log_level.lower()),
        log_dictconfig=log_config,
        log_access=settings.server.access_log,
    ).serve()


def _serve_uvicorn(settings: Settings, log_level: str, log_config: dict[str, Any]) -> None:
    """uvicorn with uvloop and httptools (the default)."""
    import uvicorn

    uvicorn.run(
        "modelhost.app:create_app",
        factory=True,
        host=settings.server.host,
        port=settings.server.port,
        workers=settings.server.workers,
        access_log=settings.server.access_log,
        log_level=log_level,
        log_config=log_config,  # applied in every worker process too
        loop="uvloop",
        http="httptools",
    )


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port.")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC (Open Inference Protocol v2) port; 0 turns it off.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Server processes on one port.")] = None,
    server: Annotated[
        HttpServer | None,
        typer.Option(help="HTTP server: uvicorn (default) or granian."),
    ] = None,
    demo: Annotated[bool, typer.Option(help="Build and serve the demo models.")] = True,
    auth: Annotated[
        bool, typer.Option(help="Require API keys (--no-auth: every caller is an admin).")
    ] = True,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the HTTP server (the demo models are built on first start)."""
    if host is not None:
        os.environ["MODELHOST_SERVER__HOST"] = host
    if port is not None:
        os.environ["MODELHOST_SERVER__PORT"] = str(port)
    if grpc_port is not None:
        os.environ["MODELHOST_SERVER__GRPC_PORT"] = str(grpc_port)
    if workers is not None:
        os.environ["MODELHOST_SERVER__WORKERS"] = str(workers)
    if server is not None:
        os.environ["MODELHOST_SERVER__HTTP_SERVER"] = server.value
    if not demo:
        os.environ["MODELHOST_DEMO__ENABLED"] = "false"
    if not auth:
        os.environ["MODELHOST_AUTH__ENABLED"] = "false"
        err.print(
            "[bold red]WARNING: authentication is OFF (--no-auth); do not expose this "
            "server[/bold red]"
        )
    from modelhost.observability.logs import configure_logging

    settings = Settings()
    log_config = configure_logging(log_level, settings.log_format)
    out.print(
        f"modelhost serving on http://{settings.server.host}:{settings.server.port} "
        f"(home {settings.home}, {settings.server.http_server.value})",
        highlight=False,
    )
    if settings.server.http_server is HttpServer.GRANIAN:
        _serve_granian(settings, log_level, log_config)
    else:
        _serve_uvicorn(settings, log_level, log_config)


def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Job batches run at once (MODELHOST_JOBS__WORKERS).")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="Queue backend: sql or redis (MODELHOST_JOBS__BACKEND).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run async jobs (no HTTP) on any machine that reaches the database (and Redis).

    SIGTERM finishes running jobs and takes no new ones."""
    import asyncio

    from modelhost.app import run_worker
    from modelhost.observability.logs import configure_logging

    if concurrency is not None:
        os.environ["MODELHOST_JOBS__WORKERS"] = str(concurrency)
    if backend is not None:
        os.environ["MODELHOST_JOBS__BACKEND"] = backend
    try:
        settings = Settings()
        configure_logging(log_level, settings.log_format)
        asyncio.run(run_worker(settings))
    except ModelhostError as exc:
        raise fail_markup(exc.message) from None
    except ValueError as exc:  # settings that do not parse
        raise fail_markup(str(exc)) from None


def demo_cmd(
    force: Annotated[bool, typer.Option(help="Rebuild even if registered.")] = False,
) -> None:
    """Build and register the demo models (iris, minilm, gemma-270m)."""
    from modelhost.demo import ensure_demo

    logging.basicConfig(level="INFO", format="%(levelname)s %(message)s")
    built = ensure_demo(local_registry(), Settings(), force=force)
    out.print(f"built: {', '.join(built) or 'nothing (already registered)'}")
