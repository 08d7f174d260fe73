"""``modelhost featurestore …``: the real command line against a real Feast repository.

``skew`` needs a server and is tested over HTTP (tests/api/test_featurestore.py). Every other
command runs here as a subprocess; the repository is checked afterwards in this process.
Redis is kept out (``MODELHOST_REDIS_URL`` empty), so the online store is Feast's SQLite file.
"""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from modelhost.cli.featurestore import record_lineage
from modelhost.featurestore import apply_repo, open_store
from modelhost.featurestore.repo import select
from modelhost.manifest import MANIFEST_FILE, TrainingSetLineage, load_manifest
from tests.conftest import run_cli, write_python_model
from tests.featurestore.builder import DAYS, SERVICE, Repo, stats_at, write_model, write_repo

pytest.importorskip("feast")

ENV = {"MODELHOST_REDIS_URL": "", "MODELHOST_FEATURE_STORE__ONLINE_STORE": "auto"}
COMMENT = "# scorer: reads avg_amount_7d and txn_count_7d from the fraud repository"


def featurestore(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(home, "featurestore", *args, env=ENV)


def _open(path: Path) -> Any:
    return open_store(path, online_store="auto", redis_url="")


def _applied(root: Path) -> Repo:
    repo = write_repo(root, f"fs{uuid.uuid4().hex[:10]}")
    apply_repo(_open(repo.path))
    return repo


def _online_avg(repo: Repo, customers: list[int]) -> list[Any]:
    store = _open(repo.path)
    rows = [{"customer_id": c, "amount": 1.0} for c in customers]
    found = store.get_online_features(
        features=store.get_feature_service(SERVICE), entity_rows=rows
    ).to_dict()
    avg: list[Any] = found["avg_amount_7d"]
    return avg


# -- apply ------------------------------------------------------------------------------------


def test_apply_registers_the_definitions(tmp_path: Path) -> None:
    repo = write_repo(tmp_path / "repos", f"fs{uuid.uuid4().hex[:10]}")

    done = featurestore(tmp_path / "home", "apply", str(repo.path))

    assert done.returncode == 0, done.stderr
    assert f"applied {repo.path}: amount_features, customer_stats, scoring" in done.stdout
    store = _open(repo.path)
    assert [s.name for s in store.list_feature_services()] == [SERVICE]
    assert [v.name for v in store.list_feature_views()] == ["customer_stats"]


def test_apply_of_definitions_that_fail(tmp_path: Path) -> None:
    repo = write_repo(tmp_path / "repos", f"fs{uuid.uuid4().hex[:10]}")
    (repo.path / "more.py").write_text("import no_such_module\n")

    done = featurestore(tmp_path / "home", "apply", str(repo.path))

    assert done.returncode == 1
    assert "error:" in done.stderr
    assert "more.py: the feature definitions do not run" in done.stderr
    assert "no_such_module" in done.stderr


def test_apply_of_a_missing_directory(tmp_path: Path) -> None:
    done = featurestore(tmp_path / "home", "apply", str(tmp_path / "nowhere"))

    assert done.returncode == 1
    assert "is not a directory" in done.stderr


# -- materialize ------------------------------------------------------------------------------


def test_materialize_a_repository_up_to_a_time(tmp_path: Path) -> None:
    repo = _applied(tmp_path / "repos")
    end = (repo.snapshot_time(1) + timedelta(minutes=1)).replace(tzinfo=None)

    done = featurestore(
        tmp_path / "home", "materialize", "--repo", str(repo.path), "--end", end.isoformat()
    )

    assert done.returncode == 0, done.stderr
    assert f"materialized {repo.path} up to {end.isoformat()}+00:00" in done.stdout
    assert _online_avg(repo, [1, 2]) == [stats_at(1, 1)[0], stats_at(2, 1)[0]]


def test_materialize_the_repository_of_a_model_directory(tmp_path: Path) -> None:
    repo = _applied(tmp_path / "repos")
    model = write_model(tmp_path / "models", repo.path)

    done = featurestore(tmp_path / "home", "materialize", str(model))

    assert done.returncode == 0, done.stderr
    assert f"materialized {repo.path} up to " in done.stdout
    assert _online_avg(repo, [1, 2, 4242]) == [
        stats_at(1, DAYS - 1)[0],
        stats_at(2, DAYS - 1)[0],
        None,
    ]


def test_materialize_needs_a_model_or_a_repository(tmp_path: Path) -> None:
    done = featurestore(tmp_path / "home", "materialize")

    assert done.returncode == 1
    assert "name a MODEL or give --repo" in done.stderr


def test_materialize_with_a_wrong_end(tmp_path: Path) -> None:
    done = featurestore(
        tmp_path / "home", "materialize", "--repo", str(tmp_path), "--end", "yesterday"
    )

    assert done.returncode == 1
    assert "yesterday" in done.stderr


def test_materialize_a_model_without_stored_features(tmp_path: Path) -> None:
    model = write_python_model(tmp_path, "echo")

    done = featurestore(tmp_path / "home", "materialize", str(model))

    assert done.returncode == 1
    assert "echo@1.0.0 has no 'feature_store' section" in done.stderr


# -- training-set -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Built:
    """One run of ``training-set`` on a model directory."""

    repo: Repo
    model: Path
    entities: Path
    out: Path
    done: subprocess.CompletedProcess[str]


def _entities(repo: Repo) -> pd.DataFrame:
    rows = [
        (1, 10.0, repo.snapshot_time(0) + timedelta(hours=3), "legit"),
        (2, 400.0, repo.snapshot_time(1) + timedelta(hours=1), "fraud"),
        (3, 30.0, repo.snapshot_time(2) + timedelta(minutes=5), "legit"),
        (1, 200.0, repo.snapshot_time(2) - timedelta(minutes=5), "fraud"),
    ]
    return pd.DataFrame(rows, columns=["customer_id", "amount", "event_timestamp", "label"])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("fs-cli")
    repo = _applied(root / "repos")
    model = write_model(root / "models", repo.path)
    manifest = model / MANIFEST_FILE
    manifest.write_text(f"{COMMENT}\n{manifest.read_text()}")
    entities = root / "entities.parquet"
    _entities(repo).to_parquet(entities, index=False)
    out = root / "frames" / "train.parquet"
    done = featurestore(
        root / "home",
        "training-set",
        str(model),
        "--entities",
        str(entities),
        "--out",
        str(out),
    )
    return Built(repo, model, entities, out, done)


def test_training_set_writes_the_frame(built: Built) -> None:
    assert built.done.returncode == 0, built.done.stderr
    frame = pd.read_parquet(built.out)
    expected_days = [0, 1, 2, 1]

    assert list(frame.columns) == [
        "customer_id",
        "amount",
        "event_timestamp",
        "label",
        "avg_amount_7d",
        "txn_count_7d",
        "amount_ratio",
    ]
    asked = _entities(built.repo)
    assert frame[["customer_id", "amount", "event_timestamp", "label"]].equals(asked)
    for row, day in zip(frame.itertuples(index=False), expected_days, strict=True):
        avg, count = stats_at(int(row.customer_id), day)
        assert (row.avg_amount_7d, row.txn_count_7d) == (avg, count)
        assert row.amount_ratio == pytest.approx(row.amount / avg)


def test_training_set_says_what_it_wrote(built: Built) -> None:
    digest = hashlib.sha256(built.out.read_bytes()).hexdigest()

    assert f"wrote {built.out}: 4 rows, 7 columns, sha256 {digest}" in built.done.stdout
    assert "4 entity rows in, 4 out" in built.done.stdout
    assert "(lineage.training_set)" in built.done.stdout


def test_training_set_records_its_lineage(built: Built) -> None:
    lineage = load_manifest(built.model).lineage.training_set

    assert lineage is not None
    assert lineage.sha256 == hashlib.sha256(built.out.read_bytes()).hexdigest()
    assert lineage.entities_sha256 == hashlib.sha256(built.entities.read_bytes()).hexdigest()
    assert len(lineage.definitions_sha256) == 64
    assert lineage.path == str(built.out.resolve())
    assert lineage.rows == 4
    assert lineage.columns == list(pd.read_parquet(built.out).columns)
    assert lineage.feature_service == SERVICE
    assert lineage.features == ["avg_amount_7d", "txn_count_7d", "amount_ratio"]
    assert lineage.created_at.endswith("+00:00")


def test_training_set_keeps_the_manifest_s_text(built: Built) -> None:
    text = (built.model / MANIFEST_FILE).read_text()

    assert text.startswith(COMMENT + "\n")
    assert text.count("lineage:") == 1
    assert load_manifest(built.model).feature_store is not None


def test_training_set_digest_is_the_one_a_server_computes(built: Built) -> None:
    manifest = load_manifest(built.model)
    assert manifest.feature_store is not None
    lineage = manifest.lineage.training_set
    assert lineage is not None

    chosen = select(_open(built.repo.path), manifest.feature_store)

    assert lineage.definitions_sha256 == chosen.digest


def test_training_set_with_an_entity_file_without_timestamps(tmp_path: Path) -> None:
    repo = _applied(tmp_path / "repos")
    model = write_model(tmp_path / "models", repo.path)
    before = (model / MANIFEST_FILE).read_text()
    entities = tmp_path / "entities.csv"
    entities.write_text("customer_id,amount\n1,10.0\n")
    out = tmp_path / "train.parquet"

    done = featurestore(
        tmp_path / "home",
        "training-set",
        str(model),
        "--entities",
        str(entities),
        "--out",
        str(out),
    )

    assert done.returncode == 1
    assert "error:" in done.stderr
    assert "needs an 'event_timestamp' column" in done.stderr
    assert str(entities) in done.stderr
    assert not out.exists()
    assert (model / MANIFEST_FILE).read_text() == before


def test_training_set_of_a_model_without_stored_features(tmp_path: Path) -> None:
    model = write_python_model(tmp_path, "echo")
    entities = tmp_path / "entities.csv"
    entities.write_text("customer_id,event_timestamp\n1,2026-01-01T00:00:00Z\n")

    done = featurestore(
        tmp_path / "home",
        "training-set",
        str(model),
        "--entities",
        str(entities),
        "--out",
        str(tmp_path / "train.parquet"),
    )

    assert done.returncode == 1
    assert "has no 'feature_store' section" in done.stderr


# -- record_lineage ---------------------------------------------------------------------------


def _lineage(digest: str) -> TrainingSetLineage:
    return TrainingSetLineage(
        path="/data/train.parquet",
        sha256=digest,
        rows=3,
        columns=["customer_id", "event_timestamp", "avg_amount_7d"],
        entities_sha256="e" * 64,
        definitions_sha256="d" * 64,
        feature_service=SERVICE,
        features=["avg_amount_7d"],
        created_at="2026-11-23T00:00:00+00:00",
    )


def test_record_lineage_appends_a_block(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_FILE
    path.write_text("# the scorer\nname: scorer  # kept\nversion: 1.0.0\n")

    record_lineage(path, _lineage("a" * 64))

    text = path.read_text()
    assert text.startswith("# the scorer\nname: scorer  # kept\nversion: 1.0.0\nlineage:\n")
    assert yaml.safe_load(text)["lineage"]["training_set"] == _lineage("a" * 64).model_dump()


def test_record_lineage_replaces_the_block_and_keeps_what_follows(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_FILE
    path.write_text("name: scorer\nversion: 1.0.0\n")
    record_lineage(path, _lineage("a" * 64))
    path.write_text(path.read_text() + "# what comes next\nruntime: sklearn\n")

    record_lineage(path, _lineage("b" * 64))

    text = path.read_text()
    data = yaml.safe_load(text)
    assert text.count("lineage:") == 1
    assert data["lineage"]["training_set"]["sha256"] == "b" * 64
    assert data["runtime"] == "sklearn"
    assert "a" * 64 not in text
    assert text.startswith("name: scorer\nversion: 1.0.0\nlineage:\n")
