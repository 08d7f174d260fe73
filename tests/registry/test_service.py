"""Registry contract tests, run against SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.engine import Engine

from modelhost.errors import (
    ArtifactIntegrityError,
    Conflict,
    InvalidInput,
    ModelNotFound,
    VersionNotFound,
)
from modelhost.registry import ArtifactStore, Registry, Stage, make_engine
from tests.conftest import POSTGRES_URL


def _version_dir(root: Path, version: str, payload: bytes = b"weights") -> Path:
    directory = root / version
    directory.mkdir(parents=True)
    (directory / "model.bin").write_bytes(payload + version.encode())
    (directory / "modelhost.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "churn",
                "version": version,
                "runtime": "python",
                "entrypoint": "m:M",
                "artifacts": {"model": "model.bin"},
            }
        )
    )
    return directory


@pytest.fixture
def registry(engine: Engine, tmp_path: Path) -> Registry:
    return Registry(engine, ArtifactStore(tmp_path / "artifacts"))


def test_push_registers_in_staging_with_content_addressed_files(
    registry: Registry, tmp_path: Path
) -> None:
    info = registry.push(_version_dir(tmp_path, "1.0.0"), actor="alice")
    assert info.stage is Stage.STAGING
    assert info.created_by == "alice"
    assert set(info.files) == {"model.bin", "modelhost.yaml"}
    digest = info.files["model.bin"]
    assert len(digest) == 64
    assert (tmp_path / "artifacts" / "blobs" / digest[:2] / digest).is_file()


def test_duplicate_version_conflicts(registry: Registry, tmp_path: Path) -> None:
    registry.push(_version_dir(tmp_path / "a", "1.0.0"), actor="a")
    with pytest.raises(Conflict, match="bump 'version'"):
        registry.push(_version_dir(tmp_path / "b", "1.0.0"), actor="a")


def test_promote_archives_previous_production_and_logs_history(
    registry: Registry, tmp_path: Path
) -> None:
    registry.push(_version_dir(tmp_path, "1.0.0"), actor="a", stage=Stage.PRODUCTION)
    registry.push(_version_dir(tmp_path, "1.1.0"), actor="a")
    registry.set_stage("churn", "1.1.0", Stage.PRODUCTION, actor="bob")
    model = registry.get_model("churn")
    assert {v.version: v.stage for v in model.versions} == {
        "1.1.0": Stage.PRODUCTION,
        "1.0.0": Stage.ARCHIVED,
    }
    history = registry.history("churn")
    moves = [(h.version, h.from_value, h.to_value, h.actor) for h in history if h.action == "stage"]
    assert ("1.1.0", "staging", "production", "bob") in moves
    assert ("1.0.0", "production", "archived", "bob") in moves
    assert all(h.at.tzinfo is not None for h in history)


def test_versions_sort_by_semver_not_text(registry: Registry, tmp_path: Path) -> None:
    for version in ("1.2.0", "1.10.0", "1.9.3"):
        registry.push(_version_dir(tmp_path, version), actor="a")
    assert [v.version for v in registry.get_model("churn").versions] == [
        "1.10.0",
        "1.9.3",
        "1.2.0",
    ]
    assert registry.resolve("churn", "latest").version == "1.10.0"


def test_resolve_by_version_alias_stage_and_default(registry: Registry, tmp_path: Path) -> None:
    registry.push(_version_dir(tmp_path, "1.0.0"), actor="a", stage=Stage.PRODUCTION)
    registry.push(_version_dir(tmp_path, "2.0.0"), actor="a")
    registry.set_alias("churn", "champion", "1.0.0", actor="a")
    registry.set_alias("churn", "challenger", "2.0.0", actor="a")
    assert registry.resolve("churn").version == "1.0.0"
    assert registry.resolve("churn", "2.0.0").version == "2.0.0"
    assert registry.resolve("churn", "challenger").version == "2.0.0"
    assert registry.resolve("churn", "staging").version == "2.0.0"
    registry.set_alias("churn", "champion", "2.0.0", actor="carol")
    assert registry.resolve("churn", "champion").version == "2.0.0"
    assert any(
        h.action == "alias:champion" and h.from_value == "1.0.0" for h in registry.history("churn")
    )
    registry.delete_alias("churn", "challenger", actor="a")
    with pytest.raises(VersionNotFound):
        registry.resolve("churn", "challenger")


def test_unknown_model_version_and_alias(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        registry.resolve("nope")
    registry.push(_version_dir(tmp_path, "1.0.0"), actor="a")
    with pytest.raises(VersionNotFound, match="no production version"):
        registry.resolve("churn")
    with pytest.raises(VersionNotFound, match=r"versions: 1\.0\.0"):
        registry.resolve("churn", "3.0.0")
    with pytest.raises(VersionNotFound):
        registry.set_stage("churn", "3.0.0", Stage.PRODUCTION, actor="a")
    with pytest.raises(InvalidInput):
        registry.set_alias("churn", "production", "1.0.0", actor="a")


def test_names_with_a_nul_are_unknown_on_every_backend(registry: Registry, tmp_path: Path) -> None:
    # PostgreSQL refuses a NUL in any query (psycopg DataError): such a name is simply unknown
    registry.push(_version_dir(tmp_path, "1.0.0"), actor="a")
    with pytest.raises(ModelNotFound):
        registry.resolve("chu\x00rn")
    with pytest.raises(ModelNotFound):
        registry.get_version("chu\x00rn", "1.0.0")
    with pytest.raises(VersionNotFound):
        registry.get_version("churn", "1.0\x00.0")


def test_generation_grows_with_every_change(registry: Registry, tmp_path: Path) -> None:
    before = registry.generation()
    registry.push(_version_dir(tmp_path, "1.0.0"), actor="a")
    middle = registry.generation()
    registry.set_alias("churn", "best", "1.0.0", actor="a")
    assert before < middle < registry.generation()


def test_tampered_artifact_fails_its_check(registry: Registry, tmp_path: Path) -> None:
    info = registry.push(_version_dir(tmp_path, "1.0.0"), actor="a")
    path = registry.store.materialize("churn", "1.0.0", info.files)
    assert (path / "model.bin").read_bytes() == b"weights1.0.0"
    digest = info.files["model.bin"]
    (tmp_path / "artifacts" / "blobs" / digest[:2] / digest).write_bytes(b"evil")
    with pytest.raises(ArtifactIntegrityError, match="fails its check"):
        registry.store.materialize("churn", "1.0.0", info.files)


def test_postgres_url_forms_are_accepted() -> None:
    engine = make_engine(POSTGRES_URL)
    with engine.connect() as connection:
        assert connection.execute(text("select 1")).scalar() == 1
    assert engine.dialect.name == "postgresql"
    engine.dispose()
