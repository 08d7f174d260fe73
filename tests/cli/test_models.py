"""``modelhost models …``: the real command, run as a user would."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.conftest import run_cli, write_python_model


def test_registry_workflow(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = write_python_model(tmp_path, "churn", "1.0.0")
    second = write_python_model(tmp_path, "churn", "1.1.0")

    pushed = run_cli(home, "models", "push", str(first), "--stage", "production")
    assert pushed.returncode == 0, pushed.stderr
    assert "registered churn@1.0.0" in pushed.stdout
    assert run_cli(home, "models", "push", str(second)).returncode == 0

    listing = run_cli(home, "models", "list").stdout
    assert "1.0.0" in listing
    assert "production" in listing
    assert "staging" in listing

    promoted = run_cli(home, "models", "promote", "churn", "1.1.0")
    assert "churn@1.1.0 is now production" in promoted.stdout
    aliased = run_cli(home, "models", "alias", "churn", "champion", "1.1.0")
    assert "churn@champion -> 1.1.0" in aliased.stdout
    archived = run_cli(home, "models", "archive", "churn", "1.0.0")
    assert "archived" in archived.stdout

    shown = run_cli(home, "models", "show", "churn@champion", "--no-history")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["version"] == "1.1.0"
    assert data["stage"] == "production"
    assert set(data["files"]) == {"echo_model.py", "modelhost.yaml"}

    history = run_cli(home, "models", "show", "churn").stdout
    assert "alias:champion" in history
    assert "archived" in history

    removed = run_cli(home, "models", "alias", "churn", "champion", "--delete")
    assert removed.returncode == 0, removed.stderr


def one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 1
    stderr = result.stderr.strip()
    assert stderr.startswith("error:"), stderr
    assert needle in stderr
    assert "Traceback" not in stderr


def test_push_with_bad_manifest_is_one_clear_line(tmp_path: Path) -> None:
    directory = write_python_model(tmp_path, "bad")
    manifest = yaml.safe_load((directory / "modelhost.yaml").read_text())
    manifest["version"] = "one"
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    one_line_error(run_cli(tmp_path / "h", "models", "push", str(directory)), "field 'version'")


def test_errors_are_one_line_and_non_zero(tmp_path: Path) -> None:
    home = tmp_path / "home"
    one_line_error(run_cli(home, "models", "show", "ghost"), "not registered")
    one_line_error(run_cli(home, "models", "push", str(tmp_path / "none")), "not a directory")
    directory = write_python_model(tmp_path, "dup")
    assert run_cli(home, "models", "push", str(directory)).returncode == 0
    one_line_error(run_cli(home, "models", "push", str(directory)), "registered already")
    one_line_error(run_cli(home, "models", "promote", "dup", "9.0.0"), "no version")
