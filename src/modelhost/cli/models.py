"""``modelhost models …``: the model registry of this machine, in this process (push, list,
show, promote, archive, alias); a promotion to production runs the gates here."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelhost.cli.common import (
    Force,
    actor,
    fail_markup,
    history_table,
    local_registry,
    out,
    promote_here,
    promoted,
    push_version,
)
from modelhost.registry import Stage

models_app = typer.Typer(
    help="The model registry: push, list, show, promote, archive, alias.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    """Add ``modelhost models`` to the command line."""
    app.add_typer(models_app, name="models")


@models_app.command("push")
def push(
    directory: Annotated[Path, typer.Argument(help="Version directory with modelhost.yaml.")],
    stage: Annotated[Stage, typer.Option(help="Stage to register in.")] = Stage.STAGING,
    force: Force = False,
) -> None:
    """Validate a model version directory, store its files by sha256 and register it
    (``--stage production`` promotes it through the gates)."""
    push_version(directory, stage, force=force)


@models_app.command("list")
def list_models() -> None:
    """List models with their versions and stages."""
    table = Table("model", "version", "stage", "runtime", "aliases", "created")
    for model in local_registry().list_models():
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


@models_app.command("show")
def show(
    model: Annotated[str, typer.Argument(help="Model name, or name@version.")],
    history: Annotated[bool, typer.Option(help="Also print the change history.")] = True,
) -> None:
    """Show a version's manifest (production unless pinned) and the model's history."""
    registry = local_registry()
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
        promoted(asyncio.run(promote_here(model, version, force=force)))
        return
    info = local_registry().set_stage(model, version, stage, actor=actor())
    out.print(f"{info.ref} is now {info.stage.value}", highlight=False)


@models_app.command("archive")
def archive(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version to archive.")],
) -> None:
    """Archive a version (kept for rollback, no longer loaded)."""
    info = local_registry().set_stage(model, version, Stage.ARCHIVED, actor=actor())
    out.print(f"{info.ref} is now archived", highlight=False)


@models_app.command("alias")
def alias(
    model: Annotated[str, typer.Argument(help="Model name.")],
    name: Annotated[str, typer.Argument(help="Alias, e.g. champion.")],
    version: Annotated[str | None, typer.Argument(help="Version it points to.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias.")] = False,
) -> None:
    """Point an alias at a version, or remove it with --delete."""
    registry = local_registry()
    if delete:
        registry.delete_alias(model, name, actor=actor())
        out.print(f"{model}: alias {name} removed", highlight=False)
        return
    if version is None:
        raise fail_markup("give the VERSION the alias points to, or --delete")
    registry.set_alias(model, name, version, actor=actor())
    out.print(f"{model}@{name} -> {version}", highlight=False)
