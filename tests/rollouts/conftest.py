"""Fixtures of the control plane's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelhost.registry import ArtifactStore, Registry, VersionInfo, make_engine
from tests.serving.iris_variants import write_iris_variant


@pytest.fixture
def info(tmp_path: Path) -> Iterator[VersionInfo]:
    """A real registered iris version (never loaded: the ledger only reads its name)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(engine, ArtifactStore(tmp_path / "artifacts"))
    yield registry.push(write_iris_variant(tmp_path / "models", "flowers", "1.1.0"), actor="t")
    engine.dispose()
