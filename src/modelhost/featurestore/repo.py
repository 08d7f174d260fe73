"""Opening a Feast repository the way every modelhost process does.

A Feast repository is a directory of feature definitions (Python files declaring entities,
sources, feature views, on-demand feature views and feature services), with or without a
``feature_store.yaml``. modelhost reads that file when there is one and fills what it leaves
out with Feast's local defaults (``data/registry.db``, the SQLite online store
``data/online.db``, the file offline store); with ``feature_store.online_store: auto`` (the
default) and ``MODELHOST_REDIS_URL`` set, the online store becomes Feast's Redis store, so
every replica reads the same values. The CLI, the server and the example all open a
repository through :func:`open_store`, so they agree on where the values live.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import yaml

from modelhost.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from feast import FeatureStore

    from modelhost.config import FeatureStoreSettings
    from modelhost.manifest import FeatureStoreConfig

CONFIG_FILE = "feature_store.yaml"
_PROJECT = re.compile(r"[^a-zA-Z0-9_]")


def require_feast() -> None:
    """Import Feast or say which extra brings it.

    Raises:
        MissingDependencyError: the ``featurestore`` extra is not installed.
    """
    try:
        import feast  # noqa: F401
    except ImportError:
        raise MissingDependencyError("feast", "featurestore") from None


def redis_connection_string(url: str) -> str:
    """Feast's Redis ``connection_string`` (``host:port,db=N,password=…,ssl=true``) of a
    ``redis://`` or ``rediss://`` URL."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    fields = [f"{host}:{parts.port or 6379}"]
    db = parts.path.strip("/")
    if db:
        fields.append(f"db={db}")
    if parts.password:
        fields.append(f"password={unquote(parts.password)}")
    if parts.scheme == "rediss":
        fields.append("ssl=true")
    return ",".join(fields)


def repo_config(
    repo: Path, *, online_store: str = "auto", redis_url: str | None = None
) -> dict[str, Any]:
    """The Feast configuration of ``repo`` as a mapping (``feature_store.yaml`` + defaults +
    the online store modelhost is set to use).

    Raises:
        ConfigError: the directory is missing or its ``feature_store.yaml`` is not a mapping.
    """
    if not repo.is_dir():
        raise ConfigError(f"feature repository {repo} is not a directory")
    data: dict[str, Any] = {}
    path = repo / CONFIG_FILE
    if path.is_file():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: must be a mapping of Feast settings")
        data = loaded
    data.setdefault("project", _PROJECT.sub("_", repo.name) or "modelhost")
    data.setdefault("provider", "local")
    data.setdefault("registry", "data/registry.db")
    data.setdefault("online_store", {"type": "sqlite", "path": "data/online.db"})
    data.setdefault("offline_store", {"type": "file"})
    data.setdefault("entity_key_serialization_version", 3)
    use_redis = online_store == "redis" or (online_store == "auto" and redis_url)
    if use_redis:
        if not redis_url:
            raise ConfigError(
                "feature_store.online_store is 'redis' but MODELHOST_REDIS_URL is not set"
            )
        data["online_store"] = {
            "type": "redis",
            "connection_string": redis_connection_string(redis_url),
        }
    elif online_store == "sqlite":
        data["online_store"] = {"type": "sqlite", "path": "data/online.db"}
    return data


def open_store(
    repo: str | Path, *, online_store: str | None = None, redis_url: str | None = None
) -> FeatureStore:
    """A Feast ``FeatureStore`` over ``repo``, configured as a modelhost server configures it:
    use it in scripts that write features, so they write where the server reads.

    Args:
        repo: the repository directory.
        online_store: ``auto``, ``repository``, ``sqlite`` or ``redis`` (see
            :class:`~modelhost.config.FeatureStoreSettings`); None: from the environment
            (``MODELHOST_FEATURE_STORE__ONLINE_STORE``), as the server reads it.
        redis_url: None: ``MODELHOST_REDIS_URL`` from the environment; ``""``: no Redis.

    Raises:
        MissingDependencyError: the ``featurestore`` extra is not installed.
        ConfigError: the repository or its settings are wrong.
    """
    if online_store is None or redis_url is None:
        from modelhost.config import Settings

        settings = Settings()
        online_store = online_store or settings.feature_store.online_store
        redis_url = settings.redis_url if redis_url is None else redis_url
    path = Path(repo).resolve()
    data = repo_config(path, online_store=online_store, redis_url=redis_url)
    require_feast()  # after the cheap checks: importing Feast takes seconds
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    (path / "data").mkdir(exist_ok=True)
    try:
        config = RepoConfig(repo_path=path, **data)
    except Exception as exc:  # pydantic's error names the wrong Feast setting
        raise ConfigError(f"{path / CONFIG_FILE}: {exc}") from None
    return FeatureStore(repo_path=str(path), config=config)


def load_definitions(repo: Path) -> list[Any]:
    """The Feast objects (entities, sources, views, services) the repository's Python files
    define, in file order.

    Each file runs as a module of its own with a private name that is not left in
    ``sys.modules``, as Feast's ``feast apply`` would run it, but without changing the working
    directory or clashing with another repository's ``features.py`` in the same process; and
    on-demand transformations are then stored by value, so a server without the repository
    on its path can run them.

    Raises:
        ConfigError: a file fails to run.
    """
    from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView
    from feast.data_source import DataSource
    from feast.stream_feature_view import StreamFeatureView

    kinds = (
        Entity,
        DataSource,
        FeatureView,
        OnDemandFeatureView,
        StreamFeatureView,
        FeatureService,
    )
    found: list[Any] = []
    for index, path in enumerate(sorted(repo.rglob("*.py"))):
        if any(
            part.startswith(".") or part in ("data", "__pycache__")
            for part in path.relative_to(repo).parts[:-1]
        ):
            continue
        name = (
            f"_modelhost_feature_repo_{index}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        )
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and the like look themselves up while running
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # a definitions file that fails: say which
            raise ConfigError(f"{path}: the feature definitions do not run: {exc}") from None
        finally:
            sys.modules.pop(name, None)
        for value in vars(module).values():
            if isinstance(value, kinds) and not any(value is seen for seen in found):
                found.append(value)
    return found


def apply_repo(store: FeatureStore) -> list[str]:
    """Register every definition of the store's repository (what ``feast apply`` does) and
    return the names of the feature views, on-demand views and services now known.

    Raises:
        ConfigError: the definitions do not run or Feast refuses them.
    """
    objects = load_definitions(Path(str(store.repo_path)))
    try:
        store.apply(objects)
    except Exception as exc:  # Feast's own validation errors
        raise ConfigError(f"{store.repo_path}: Feast refused the definitions: {exc}") from None
    from feast import FeatureService, FeatureView, OnDemandFeatureView

    named = (FeatureView, OnDemandFeatureView, FeatureService)
    return sorted(o.name for o in objects if isinstance(o, named))


def materialize(store: FeatureStore, end: datetime | None = None) -> datetime:
    """Load the online store with every feature view's values up to ``end`` (default: now),
    from where the last materialization stopped; returns ``end``."""
    until = end or datetime.now(UTC)
    store.materialize_incremental(end_date=until)
    return until


@dataclass(frozen=True, slots=True)
class Selection:
    """What one model reads: the Feast feature argument and the names it yields."""

    features: Any
    """A ``FeatureService`` or a list of ``view:feature`` references (Feast's argument)."""
    names: tuple[str, ...]
    """Feature names as they appear in a row (without the view prefix)."""
    views: tuple[str, ...]
    """Feature views read from the online store (on-demand views are computed)."""
    request_fields: tuple[str, ...]
    """Request-time values the on-demand transformations need."""
    digest: str
    """sha256 of the definitions involved (views, on-demand views, service)."""
    view_of: dict[str, str]
    """Feature name → the feature view (or on-demand view) it comes from."""


def _projections(service: Any, config: FeatureStoreConfig) -> list[tuple[str, list[str]]]:
    """(view, features) pairs the model reads: the service's, or the references grouped."""
    if service is not None:
        return [(p.name, [f.name for f in p.features]) for p in service.feature_view_projections]
    grouped: dict[str, list[str]] = {}
    for ref in config.features:
        view, _, feature = ref.partition(":")
        grouped.setdefault(view, []).append(feature)
    return list(grouped.items())


def _spec_bytes(spec: Any) -> bytes:
    """A definition's spec serialized without the ``meta`` (created and updated timestamps)
    Feast stamps on the data sources inside it: those change on every read of the registry
    and every apply, the definition does not."""
    copy = type(spec)()
    copy.CopyFrom(spec)
    _drop_meta(copy)
    return bytes(copy.SerializeToString(deterministic=True))


def _drop_meta(message: Any) -> None:
    from google.protobuf.descriptor import FieldDescriptor

    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.name == "meta":
            message.ClearField(field.name)
        elif field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                for item in value.values():
                    _drop_meta(item)
        elif field.is_repeated:
            for item in value:
                _drop_meta(item)
        else:
            _drop_meta(value)


def select(store: FeatureStore, config: FeatureStoreConfig) -> Selection:
    """Resolve a model's ``feature_store`` section against the repository's registry.

    Raises:
        ConfigError: the service, a view or a feature is not registered (``apply`` first).
    """
    try:
        service = store.get_feature_service(config.service) if config.service else None
        projections = _projections(service, config)
        ondemand = {v.name: v for v in store.list_on_demand_feature_views()}
        digest = hashlib.sha256()
        views: list[str] = []
        request_fields: list[str] = []
        for name, _ in projections:
            if name in ondemand:
                view: Any = ondemand[name]
                for source in view.source_request_sources.values():
                    request_fields.extend(f.name for f in source.schema)
            else:
                view = store.get_feature_view(name)
                views.append(name)
            digest.update(_spec_bytes(view.to_proto().spec))
        if service is not None:
            digest.update(_spec_bytes(service.to_proto().spec))
    except Exception as exc:  # Feast's FeatureServiceNotFoundException and kin
        raise ConfigError(
            f"feature repository {store.repo_path}: {exc} (run 'modelhost featurestore apply "
            f"{store.repo_path}')"
        ) from None
    names = tuple(feature for _, features in projections for feature in features)
    features: Any = service if service is not None else list(config.features)
    view_of = {feature: view for view, features in projections for feature in features}
    return Selection(
        features,
        names,
        tuple(views),
        tuple(dict.fromkeys(request_fields)),
        digest.hexdigest(),
        view_of,
    )


class FeatureStores:
    """The open Feast stores of one process, one per repository, opened on first use.

    Feast's ``FeatureStore`` caches its registry; opening one reads the registry file, so it
    is done once per repository and shared by every model that names it.
    """

    def __init__(self, settings: FeatureStoreSettings, redis_url: str | None) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self._stores: dict[str, FeatureStore] = {}
        self._lock = threading.Lock()

    def get(self, repo: str) -> FeatureStore:
        """The store of ``repo`` (opened now if it is not yet)."""
        store = self._stores.get(repo)
        if store is not None:
            return store
        with self._lock:
            store = self._stores.get(repo)
            if store is None:
                store = open_store(
                    repo, online_store=self.settings.online_store, redis_url=self.redis_url or ""
                )
                self._stores[repo] = store
        return store

    def forget(self, repos: Iterable[str]) -> None:
        """Drop open stores (their registry is read again on next use)."""
        with self._lock:
            for repo in repos:
                self._stores.pop(repo, None)

    def repos(self) -> list[str]:
        """Repositories opened so far."""
        return list(self._stores)
