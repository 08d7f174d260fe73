"""The ``modelhost`` command line (typer + rich): one module per command group.

This root builds the app from the groups and holds :func:`main` (the console script); the
groups share :mod:`modelhost.cli.common` and never import this module. Every group adds
itself with its ``register(app)``; ``--help`` lists the commands in the order they are
registered (the top-level commands first, then the groups), so keep the order below.
"""

from __future__ import annotations

import sys

import typer

from modelhost.cli import (
    deploy,
    drift,
    features,
    featurestore,
    jobs,
    keys,
    models,
    predict,
    provenance,
    serve,
    usage,
)
from modelhost.cli.common import err
from modelhost.errors import ModelhostError

__all__ = ["app", "main"]

app = typer.Typer(
    help="modelhost: models as a production service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
for _group in (
    models,
    jobs,
    features,
    provenance,
    drift,
    usage,
    deploy,
    featurestore,
    serve,
    predict,
    keys,
):
    _group.register(app)


def main() -> None:
    """Entry point: run the app, turning modelhost errors into one line and exit code 1."""
    try:
        app(standalone_mode=True)
    except ModelhostError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(1)
