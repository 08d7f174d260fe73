from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.config import Settings


def test_env_vars_configure_home_server_and_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELHOST_HOME", str(tmp_path))
    monkeypatch.setenv("MODELHOST_SERVER__PORT", "9123")
    monkeypatch.setenv("MODELHOST_INFERENCE__THREADS", "3")
    settings = Settings()
    assert settings.home == tmp_path
    assert settings.server.port == 9123
    assert settings.inference.threads == 3
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'modelhost.db'}"
    monkeypatch.setenv("MODELHOST_DATABASE_URL", "postgresql://u@h/db")
    assert Settings().resolved_database_url == "postgresql://u@h/db"
