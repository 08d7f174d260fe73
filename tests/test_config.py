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


def test_one_port_for_http_and_grpc_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELHOST_HOME", str(tmp_path))
    monkeypatch.setenv("MODELHOST_SERVER__PORT", "9123")
    monkeypatch.setenv("MODELHOST_SERVER__GRPC_PORT", "9123")
    with pytest.raises(ValueError, match=r"grpc_port and server\.port are both 9123"):
        Settings()
    monkeypatch.setenv("MODELHOST_SERVER__GRPC_PORT", "0")
    assert Settings().server.grpc_port == 0


def test_free_ports_are_distinct_and_never_handed_out_twice() -> None:
    from tests.conftest import free_port, free_ports

    first = free_ports(20)
    assert len(set(first)) == 20
    assert not set(first) & {free_port() for _ in range(20)}
