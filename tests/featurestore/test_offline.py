"""Training frames and the train-serve skew check, against a real Feast repository.

The snapshot values are known (:func:`stats_at`), so a point-in-time read can be checked row
by row: an entity row timestamped between two snapshots must get the earlier one's values.
The skew check is run on rows really served by :class:`OnlineFeatures`; a deliberately wrong
write to the online store must then show up as a mismatch.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from modelhost.config import FeatureStoreSettings
from modelhost.errors import InvalidInput
from modelhost.featurestore import apply_repo, materialize
from modelhost.featurestore.offline import (
    TIMESTAMP,
    FeatureSkew,
    ServedRow,
    compare,
    file_sha256,
    fill_defaults,
    read_entities,
    same,
    training_set,
)
from modelhost.featurestore.online import OnlineFeatures
from modelhost.featurestore.repo import FeatureStores, Selection, select
from modelhost.manifest import FeatureStoreConfig, load_manifest
from modelhost.registry import Stage, VersionInfo
from tests.featurestore.builder import (
    CUSTOMERS,
    DAYS,
    UNKNOWN,
    Repo,
    merged,
    stats_at,
    write_model,
    write_repo,
)

pytest.importorskip("feast")

NAMES = ["avg_amount_7d", "txn_count_7d", "amount_ratio"]
DEFAULTS = {"avg_amount_7d": 50.0, "txn_count_7d": 0, "amount_ratio": 1.0}


@dataclass(frozen=True, slots=True)
class Applied:
    """An applied and materialized repository (SQLite online store)."""

    repo: Repo
    stores: FeatureStores

    @property
    def store(self) -> Any:
        return self.stores.get(str(self.repo.path))


def _applied(root: Path) -> Applied:
    repo = write_repo(root, f"fs{uuid.uuid4().hex[:10]}")
    stores = FeatureStores(FeatureStoreSettings(online_store="sqlite"), None)
    store = stores.get(str(repo.path))
    apply_repo(store)
    materialize(store)
    return Applied(repo, stores)


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Applied:
    return _applied(tmp_path_factory.mktemp("fs-offline"))


def _config(repo: Repo, **fields: Any) -> FeatureStoreConfig:
    return FeatureStoreConfig.model_validate(
        {"repo": str(repo.path), "service": "scoring", "entities": ["customer_id"], **fields}
    )


def _chosen(applied: Applied, config: FeatureStoreConfig) -> Selection:
    return select(applied.store, config)


def version(root: Path, repo: Repo, **feature_store: Any) -> VersionInfo:
    manifest = load_manifest(write_model(root, repo.path, feature_store=feature_store))
    return VersionInfo(
        model=manifest.name,
        version=manifest.version,
        runtime="sklearn",
        stage=Stage.PRODUCTION,
        manifest=manifest,
        files={},
        size_bytes=0,
        created_at=datetime.now(UTC),
        created_by="tests",
    )


def _entities(repo: Repo) -> pd.DataFrame:
    """Entity rows between, on and after the snapshots, with a label column."""
    rows = [
        (1, 10.0, repo.snapshot_time(0) + timedelta(hours=2), "legit"),
        (2, 200.0, repo.snapshot_time(1) + timedelta(hours=23), "fraud"),
        (3, 30.0, repo.snapshot_time(1), "legit"),
        (4, 40.0, repo.snapshot_time(2) - timedelta(seconds=1), "legit"),
        (5, 500.0, repo.snapshot_time(2) + timedelta(minutes=1), "fraud"),
        (1, 12.0, repo.now + timedelta(days=2), "legit"),
    ]
    return pd.DataFrame(rows, columns=["customer_id", "amount", TIMESTAMP, "label"])


# -- training_set -----------------------------------------------------------------------------


def test_training_set_is_point_in_time_correct(applied: Applied) -> None:
    config = _config(applied.repo)
    entities = _entities(applied.repo)

    built = training_set(applied.store, config, _chosen(applied, config), entities)

    frame = built.frame
    expected_days = [0, 1, 1, 1, 2, 2]
    assert (built.rows_in, built.missing, built.lost) == (6, 0, 0)
    by_customer = {(row.customer_id, row.amount): row for row in frame.itertuples(index=False)}
    for (customer, amount, _, _), day in zip(
        entities.itertuples(index=False), expected_days, strict=True
    ):
        row = by_customer[(customer, amount)]
        expected = merged(applied.repo, customer, amount, day)
        assert (row.avg_amount_7d, row.txn_count_7d) == stats_at(customer, day)
        assert row.amount_ratio == pytest.approx(expected["amount_ratio"])


def test_training_set_keeps_every_entity_column(applied: Applied) -> None:
    config = _config(applied.repo)
    entities = _entities(applied.repo)

    frame = training_set(applied.store, config, _chosen(applied, config), entities).frame

    assert set(frame.columns) == {"customer_id", "amount", TIMESTAMP, "label", *NAMES}
    assert len(frame) == len(entities)
    keys = zip(frame["customer_id"], frame["amount"], strict=True)
    labels = dict(zip(keys, frame["label"], strict=True))
    assert labels == {(c, a): label for c, a, _, label in entities.itertuples(index=False)}


@pytest.mark.parametrize("order", [slice(None), slice(None, None, -1)])
def test_training_set_keeps_the_entity_file_s_order_and_times(
    applied: Applied, order: slice
) -> None:
    config = _config(applied.repo)
    entities = _entities(applied.repo).iloc[order].reset_index(drop=True)

    frame = training_set(applied.store, config, _chosen(applied, config), entities).frame

    assert frame[["customer_id", "amount", TIMESTAMP, "label"]].equals(entities)


def test_training_set_of_an_entity_named_twice_at_one_time(applied: Applied) -> None:
    config = _config(applied.repo)
    at = applied.repo.snapshot_time(1) + timedelta(hours=1)
    entities = pd.DataFrame(
        {"customer_id": [3, 3, 3], "amount": [10.0, 20.0, 10.0], TIMESTAMP: [at, at, at]}
    )

    built = training_set(applied.store, config, _chosen(applied, config), entities)

    assert (built.rows_in, built.lost) == (3, 0)
    assert list(built.frame[TIMESTAMP]) == [at, at, at]
    assert list(built.frame["amount"]) == [10.0, 20.0, 10.0]
    assert list(built.frame["avg_amount_7d"]) == [stats_at(3, 1)[0]] * 3


def _with_unknown(repo: Repo) -> pd.DataFrame:
    early = repo.snapshot_time(0) - timedelta(hours=1)
    rows = [
        (1, 10.0, repo.snapshot_time(0) + timedelta(hours=1)),
        (UNKNOWN, 10.0, repo.snapshot_time(2) + timedelta(minutes=5)),
        (2, 20.0, early),
    ]
    return pd.DataFrame(rows, columns=["customer_id", "amount", TIMESTAMP])


def test_training_set_counts_rows_without_values(applied: Applied) -> None:
    config = _config(applied.repo)

    built = training_set(
        applied.store, config, _chosen(applied, config), _with_unknown(applied.repo)
    )

    frame = built.frame
    assert (built.rows_in, built.missing) == (3, 1)
    assert frame.loc[0, "avg_amount_7d"] == stats_at(1, 0)[0]
    unknown = frame[frame["customer_id"] == UNKNOWN]
    assert len(unknown) == 1
    assert unknown[NAMES].isna().all(axis=None)


def test_training_set_counts_rows_the_offline_store_drops(applied: Applied) -> None:
    """A known entity timestamped before its first value gets no row from Feast's file store
    (0.67), while an unknown one gets a row of missing values: ``lost`` says how many."""
    config = _config(applied.repo)

    built = training_set(
        applied.store, config, _chosen(applied, config), _with_unknown(applied.repo)
    )

    assert built.lost == 1
    assert list(built.frame["customer_id"]) == [1, UNKNOWN]


def test_training_set_fills_defaults_under_on_missing_default(applied: Applied) -> None:
    config = _config(applied.repo, on_missing="default", defaults=DEFAULTS)

    built = training_set(
        applied.store, config, _chosen(applied, config), _with_unknown(applied.repo)
    )

    frame = built.frame
    assert built.missing == 1
    assert not frame[NAMES].isna().any(axis=None)
    known = frame[frame["customer_id"] == 1].iloc[0]
    assert (known["avg_amount_7d"], known["txn_count_7d"]) == stats_at(1, 0)
    unknown = frame[frame["customer_id"] == UNKNOWN].iloc[0]
    assert {name: unknown[name] for name in NAMES} == DEFAULTS


def test_training_set_needs_the_keys_and_request_values(applied: Applied) -> None:
    config = _config(applied.repo)
    entities = _entities(applied.repo).drop(columns=["amount"])

    with pytest.raises(InvalidInput, match="lacks amount") as raised:
        training_set(applied.store, config, _chosen(applied, config), entities)

    assert raised.value.param == "entities"


def test_fill_defaults_leaves_values_under_reject(applied: Applied) -> None:
    frame = pd.DataFrame({"avg_amount_7d": [1.0, math.nan], "other": [None, None]})

    assert fill_defaults(frame, _config(applied.repo, defaults=DEFAULTS), tuple(NAMES)) == 1
    assert math.isnan(frame.loc[1, "avg_amount_7d"])


# -- read_entities ----------------------------------------------------------------------------


def _file_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [1, 2],
            "amount": [10.0, 20.0],
            TIMESTAMP: ["2026-01-02T03:04:05Z", "2026-01-03T00:00:00+02:00"],
        }
    )


def _check_read(frame: pd.DataFrame) -> None:
    assert list(frame["customer_id"]) == [1, 2]
    assert str(frame[TIMESTAMP].dt.tz) == "UTC"
    assert list(frame[TIMESTAMP]) == [
        pd.Timestamp("2026-01-02T03:04:05Z"),
        pd.Timestamp("2026-01-02T22:00:00Z"),
    ]


def test_read_entities_parquet(tmp_path: Path) -> None:
    path = tmp_path / "entities.parquet"
    frame = _file_frame()
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True, format="ISO8601")
    frame.to_parquet(path, index=False)

    _check_read(read_entities(path))


def test_read_entities_csv(tmp_path: Path) -> None:
    path = tmp_path / "entities.csv"
    _file_frame().to_csv(path, index=False)

    _check_read(read_entities(path))


def test_read_entities_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "entities.jsonl"
    _file_frame().to_json(path, orient="records", lines=True)

    _check_read(read_entities(path))


def test_read_entities_naive_times_are_utc(tmp_path: Path) -> None:
    path = tmp_path / "entities.csv"
    path.write_text("customer_id,event_timestamp\n1,2026-01-02 03:04:05\n")

    frame = read_entities(path)

    assert list(frame[TIMESTAMP]) == [pd.Timestamp("2026-01-02T03:04:05Z")]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_read_entities_without_event_timestamp(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"entities{suffix}"
    frame = pd.DataFrame({"customer_id": [1], "amount": [1.0]})
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)

    with pytest.raises(InvalidInput, match="needs an 'event_timestamp' column") as raised:
        read_entities(path)

    assert raised.value.param == "entities"


@pytest.mark.parametrize(
    ("name", "content"),
    [("broken.parquet", b"not parquet at all"), ("gone.csv", None), ("empty.csv", b"")],
)
def test_read_entities_of_an_unreadable_file(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)

    with pytest.raises(InvalidInput, match="not a readable entity file") as raised:
        read_entities(path)

    assert raised.value.param == "entities"


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = bytes(range(256)) * 10_000
    path.write_bytes(data)

    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


# -- same -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("served", "offline", "tolerance", "expected"),
    [
        (1.0, 1.0, 1e-6, True),
        (1.0, 1.0 + 1e-9, 1e-6, True),
        (1.0, 1.001, 1e-6, False),
        (1.0, 1.001, 0.01, True),
        (3, 3.0, 1e-6, True),
        (3, 4, 1e-6, False),
        (0.0, 1e-12, 0.0, True),
        (None, None, 1e-6, True),
        (None, math.nan, 1e-6, True),
        (math.nan, math.nan, 1e-6, True),
        (None, 0.0, 1e-6, False),
        (1.0, math.nan, 1e-6, False),
        ("gold", "gold", 1e-6, True),
        ("gold", "silver", 1e-6, False),
        ("1", 1, 1e-6, False),
    ],
)
def test_same(served: Any, offline: Any, tolerance: float, expected: bool) -> None:
    assert same(served, offline, tolerance) is expected


def test_feature_skew_rate() -> None:
    assert FeatureSkew().rate == 0.0
    assert FeatureSkew(compared=4, mismatched=1).rate == 0.25


# -- compare ----------------------------------------------------------------------------------


def _serve(applied: Applied, root: Path, rows: list[dict[str, Any]]) -> list[ServedRow]:
    """Fetch ``rows`` online the way the data plane does; what a provenance record keeps."""
    served = OnlineFeatures(applied.stores).fetch(version(root, applied.repo), rows)
    return [
        ServedRow(row, values, served.at, f"req{i}")
        for i, (row, values) in enumerate(zip(rows, served.values, strict=True))
    ]


def _requests() -> list[dict[str, Any]]:
    return [{"customer_id": c, "amount": 10.0 * c} for c in range(1, CUSTOMERS + 1)]


def test_compare_finds_no_skew_in_honestly_served_rows(applied: Applied, tmp_path: Path) -> None:
    config = _config(applied.repo)
    served = _serve(applied, tmp_path, _requests())

    found, recomputed = compare(applied.store, config, _chosen(applied, config), served)

    assert recomputed == CUSTOMERS
    assert list(found) == NAMES
    for skew in found.values():
        assert (skew.compared, skew.mismatched, skew.examples) == (CUSTOMERS, 0, [])


def test_compare_of_nothing(applied: Applied) -> None:
    config = _config(applied.repo)

    found, recomputed = compare(applied.store, config, _chosen(applied, config), [])

    assert recomputed == 0
    assert {name: skew.compared for name, skew in found.items()} == dict.fromkeys(NAMES, 0)


def test_compare_with_defaults_filled_the_same_way(applied: Applied, tmp_path: Path) -> None:
    config = _config(applied.repo, on_missing="default", defaults=DEFAULTS)
    rows = [{"customer_id": UNKNOWN, "amount": 5.0}, {"customer_id": 2, "amount": 5.0}]
    served = OnlineFeatures(applied.stores).fetch(
        version(tmp_path, applied.repo, on_missing="default", defaults=DEFAULTS), rows
    )
    found, _ = compare(
        applied.store,
        config,
        _chosen(applied, config),
        [ServedRow(r, v, served.at) for r, v in zip(rows, served.values, strict=True)],
    )

    assert served.defaulted == {0: NAMES}
    assert {name: skew.mismatched for name, skew in found.items()} == dict.fromkeys(NAMES, 0)


def test_compare_finds_values_written_wrong_to_the_online_store(tmp_path: Path) -> None:
    applied = _applied(tmp_path / "repo")
    config = _config(applied.repo)
    written = applied.repo.snapshot_time(DAYS - 1) + timedelta(minutes=1)
    customers = list(range(1, CUSTOMERS + 1))
    wrong = pd.DataFrame(
        {
            "customer_id": customers,
            "avg_amount_7d": [stats_at(c, DAYS - 1)[0] * 7 for c in customers],
            "txn_count_7d": [stats_at(c, DAYS - 1)[1] for c in customers],
            TIMESTAMP: [written] * len(customers),
        }
    )
    applied.store.write_to_online_store("customer_stats", wrong)
    served = _serve(applied, tmp_path, _requests())

    found, _ = compare(applied.store, config, _chosen(applied, config), served)

    assert {name: skew.rate for name, skew in found.items()} == {
        "avg_amount_7d": 1.0,
        "txn_count_7d": 0.0,
        "amount_ratio": 1.0,
    }
    skew = found["avg_amount_7d"]
    assert (skew.compared, skew.mismatched, len(skew.examples)) == (CUSTOMERS, CUSTOMERS, 5)
    first = skew.examples[0]
    assert first["request_id"] == "req0"
    assert first["entity"] == {"customer_id": 1}
    assert first["served"] == pytest.approx(stats_at(1, DAYS - 1)[0] * 7)
    assert first["offline"] == pytest.approx(stats_at(1, DAYS - 1)[0])
    assert first["served_at"].endswith("+00:00")


def test_compare_a_batch_that_names_an_entity_twice(applied: Applied, tmp_path: Path) -> None:
    config = _config(applied.repo)
    rows = [
        {"customer_id": 1, "amount": 10.0},
        {"customer_id": 1, "amount": 90.0},
        {"customer_id": 2, "amount": 10.0},
    ]
    served = _serve(applied, tmp_path, rows)

    found, recomputed = compare(applied.store, config, _chosen(applied, config), served)

    assert recomputed == 3
    assert {name: (s.compared, s.mismatched) for name, s in found.items()} == dict.fromkeys(
        NAMES, (3, 0)
    )
