"""The ``modelhost`` command line as a whole: every command answers ``--help``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["demo"],
        ["predict"],
        ["models"],
        ["models", "push"],
        ["models", "list"],
        ["models", "show"],
        ["models", "promote"],
        ["models", "archive"],
        ["models", "alias"],
    ],
)
def test_every_command_has_help(tmp_path: Path, command: list[str]) -> None:
    result = run_cli(tmp_path, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
