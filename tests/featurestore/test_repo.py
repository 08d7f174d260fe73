"""Opening, applying, selecting from and materializing a real Feast repository.

The repository is the one of ``tests/featurestore/builder.py`` (local provider, file offline
store, SQLite online store unless a test says otherwise). Tests that only read share one
applied and materialized repository; tests that change definitions or the online store write
their own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelhost.errors import ConfigError
from modelhost.featurestore import apply_repo, materialize, open_store
from modelhost.featurestore.repo import redis_connection_string, repo_config, select
from modelhost.manifest import FeatureStoreConfig
from tests.featurestore.builder import CUSTOMERS, DAYS, SERVICE, Repo, stats_at, write_repo

pytest.importorskip("feast")

RATIO_LINE = 'out["amount_ratio"] = inputs["amount"] / inputs["avg_amount_7d"]'


@dataclass(frozen=True, slots=True)
class Applied:
    repo: Repo
    store: Any
    names: list[str]


def _open(path: Path) -> Any:
    """The store as a server without Redis opens it (whatever this process's environment)."""
    return open_store(path, online_store="auto", redis_url="")


def _project() -> str:
    return f"fs{uuid.uuid4().hex[:10]}"


def _service(repo: Repo, name: str = SERVICE) -> FeatureStoreConfig:
    return FeatureStoreConfig(repo=str(repo.path), service=name, entities=["customer_id"])


def _online(store: Any, customers: list[int], amount: float = 10.0) -> dict[str, list[Any]]:
    rows = [{"customer_id": c, "amount": amount} for c in customers]
    features = store.get_feature_service(SERVICE)
    found: dict[str, list[Any]] = store.get_online_features(
        features=features, entity_rows=rows
    ).to_dict()
    return found


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Applied:
    repo = write_repo(tmp_path_factory.mktemp("fs-repo"), _project())
    store = _open(repo.path)
    names = apply_repo(store)
    materialize(store)
    return Applied(repo, store, names)


# -- redis_connection_string ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "127.0.0.1:6379,db=0"),
        ("redis://cache.internal", "cache.internal:6379"),
        ("redis://cache.internal:6380/3", "cache.internal:6380,db=3"),
        ("redis://:s3cret@cache.internal:6380/2", "cache.internal:6380,db=2,password=s3cret"),
        ("redis://user:p%40ss%2Fword@host/1", "host:6379,db=1,password=p@ss/word"),
        ("rediss://:pw@secure.example:6390", "secure.example:6390,password=pw,ssl=true"),
        ("rediss://secure.example/4", "secure.example:6379,db=4,ssl=true"),
    ],
)
def test_redis_connection_string_of_a_url(url: str, expected: str) -> None:
    assert redis_connection_string(url) == expected


# -- repo_config ------------------------------------------------------------------------------


def test_repo_config_without_a_feature_store_yaml_uses_local_defaults(tmp_path: Path) -> None:
    directory = tmp_path / "fraud-features"
    directory.mkdir()

    assert repo_config(directory) == {
        "project": "fraud_features",
        "provider": "local",
        "registry": "data/registry.db",
        "online_store": {"type": "sqlite", "path": "data/online.db"},
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }


def test_repo_config_keeps_the_repository_s_own_settings(tmp_path: Path) -> None:
    own = {
        "project": "mine",
        "provider": "local",
        "registry": "meta/registry.db",
        "online_store": {"type": "sqlite", "path": "meta/online.db"},
        "entity_key_serialization_version": 3,
    }
    (tmp_path / "feature_store.yaml").write_text(yaml.safe_dump(own))

    found = repo_config(tmp_path)

    assert found == {**own, "offline_store": {"type": "file"}}
    assert repo_config(tmp_path, online_store="repository", redis_url="redis://r:6379/0") == found


def test_repo_config_sqlite_replaces_the_repository_s_online_store(tmp_path: Path) -> None:
    (tmp_path / "feature_store.yaml").write_text(
        yaml.safe_dump({"project": "mine", "online_store": {"type": "sqlite", "path": "x.db"}})
    )

    found = repo_config(tmp_path, online_store="sqlite", redis_url="redis://r:6379/0")

    assert found["online_store"] == {"type": "sqlite", "path": "data/online.db"}
    assert found["project"] == "mine"


def test_repo_config_auto_with_a_redis_url_uses_redis(tmp_path: Path) -> None:
    (tmp_path / "feature_store.yaml").write_text(yaml.safe_dump({"project": "mine"}))

    found = repo_config(tmp_path, redis_url="redis://:pw@cache:6380/2")

    assert found["online_store"] == {
        "type": "redis",
        "connection_string": "cache:6380,db=2,password=pw",
    }
    assert found["project"] == "mine"


@pytest.mark.parametrize("online_store", ["redis", "auto"])
def test_repo_config_redis_is_forced_with_a_url(tmp_path: Path, online_store: str) -> None:
    found = repo_config(tmp_path, online_store=online_store, redis_url="redis://r:6379/0")

    assert found["online_store"] == {"type": "redis", "connection_string": "r:6379,db=0"}


def test_repo_config_auto_without_a_url_keeps_sqlite(tmp_path: Path) -> None:
    assert repo_config(tmp_path, online_store="auto", redis_url=None)["online_store"] == {
        "type": "sqlite",
        "path": "data/online.db",
    }


def test_repo_config_redis_without_a_url_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MODELHOST_REDIS_URL is not set"):
        repo_config(tmp_path, online_store="redis")


def test_repo_config_of_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        repo_config(tmp_path / "nowhere")
    (tmp_path / "file.py").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        repo_config(tmp_path / "file.py")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", ""])
def test_repo_config_whose_yaml_is_not_a_mapping_is_a_config_error(
    tmp_path: Path, text: str
) -> None:
    (tmp_path / "feature_store.yaml").write_text(text)

    with pytest.raises(ConfigError, match="must be a mapping of Feast settings"):
        repo_config(tmp_path)


# -- open_store, apply_repo -------------------------------------------------------------------


def test_open_store_uses_the_repository_s_project_and_online_store(applied: Applied) -> None:
    assert applied.store.project == applied.repo.project
    assert applied.store.config.online_store.type == "sqlite"
    assert (applied.repo.path / "data" / "online.db").is_file()


def test_open_store_with_a_redis_url_uses_redis(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, _project())

    store = open_store(repo.path, online_store="auto", redis_url="redis://127.0.0.1:6379/0")

    assert store.config.online_store.type == "redis"
    assert store.config.online_store.connection_string == "127.0.0.1:6379,db=0"


def test_open_store_reads_the_server_s_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = write_repo(tmp_path, _project())
    monkeypatch.setenv("MODELHOST_REDIS_URL", "redis://:pw@cache:6380/2")

    assert open_store(repo.path).config.online_store.type == "redis"
    assert open_store(repo.path, redis_url="").config.online_store.type == "sqlite"
    assert open_store(repo.path, online_store="sqlite").config.online_store.type == "sqlite"
    monkeypatch.setenv("MODELHOST_FEATURE_STORE__ONLINE_STORE", "repository")
    assert open_store(repo.path).config.online_store.type == "sqlite"


def test_open_store_without_redis_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = write_repo(tmp_path, _project())
    monkeypatch.delenv("MODELHOST_REDIS_URL", raising=False)
    monkeypatch.setenv("MODELHOST_FEATURE_STORE__ONLINE_STORE", "redis")

    with pytest.raises(ConfigError, match="MODELHOST_REDIS_URL is not set"):
        open_store(repo.path)


def test_open_store_of_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        open_store(tmp_path / "nowhere")


def test_open_store_with_a_wrong_feast_setting_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "feature_store.yaml").write_text(
        yaml.safe_dump({"project": "mine", "online_store": {"type": "sqlite", "nonsense": 1}})
    )

    with pytest.raises(ConfigError, match=r"feature_store\.yaml"):
        _open(tmp_path)


def test_apply_repo_returns_the_view_and_service_names(applied: Applied) -> None:
    assert applied.names == ["amount_features", "customer_stats", "scoring"]
    assert [v.name for v in applied.store.list_feature_views()] == ["customer_stats"]
    assert [v.name for v in applied.store.list_on_demand_feature_views()] == ["amount_features"]
    assert [s.name for s in applied.store.list_feature_services()] == ["scoring"]


def test_apply_repo_twice_is_harmless(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, _project())
    store = _open(repo.path)

    assert apply_repo(store) == apply_repo(store)


def test_two_repositories_with_a_features_py_do_not_clash(tmp_path: Path) -> None:
    first = write_repo(tmp_path / "a", _project())
    second = write_repo(tmp_path / "b", _project())
    definitions = (second.path / "features.py").read_text()
    changed = definitions.replace('name="scoring"', 'name="ranking"').replace(
        RATIO_LINE, RATIO_LINE + " * 100"
    )
    assert changed != definitions
    (second.path / "features.py").write_text(changed)

    stores = [_open(first.path), _open(second.path)]
    names = [apply_repo(store) for store in stores]
    for store in stores:
        materialize(store)

    assert names == [
        ["amount_features", "customer_stats", "scoring"],
        ["amount_features", "customer_stats", "ranking"],
    ]
    rows = [{"customer_id": 2, "amount": 60.0}]
    ratios = [
        store.get_online_features(
            features=store.get_feature_service(service), entity_rows=rows
        ).to_dict()["amount_ratio"][0]
        for store, service in zip(stores, ["scoring", "ranking"], strict=True)
    ]
    avg, _ = stats_at(2, DAYS - 1)
    assert ratios == [pytest.approx(60.0 / avg), pytest.approx(6000.0 / avg)]


def test_apply_repo_of_definitions_that_fail_is_a_config_error(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, _project())
    (repo.path / "broken.py").write_text("raise RuntimeError('no such table')\n")

    with pytest.raises(ConfigError, match=r"broken\.py: the feature definitions do not run"):
        apply_repo(_open(repo.path))


def test_apply_repo_skips_the_data_directory(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, _project())
    (repo.path / "data" / "scratch.py").write_text("raise RuntimeError('not a definition')\n")

    assert apply_repo(_open(repo.path)) == ["amount_features", "customer_stats", "scoring"]


# -- select -----------------------------------------------------------------------------------


def test_select_a_service(applied: Applied) -> None:
    chosen = select(applied.store, _service(applied.repo))

    assert chosen.names == ("avg_amount_7d", "txn_count_7d", "amount_ratio")
    assert chosen.views == ("customer_stats",)
    assert chosen.request_fields == ("amount",)
    assert chosen.view_of == {
        "avg_amount_7d": "customer_stats",
        "txn_count_7d": "customer_stats",
        "amount_ratio": "amount_features",
    }
    assert chosen.features.name == SERVICE
    assert len(chosen.digest) == 64


def test_select_feature_references(applied: Applied) -> None:
    config = FeatureStoreConfig(
        repo=str(applied.repo.path),
        features=["customer_stats:avg_amount_7d", "amount_features:amount_ratio"],
        entities=["customer_id"],
    )

    chosen = select(applied.store, config)

    assert chosen.features == ["customer_stats:avg_amount_7d", "amount_features:amount_ratio"]
    assert chosen.names == ("avg_amount_7d", "amount_ratio")
    assert chosen.views == ("customer_stats",)
    assert chosen.request_fields == ("amount",)
    assert chosen.digest != select(applied.store, _service(applied.repo)).digest


def test_select_of_stored_features_only_needs_no_request_fields(applied: Applied) -> None:
    config = FeatureStoreConfig(
        repo=str(applied.repo.path),
        features=["customer_stats:txn_count_7d"],
        entities=["customer_id"],
    )

    chosen = select(applied.store, config)

    assert chosen.names == ("txn_count_7d",)
    assert chosen.request_fields == ()


def test_select_digest_is_stable(applied: Applied) -> None:
    first = select(applied.store, _service(applied.repo))
    again = select(applied.store, _service(applied.repo))
    elsewhere = select(_open(applied.repo.path), _service(applied.repo))

    assert first.digest == again.digest == elsewhere.digest


def test_select_digest_survives_applying_the_same_definitions_again(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, _project())
    store = _open(repo.path)
    apply_repo(store)
    before = select(store, _service(repo)).digest

    apply_repo(_open(repo.path))

    assert select(_open(repo.path), _service(repo)).digest == before


def test_select_digest_changes_with_a_definition(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, _project())
    store = _open(repo.path)
    apply_repo(store)
    before = select(store, _service(repo)).digest
    definitions = (repo.path / "features.py").read_text()
    (repo.path / "features.py").write_text(
        definitions.replace("ttl=timedelta(days=30)", "ttl=timedelta(days=7)")
    )

    apply_repo(store)

    assert select(store, _service(repo)).digest != before
    assert select(_open(repo.path), _service(repo)).digest != before


def test_select_an_unknown_service_says_to_apply(applied: Applied) -> None:
    with pytest.raises(ConfigError, match="modelhost featurestore apply") as raised:
        select(applied.store, _service(applied.repo, "nope"))

    assert "nope" in raised.value.message


def test_select_an_unknown_view_says_to_apply(applied: Applied) -> None:
    config = FeatureStoreConfig(
        repo=str(applied.repo.path), features=["elsewhere:thing"], entities=["customer_id"]
    )

    with pytest.raises(ConfigError, match="modelhost featurestore apply"):
        select(applied.store, config)


def test_select_in_a_repository_never_applied_says_to_apply(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, _project())

    with pytest.raises(ConfigError, match="modelhost featurestore apply"):
        select(_open(repo.path), _service(repo))


# -- materialize ------------------------------------------------------------------------------


def test_materialize_loads_the_online_store_up_to_now(applied: Applied) -> None:
    found = _online(applied.store, list(range(1, CUSTOMERS + 1)))

    assert found["avg_amount_7d"] == [stats_at(c, DAYS - 1)[0] for c in range(1, CUSTOMERS + 1)]
    assert found["txn_count_7d"] == [stats_at(c, DAYS - 1)[1] for c in range(1, CUSTOMERS + 1)]


def test_materialize_up_to_a_time_then_incrementally(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, _project())
    store = _open(repo.path)
    apply_repo(store)
    empty = _online(store, [1, 2])
    end = repo.snapshot_time(1) + timedelta(minutes=1)

    assert materialize(store, end) == end
    middle = _online(store, [1, 2])
    later = materialize(store)
    newest = _online(store, [1, 2])

    assert empty["avg_amount_7d"] == [None, None]
    assert middle["avg_amount_7d"] == [stats_at(1, 1)[0], stats_at(2, 1)[0]]
    assert later > end
    assert newest["avg_amount_7d"] == [stats_at(1, DAYS - 1)[0], stats_at(2, DAYS - 1)[0]]
