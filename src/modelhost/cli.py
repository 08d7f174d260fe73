"""The ``modelhost`` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from modelhost import cli_deploy, cli_drift, cli_featurestore, cli_provenance, cli_usage
from modelhost.cli_features import features_app
from modelhost.cli_jobs import batch_app, jobs_app
from modelhost.config import HttpServer, Settings
from modelhost.errors import MissingDependencyError, ModelhostError
from modelhost.registry import Registry, Stage

if TYPE_CHECKING:
    from modelhost.serving.promotion import PromotionReport

app = typer.Typer(
    help="modelhost: models as a production service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="The model registry: push, list, show, promote, archive, alias.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
app.add_typer(batch_app, name="batch")
app.add_typer(features_app, name="features")
for _module in (cli_provenance, cli_drift, cli_usage, cli_deploy, cli_featurestore):
    _module.register(app)
out = Console()
err = Console(stderr=True)


def _actor() -> str:
    try:
        return os.environ.get("MODELHOST_ACTOR") or getpass.getuser()
    except OSError:
        return "unknown"


def _registry() -> Registry:
    from modelhost.app import build_registry

    return build_registry(Settings())


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def _serve_granian(settings: Settings, log_level: str, log_config: dict[str, Any]) -> None:
    """Granian (Rust HTTP server; the ASGI interface runs the lifespan in every worker)."""
    try:
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces, Loops
        from granian.log import LogLevels
    except ImportError:
        raise _fail(MissingDependencyError("granian", extra="granian").message) from None

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


@app.command()
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
    from modelhost.monitoring.logs import configure_logging

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


@app.command()
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
    from modelhost.monitoring.logs import configure_logging

    if concurrency is not None:
        os.environ["MODELHOST_JOBS__WORKERS"] = str(concurrency)
    if backend is not None:
        os.environ["MODELHOST_JOBS__BACKEND"] = backend
    try:
        settings = Settings()
        configure_logging(log_level, settings.log_format)
        asyncio.run(run_worker(settings))
    except ModelhostError as exc:
        raise _fail(exc.message) from None
    except ValueError as exc:  # settings that do not parse
        raise _fail(str(exc)) from None


@app.command("demo")
def demo_cmd(
    force: Annotated[bool, typer.Option(help="Rebuild even if registered.")] = False,
) -> None:
    """Build and register the demo models (iris, minilm, gemma-270m)."""
    from modelhost.demo import ensure_demo

    logging.basicConfig(level="INFO", format="%(levelname)s %(message)s")
    built = ensure_demo(_registry(), Settings(), force=force)
    out.print(f"built: {', '.join(built) or 'nothing (already registered)'}")


async def _promote_here(model: str, version: str, *, force: bool) -> PromotionReport:
    """Promote through the gates in this process: the version is loaded here, its golden set
    evaluated on it and its schemas compared with production's, as a server would."""
    from modelhost.app import build_services, close_services

    services = build_services(Settings())
    try:
        await services.manager.refresh(load=False)
        return await services.promoter.promote(model, version, actor=_actor(), force=force)
    finally:
        await close_services(services)


def _promoted(report: PromotionReport) -> None:
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


Force = Annotated[
    bool, typer.Option(help="Promote even if a gate fails (audited; says what it skipped).")
]


@models_app.command("push")
def push(
    directory: Annotated[Path, typer.Argument(help="Version directory with modelhost.yaml.")],
    stage: Annotated[Stage, typer.Option(help="Stage to register in.")] = Stage.STAGING,
    force: Force = False,
) -> None:
    """Validate a model version directory, store its files by sha256 and register it
    (``--stage production`` promotes it through the gates)."""
    if not directory.is_dir():
        raise _fail(f"{directory} is not a directory")
    gated = stage is Stage.PRODUCTION
    info = _registry().push(directory, actor=_actor(), stage=Stage.STAGING if gated else stage)
    out.print(
        f"registered {info.ref} ({info.runtime}, {info.stage.value}, "
        f"{len(info.files)} files, {info.size_bytes} bytes)",
        highlight=False,
    )
    if gated:
        _promoted(asyncio.run(_promote_here(info.model, info.version, force=force)))


@models_app.command("list")
def list_models() -> None:
    """List models with their versions and stages."""
    table = Table("model", "version", "stage", "runtime", "aliases", "created")
    for model in _registry().list_models():
        aliases: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            aliases.setdefault(version, []).append(alias)
        for v in model.versions:
            table.add_row(
                model.name,
                v.version,
                v.stage.value,
                v.runtime,
                ", ".join(sorted(aliases.get(v.version, []))),
                v.created_at.strftime("%Y-%m-%d %H:%M"),
            )
    out.print(table)


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


@models_app.command("show")
def show(
    model: Annotated[str, typer.Argument(help="Model name, or name@version.")],
    history: Annotated[bool, typer.Option(help="Also print the change history.")] = True,
) -> None:
    """Show a version's manifest (production unless pinned) and the model's history."""
    registry = _registry()
    name, _, selector = model.partition("@")
    info = registry.resolve(name, selector or None)
    out.print_json(
        json.dumps(
            {
                "model": info.model,
                "version": info.version,
                "stage": info.stage.value,
                "files": info.files,
                "manifest": info.manifest.model_dump(mode="json"),
            }
        )
    )
    if history:
        out.print(history_table(registry, name))


@models_app.command("promote")
def promote(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    stage: Annotated[Stage, typer.Option(help="Target stage.")] = Stage.PRODUCTION,
    force: Force = False,
) -> None:
    """Move a version to a stage. Production (the default) goes through the promotion gates,
    run here on the loaded version (docs/rollouts.md); the old production is archived."""
    if stage is Stage.PRODUCTION:
        _promoted(asyncio.run(_promote_here(model, version, force=force)))
        return
    info = _registry().set_stage(model, version, stage, actor=_actor())
    out.print(f"{info.ref} is now {info.stage.value}", highlight=False)


@models_app.command("archive")
def archive(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version to archive.")],
) -> None:
    """Archive a version (kept for rollback, no longer loaded)."""
    info = _registry().set_stage(model, version, Stage.ARCHIVED, actor=_actor())
    out.print(f"{info.ref} is now archived", highlight=False)


@models_app.command("alias")
def alias(
    model: Annotated[str, typer.Argument(help="Model name.")],
    name: Annotated[str, typer.Argument(help="Alias, e.g. champion.")],
    version: Annotated[str | None, typer.Argument(help="Version it points to.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias.")] = False,
) -> None:
    """Point an alias at a version, or remove it with --delete."""
    registry = _registry()
    if delete:
        registry.delete_alias(model, name, actor=_actor())
        out.print(f"{model}: alias {name} removed", highlight=False)
        return
    if version is None:
        raise _fail("give the VERSION the alias points to, or --delete")
    registry.set_alias(model, name, version, actor=_actor())
    out.print(f"{model}@{name} -> {version}", highlight=False)


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Model name, or name@version.")],
    body: Annotated[
        str,
        typer.Argument(help='JSON: an input, a list of inputs, or a full {"inputs": [...]} body.'),
    ],
    url: Annotated[
        str, typer.Option(envvar="MODELHOST_URL", help="Server URL.")
    ] = "http://127.0.0.1:8000",
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 120.0,
    api_key: Annotated[
        str | None, typer.Option(envvar="MODELHOST_API_KEY", help="API key (mhk_…).")
    ] = None,
) -> None:
    """Send one predict request to a running server and pretty-print the answer."""
    import httpx

    try:
        payload: Any = json.loads(body)
    except json.JSONDecodeError as exc:
        raise _fail(f"the body is not valid JSON: {exc}") from None
    if not (isinstance(payload, dict) and "inputs" in payload):
        payload = {"inputs": payload if isinstance(payload, list) else [payload]}
    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        response = httpx.post(
            f"{url}/v1/models/{model}/predict", json=payload, timeout=timeout, headers=headers
        )
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {url}: {exc}") from None
    data = response.json()
    if response.status_code >= 400:
        error = data.get("error", {})
        raise _fail(f"{response.status_code} {error.get('type')}: {error.get('message')}")
    out.print_json(json.dumps(data))


keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _key_store() -> Any:
    from modelhost.app import build_registry
    from modelhost.security.keys import KeyStore

    return KeyStore(build_registry(Settings()).engine)


@keys_app.command("create")
def keys_create(
    principal: Annotated[str, typer.Option(help="Who the key belongs to.")],
    tenant: Annotated[str, typer.Option(help="The principal's tenant.")] = "default",
    scope: Annotated[
        list[str] | None,
        typer.Option(
            help=(
                "predict, jobs, models:write, deploy, provenance, features or admin (an admin "
                "of a tenant other than 'system' sees its own tenant only); repeat for more."
            )
        ),
    ] = None,
    expires_days: Annotated[float | None, typer.Option(help="Expire after N days.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    budget: Annotated[float | None, typer.Option(help="Spend per budget period.")] = None,
    description: Annotated[str, typer.Option(help="What the key is for.")] = "",
) -> None:
    """Create an API key; it is printed once and only its hash is stored."""
    from datetime import UTC, datetime, timedelta

    from modelhost.security.keys import NewKey

    expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
    secret, info = _key_store().create(
        NewKey(
            tenant=tenant,
            principal=principal,
            scopes=scope or ["predict"],
            description=description,
            expires_at=expires,
            rpm=rpm,
            tpm=tpm,
            budget=budget,
        ),
        actor=_actor(),
        source="cli",
    )
    out.print(
        f"created key {info.id} for {tenant}/{principal} ({', '.join(info.scopes)})",
        highlight=False,
    )
    out.print(secret, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None) -> None:
    """List keys (never their secrets)."""
    table = Table("id", "tenant", "principal", "scopes", "created", "expires", "revoked")
    for key in _key_store().list_keys(tenant):
        table.add_row(
            key.id,
            key.tenant,
            key.principal,
            ", ".join(key.scopes),
            key.created_at.strftime("%Y-%m-%d %H:%M"),
            key.expires_at.strftime("%Y-%m-%d %H:%M") if key.expires_at else "",
            key.revoked_at.strftime("%Y-%m-%d %H:%M") if key.revoked_at else "",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id (or the whole key).")]) -> None:
    """Revoke a key; servers refuse it within seconds."""
    info = _key_store().revoke(key_id, actor=_actor(), source="cli")
    out.print(f"revoked key {info.id} of {info.tenant}/{info.principal}", highlight=False)


def main() -> None:
    """Entry point: run the app, turning modelhost errors into one line and exit code 1."""
    try:
        app(standalone_mode=True)
    except ModelhostError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
