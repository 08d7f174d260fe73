"""Online reads of stored features for a batch, against a real Feast repository.

Every test that reads runs over both online stores: Feast's SQLite file and a real Redis
(127.0.0.1:6379, db 0; each repository is its own Feast project, whose keys are deleted
afterwards). The repository and the model manifests come from
``tests/featurestore/builder.py``; the snapshot values are known (:func:`stats_at`), so every
merged row is checked against :func:`merged`.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
import redis

from modelhost.config import FeatureStoreSettings
from modelhost.errors import ConfigError, FeaturesUnavailable, InvalidInput, ServiceError
from modelhost.featurestore import apply_repo, materialize
from modelhost.featurestore.online import OnlineFeatures, Served, entity_label, stored_of
from modelhost.featurestore.repo import FeatureStores
from modelhost.manifest import load_manifest
from modelhost.observability.metrics import Metrics
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

REDIS_URL = "redis://127.0.0.1:6379/0"
NAMES = ["avg_amount_7d", "txn_count_7d", "amount_ratio"]
DEFAULTS = {"avg_amount_7d": 50.0, "txn_count_7d": 0, "amount_ratio": 1.0}
HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Backend:
    """An applied and materialized repository and the stores of one online store kind."""

    name: str
    repo: Repo
    stores: FeatureStores


def _drop_project(project: str) -> None:
    """Delete the Redis keys of a Feast project (Feast suffixes each key with it)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"*{project}", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _backend(root: Path, name: Literal["sqlite", "redis"]) -> Backend:
    repo = write_repo(root, f"fs{uuid.uuid4().hex[:10]}")
    redis_url = REDIS_URL if name == "redis" else None
    stores = FeatureStores(FeatureStoreSettings(online_store=name), redis_url)
    store = stores.get(str(repo.path))
    apply_repo(store)
    materialize(store)
    return Backend(name, repo, stores)


@pytest.fixture(scope="module")
def sqlite_backend(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    return _backend(tmp_path_factory.mktemp("fs-sqlite"), "sqlite")


@pytest.fixture(scope="module")
def redis_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    backend = _backend(tmp_path_factory.mktemp("fs-redis"), "redis")
    yield backend
    _drop_project(backend.repo.project)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    found: Backend = request.getfixturevalue(f"{request.param}_backend")
    return found


def version(root: Path, repo: Repo, **feature_store: Any) -> VersionInfo:
    """A version of the builder's scikit-learn model reading ``repo``."""
    directory = write_model(root, repo.path, feature_store=feature_store)
    manifest = load_manifest(directory)
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


def _requests(count: int) -> list[dict[str, Any]]:
    return [{"customer_id": 1 + i % CUSTOMERS, "amount": 15.0 + 7.0 * i} for i in range(count)]


# -- merged rows ------------------------------------------------------------------------------


def test_fetch_merges_the_newest_snapshot(backend: Backend, tmp_path: Path) -> None:
    online = OnlineFeatures(backend.stores)
    rows = [{"customer_id": 1, "amount": 10.0}, {"customer_id": 7, "amount": 250.0}]

    served = online.fetch(version(tmp_path, backend.repo), rows)

    assert served.rows == [merged(backend.repo, 1, 10.0), merged(backend.repo, 7, 250.0)]
    assert served.defaulted == {}


def test_fetch_a_whole_batch(backend: Backend, tmp_path: Path) -> None:
    rows = _requests(32)

    served = OnlineFeatures(backend.stores).fetch(version(tmp_path, backend.repo), rows)

    assert served.rows == [merged(backend.repo, r["customer_id"], r["amount"]) for r in rows]


def test_fetch_keeps_the_request_values_and_their_names(backend: Backend, tmp_path: Path) -> None:
    rows = [{"customer_id": 3, "amount": 70.0, "avg_amount_7d": -1.0, "channel": "web"}]

    served = OnlineFeatures(backend.stores).fetch(version(tmp_path, backend.repo), rows)

    avg, count = stats_at(3, DAYS - 1)
    assert served.rows == [
        {
            "customer_id": 3,
            "amount": 70.0,
            "avg_amount_7d": -1.0,
            "channel": "web",
            "txn_count_7d": count,
            "amount_ratio": 70.0 / avg,
        }
    ]
    assert served.values == [
        {"avg_amount_7d": avg, "txn_count_7d": count, "amount_ratio": 70.0 / avg}
    ]
    assert rows == [{"customer_id": 3, "amount": 70.0, "avg_amount_7d": -1.0, "channel": "web"}]


def test_fetch_computes_the_on_demand_feature(backend: Backend, tmp_path: Path) -> None:
    amounts = [0.0, 1.0, 33.3, 1000.0]
    rows = [{"customer_id": 2, "amount": amount} for amount in amounts]

    served = OnlineFeatures(backend.stores).fetch(version(tmp_path, backend.repo), rows)

    avg, _ = stats_at(2, DAYS - 1)
    assert [v["amount_ratio"] for v in served.values] == [a / avg for a in amounts]


def test_fetch_values_are_plain_python(backend: Backend, tmp_path: Path) -> None:
    served = OnlineFeatures(backend.stores).fetch(version(tmp_path, backend.repo), _requests(3))

    for values in served.values:
        assert [type(values[name]) for name in NAMES] == [float, int, float]


def test_fetch_of_named_features(backend: Backend, tmp_path: Path) -> None:
    info = version(
        tmp_path,
        backend.repo,
        service=None,
        features=["customer_stats:txn_count_7d", "amount_features:amount_ratio"],
    )

    served = OnlineFeatures(backend.stores).fetch(info, [{"customer_id": 4, "amount": 5.0}])

    avg, count = stats_at(4, DAYS - 1)
    assert served.values == [{"txn_count_7d": count, "amount_ratio": 5.0 / avg}]


# -- record and ages --------------------------------------------------------------------------


def test_served_record(backend: Backend, tmp_path: Path) -> None:
    at = backend.repo.now.timestamp()
    rows = [{"customer_id": 1, "amount": 10.0}, {"customer_id": 2, "amount": 20.0}]

    served = OnlineFeatures(backend.stores).fetch(version(tmp_path, backend.repo), rows, now=at)

    assert served.at == at
    assert served.record() == {
        "at": at,
        "values": [
            {name: merged(backend.repo, c, a)[name] for name in NAMES}
            for c, a in ((1, 10.0), (2, 20.0))
        ],
        "ages": {"customer_stats": HOUR},
    }


def test_ages_per_view_are_about_an_hour(backend: Backend, tmp_path: Path) -> None:
    served = OnlineFeatures(backend.stores).fetch(version(tmp_path, backend.repo), _requests(5))

    assert list(served.ages) == ["customer_stats"]
    assert served.ages["customer_stats"] == pytest.approx(
        HOUR + (datetime.now(UTC) - backend.repo.now).total_seconds(), abs=5
    )
    assert HOUR <= served.ages["customer_stats"] < 2 * HOUR


def test_record_of_defaulted_rows(backend: Backend, tmp_path: Path) -> None:
    info = version(tmp_path, backend.repo, on_missing="default", defaults=DEFAULTS)
    rows = [{"customer_id": UNKNOWN, "amount": 1.0}, {"customer_id": 1, "amount": 2.0}]

    record = OnlineFeatures(backend.stores).fetch(info, rows).record()

    assert record["defaulted"] == {"0": NAMES}
    assert record["values"][0] == DEFAULTS


def test_stored_of_round_trips_a_record(backend: Backend, tmp_path: Path) -> None:
    info = version(tmp_path, backend.repo, on_missing="default", defaults=DEFAULTS)
    rows = [{"customer_id": 1, "amount": 2.0}, {"customer_id": UNKNOWN, "amount": 1.0}]
    served = OnlineFeatures(backend.stores).fetch(info, rows)

    again = stored_of(served.record())

    assert again is not None
    assert again.values == served.values
    assert again.at == served.at
    assert again.defaulted == served.defaulted == {1: NAMES}
    assert again.ages == {view: round(age, 3) for view, age in served.ages.items()}
    assert again.rows == []
    assert again.record() == served.record()


def test_stored_of_a_record_that_went_through_json() -> None:
    recorded = {"at": 12, "values": [{"a": 1}, "junk"], "defaulted": {"1": ["a"]}}

    again = stored_of(recorded)

    assert again == Served(rows=[], values=[{"a": 1}, {}], at=12.0, defaulted={1: ["a"]})


@pytest.mark.parametrize("recorded", [None, "x", {}, {"values": "x"}, [{"values": []}]])
def test_stored_of_something_else_is_none(recorded: Any) -> None:
    assert stored_of(recorded) is None


# -- missing and stale values -----------------------------------------------------------------


def test_reject_an_unknown_entity(backend: Backend, tmp_path: Path) -> None:
    rows = [{"customer_id": 1, "amount": 1.0}, {"customer_id": UNKNOWN, "amount": 1.0}]

    with pytest.raises(FeaturesUnavailable) as raised:
        OnlineFeatures(backend.stores).fetch(version(tmp_path, backend.repo), rows)

    assert f"customer_id={UNKNOWN}" in raised.value.message
    assert "avg_amount_7d" in raised.value.message
    assert raised.value.param == "inputs[1]"


def test_default_fills_the_declared_defaults(backend: Backend, tmp_path: Path) -> None:
    info = version(tmp_path, backend.repo, on_missing="default", defaults=DEFAULTS)
    rows = [
        {"customer_id": 5, "amount": 40.0},
        {"customer_id": UNKNOWN, "amount": 40.0},
        {"customer_id": UNKNOWN + 1, "amount": 3.0},
    ]

    served = OnlineFeatures(backend.stores).fetch(info, rows)

    assert served.rows == [
        merged(backend.repo, 5, 40.0),
        {"customer_id": UNKNOWN, "amount": 40.0, **DEFAULTS},
        {"customer_id": UNKNOWN + 1, "amount": 3.0, **DEFAULTS},
    ]
    assert served.defaulted == {1: NAMES, 2: NAMES}


def test_default_without_a_declared_default_still_rejects(backend: Backend, tmp_path: Path) -> None:
    partial = {"avg_amount_7d": 50.0, "txn_count_7d": 0}
    info = version(tmp_path, backend.repo, on_missing="default", defaults=partial)
    rows = [{"customer_id": 1, "amount": 1.0}, {"customer_id": UNKNOWN, "amount": 1.0}]

    with pytest.raises(FeaturesUnavailable) as raised:
        OnlineFeatures(backend.stores).fetch(info, rows)

    assert f"customer_id={UNKNOWN}" in raised.value.message
    assert "amount_ratio and feature_store.defaults declares none" in raised.value.message
    assert raised.value.param == "inputs[1]"


def test_values_older_than_max_age_are_stale(backend: Backend, tmp_path: Path) -> None:
    info = version(tmp_path, backend.repo, max_age_s=600)

    with pytest.raises(FeaturesUnavailable) as raised:
        OnlineFeatures(backend.stores).fetch(info, [{"customer_id": 6, "amount": 1.0}])

    assert "customer_id=6" in raised.value.message
    assert "avg_amount_7d, txn_count_7d" in raised.value.message


def test_stale_values_get_the_defaults(backend: Backend, tmp_path: Path) -> None:
    info = version(tmp_path, backend.repo, max_age_s=600, on_missing="default", defaults=DEFAULTS)

    served = OnlineFeatures(backend.stores).fetch(info, [{"customer_id": 6, "amount": 1.0}])

    assert served.defaulted[0][:2] == ["avg_amount_7d", "txn_count_7d"]
    assert served.values[0]["avg_amount_7d"] == DEFAULTS["avg_amount_7d"]
    assert served.values[0]["txn_count_7d"] == DEFAULTS["txn_count_7d"]


def test_values_younger_than_max_age_are_served(backend: Backend, tmp_path: Path) -> None:
    info = version(tmp_path, backend.repo, max_age_s=HOUR + 600)
    at = backend.repo.now.timestamp()

    served = OnlineFeatures(backend.stores).fetch(info, [{"customer_id": 6, "amount": 1.0}], at)

    assert served.rows == [merged(backend.repo, 6, 1.0)]
    with pytest.raises(FeaturesUnavailable):
        OnlineFeatures(backend.stores).fetch(info, [{"customer_id": 6, "amount": 1.0}], at + 601)


# -- request rows -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "param"),
    [
        ([{"customer_id": 1, "amount": 1.0}, {"amount": 1.0}], "inputs[1].customer_id"),
        ([{"customer_id": None, "amount": 1.0}], "inputs[0].customer_id"),
        ([{"customer_id": 1}], "inputs[0].amount"),
        ([{"customer_id": 1, "amount": float("nan")}], "inputs[0].amount"),
        ([{"customer_id": 1, "amount": 1.0}, [1, 2.0]], "inputs[1]"),
    ],
)
def test_rows_without_what_the_features_need_are_invalid(
    sqlite_backend: Backend, tmp_path: Path, rows: list[Any], param: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        OnlineFeatures(sqlite_backend.stores).fetch(version(tmp_path, sqlite_backend.repo), rows)

    assert raised.value.param == param


def test_entity_label() -> None:
    assert entity_label({"customer_id": 1042}, ["customer_id"]) == "customer_id=1042"
    assert entity_label({"a": "x", "b": 2}, ["a", "b"]) == "a='x',b=2"
    assert entity_label({}, ["a"]) == "a=None"


# -- metrics ----------------------------------------------------------------------------------


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(
        name, {"model": "scorer", "version": "1.0.0", **labels}
    )


def test_metrics_count_one_fetch_per_batch(backend: Backend, tmp_path: Path) -> None:
    metrics = Metrics()
    online = OnlineFeatures(backend.stores, metrics)

    online.fetch(version(tmp_path, backend.repo), _requests(32))

    assert _sample(metrics, "modelhost_feature_fetch_seconds_count") == 1.0
    assert (_sample(metrics, "modelhost_feature_fetch_seconds_sum") or 0.0) > 0.0
    assert _sample(metrics, "modelhost_feature_age_seconds_count", view="customer_stats") == 1.0
    assert (
        _sample(metrics, "modelhost_feature_age_seconds_bucket", view="customer_stats", le="300.0")
        == 0.0
    )
    assert _sample(metrics, "modelhost_feature_missing_total", outcome="defaulted") is None


def test_metrics_count_defaulted_and_rejected_rows(backend: Backend, tmp_path: Path) -> None:
    metrics = Metrics()
    online = OnlineFeatures(backend.stores, metrics)
    lenient = version(tmp_path / "a", backend.repo, on_missing="default", defaults=DEFAULTS)
    strict = version(tmp_path / "b", backend.repo)
    rows = [{"customer_id": UNKNOWN, "amount": 1.0}] * 3 + [{"customer_id": 1, "amount": 1.0}]

    online.fetch(lenient, rows)
    with pytest.raises(FeaturesUnavailable):
        online.fetch(strict, rows)

    assert _sample(metrics, "modelhost_feature_missing_total", outcome="defaulted") == 3.0
    assert _sample(metrics, "modelhost_feature_missing_total", outcome="rejected") == 1.0
    assert _sample(metrics, "modelhost_feature_fetch_seconds_count") == 1.0


# -- selections and failures ------------------------------------------------------------------


def test_selection_is_resolved_once_and_forgotten(sqlite_backend: Backend, tmp_path: Path) -> None:
    online = OnlineFeatures(sqlite_backend.stores)
    info = version(tmp_path, sqlite_backend.repo)

    assert not online.ready(info)
    chosen = online.selection(info)
    assert online.ready(info)
    assert online.selection(info) is chosen
    assert chosen.names == tuple(NAMES)
    online.forget(info)
    assert not online.ready(info)
    assert sqlite_backend.stores.repos() == [str(sqlite_backend.repo.path)]


def test_a_version_without_stored_features(sqlite_backend: Backend, tmp_path: Path) -> None:
    info = version(tmp_path, sqlite_backend.repo)
    plain = VersionInfo(
        model=info.model,
        version=info.version,
        runtime=info.runtime,
        stage=info.stage,
        manifest=info.manifest.model_copy(update={"feature_store": None}),
        files={},
        size_bytes=0,
        created_at=info.created_at,
        created_by="tests",
    )
    online = OnlineFeatures(sqlite_backend.stores)

    assert not online.ready(plain)
    with pytest.raises(InvalidInput, match="reads no stored features"):
        online.fetch(plain, [{"customer_id": 1, "amount": 1.0}])


def test_an_unknown_service_is_a_config_error(sqlite_backend: Backend, tmp_path: Path) -> None:
    info = version(tmp_path, sqlite_backend.repo, service="nope")

    with pytest.raises(ConfigError, match="modelhost featurestore apply"):
        OnlineFeatures(sqlite_backend.stores).fetch(info, [{"customer_id": 1, "amount": 1.0}])


def test_an_online_store_that_is_down_is_a_service_error(
    sqlite_backend: Backend, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stores = FeatureStores(
        FeatureStoreSettings(online_store="redis"), f"redis://127.0.0.1:{port}/0"
    )
    info = version(tmp_path, sqlite_backend.repo)

    with pytest.raises(ServiceError, match=r"the online feature store of scorer@1\.0\.0 failed"):
        OnlineFeatures(stores).fetch(info, [{"customer_id": 1, "amount": 1.0}])
