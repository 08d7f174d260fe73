"""The ``modelhost`` commands of the provenance subsystem."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``modelhost`` command line."""
    del app
