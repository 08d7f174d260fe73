"""Online feature retrieval for a batch of request rows.

For a version whose manifest has a ``feature_store`` section, the data plane hands the
validated request rows to :meth:`OnlineFeatures.fetch` (in the inference pool: Feast's client
blocks). One ``get_online_features`` call serves the whole batch: Feast reads the rows'
entities from the online store and runs the repository's on-demand transformations on the
stored values and the request-time values. Each row the model gets is the request row with
the features added (request values keep their names; a feature never overwrites them).

A missing entity, a missing value (``None`` or NaN) or a value older than
``feature_store.max_age_s`` is never passed on silently: the ``on_missing`` policy either
answers 422 naming the entity, or uses the manifest's declared default for that feature (a
feature without a default is still refused).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelhost.errors import FeaturesUnavailable, InvalidInput, ServiceError
from modelhost.featurestore.repo import FeatureStores, Selection, select

if TYPE_CHECKING:
    from modelhost.manifest import FeatureStoreConfig
    from modelhost.observability.metrics import Metrics
    from modelhost.registry import VersionInfo

#: Suffix of the event-timestamp columns of Feast's ``to_dict(include_event_timestamps=True)``.
_TS = "__ts"


@dataclass(slots=True)
class Served:
    """What one retrieval gave a batch."""

    rows: list[dict[str, Any]]
    """The rows the model gets: request values and features."""
    values: list[dict[str, Any]]
    """Per row, the feature values as served (defaults applied): the provenance record."""
    at: float
    """When they were read (seconds since the epoch): the point in time a skew check
    recomputes them at."""
    ages: dict[str, float] = field(default_factory=dict)
    """Per feature view, the age in seconds of the oldest value read."""
    defaulted: dict[int, list[str]] = field(default_factory=dict)
    """Row index → features that got their default (missing or stale)."""

    def record(self) -> dict[str, Any]:
        """The ``feature_store`` decision kept with the provenance record."""
        found: dict[str, Any] = {"at": self.at, "values": self.values}
        if self.ages:
            found["ages"] = {view: round(age, 3) for view, age in self.ages.items()}
        if self.defaulted:
            found["defaulted"] = {str(i): names for i, names in self.defaulted.items()}
        return found


def missing(value: Any) -> bool:
    """Whether a stored value is absent: None or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def plain(value: Any) -> Any:
    """A JSON-ready value (numpy scalars from Feast become Python ones)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def entity_label(row: dict[str, Any], entities: list[str]) -> str:
    """``customer_id=1042`` (keys joined by commas) for messages."""
    return ",".join(f"{key}={row.get(key)!r}" for key in entities)


class OnlineFeatures:
    """Fetches, checks and merges stored features for the data plane."""

    def __init__(self, stores: FeatureStores, metrics: Metrics | None = None) -> None:
        self.stores = stores
        self.metrics = metrics
        self._selections: dict[tuple[str, str], Selection] = {}
        self._lock = threading.Lock()

    def selection(self, info: VersionInfo) -> Selection:
        """The resolved features of a version (resolved once, then kept).

        Raises:
            ConfigError: the repository does not define what the manifest names.
        """
        config = _config(info)
        key = (info.ref, config.repo)
        found = self._selections.get(key)
        if found is None:
            found = select(self.stores.get(config.repo), config)
            with self._lock:
                self._selections[key] = found
        return found

    def ready(self, info: VersionInfo) -> bool:
        """Whether the version's store is open and its selection resolved (the first read
        imports Feast and opens the store, which takes seconds)."""
        config = info.manifest.feature_store
        return config is not None and (info.ref, config.repo) in self._selections

    def forget(self, info: VersionInfo) -> None:
        """Drop a version's resolved selection (after it is unloaded)."""
        with self._lock:
            self._selections.pop((info.ref, _config(info).repo), None)

    def fetch(self, info: VersionInfo, rows: list[Any], now: float | None = None) -> Served:
        """The model rows of a batch, with one online retrieval.

        Raises:
            InvalidInput: a row is not an object or lacks an entity key.
            FeaturesUnavailable: a row's features are missing or stale and the policy (or a
                missing default) refuses it; the message names the entity.
            ServiceError: the online store cannot be read.
        """
        config = _config(info)
        chosen = self.selection(info)
        entity_rows = _entity_rows(rows, config, chosen)
        started = time.perf_counter()
        try:
            response = self.stores.get(config.repo).get_online_features(
                features=chosen.features, entity_rows=entity_rows
            )
            data = response.to_dict(include_event_timestamps=True)
        except Exception as exc:  # the online store is down or refused the read
            raise ServiceError(f"the online feature store of {info.ref} failed: {exc}") from exc
        took = time.perf_counter() - started
        at = now if now is not None else time.time()
        try:
            served = _merge(rows, data, config, chosen, at)
        except FeaturesUnavailable:
            if self.metrics is not None:
                self.metrics.feature_missing.labels(info.model, info.version, "rejected").inc()
            raise
        self._count(info, served, took)
        return served

    def _count(self, info: VersionInfo, served: Served, took: float) -> None:
        if self.metrics is None:
            return
        self.metrics.feature_fetch.labels(info.model, info.version).observe(took)
        for view, age in served.ages.items():
            self.metrics.feature_age.labels(info.model, info.version, view).observe(age)
        if served.defaulted:
            self.metrics.feature_missing.labels(info.model, info.version, "defaulted").inc(
                len(served.defaulted)
            )


def _config(info: VersionInfo) -> FeatureStoreConfig:
    config = info.manifest.feature_store
    if config is None:  # the data plane only calls for versions that have one
        raise InvalidInput(f"{info.ref} reads no stored features")
    return config


def _entity_rows(
    rows: list[Any], config: FeatureStoreConfig, chosen: Selection
) -> list[dict[str, Any]]:
    """Feast's ``entity_rows``: the join keys and the request-time values of each row."""
    wanted = (*config.entities, *chosen.request_fields)
    found: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InvalidInput(
                "this model reads stored features: send each input as an object with "
                f"{', '.join(config.entities)}",
                param=f"inputs[{index}]",
            )
        for key in wanted:
            if missing(row.get(key)):
                raise InvalidInput(
                    f"inputs[{index}] lacks {key!r}, which the stored features need",
                    param=f"inputs[{index}].{key}",
                )
        found.append({key: row[key] for key in wanted})
    return found


def _merge(
    rows: list[Any],
    data: dict[str, Any],
    config: FeatureStoreConfig,
    chosen: Selection,
    at: float,
) -> Served:
    served = Served(rows=[], values=[], at=at)
    oldest: dict[str, float] = {}
    for index, row in enumerate(rows):
        values: dict[str, Any] = {}
        lacking: list[str] = []
        stale = False
        for name in chosen.names:
            value = plain(data[name][index])
            stamp = data.get(name + _TS)
            seen = float(plain(stamp[index])) if stamp is not None else 0.0
            if seen > 0:
                age = max(0.0, at - seen)
                view = chosen.view_of.get(name, name)
                oldest[view] = max(oldest.get(view, 0.0), age)
                if config.max_age_s is not None and age > config.max_age_s:
                    value = None
                    stale = True
            if missing(value):
                lacking.append(name)
            values[name] = value
        if stale:
            # on-demand features were computed from the stale values just dropped: not trusted
            # either. (A missing stored value was missing for the transformation too, online and
            # offline alike: what it made of it stands, or is missing itself.)
            lacking += [
                n
                for n in chosen.names
                if n not in lacking and chosen.view_of[n] not in chosen.views
            ]
        if lacking:
            _fill(values, lacking, row, index, config)
            served.defaulted[index] = lacking
        served.values.append(values)
        served.rows.append({**values, **row})
    served.ages = oldest
    return served


def _fill(
    values: dict[str, Any],
    lacking: list[str],
    row: dict[str, Any],
    index: int,
    config: FeatureStoreConfig,
) -> None:
    """Apply the ``on_missing`` policy to a row's missing or stale features.

    Raises:
        FeaturesUnavailable: the policy is ``reject``, or a feature has no default.
    """
    who = entity_label(row, config.entities)
    if config.on_missing == "reject":
        raise FeaturesUnavailable(
            f"{who}: no fresh stored value for {', '.join(lacking)} (unknown entity, not "
            "materialized, or older than feature_store.max_age_s); this model refuses "
            "rows without them",
            param=f"inputs[{index}]",
        )
    undeclared = [name for name in lacking if name not in config.defaults]
    if undeclared:
        raise FeaturesUnavailable(
            f"{who}: no fresh stored value for {', '.join(undeclared)} and "
            "feature_store.defaults declares none",
            param=f"inputs[{index}]",
        )
    for name in lacking:
        values[name] = config.defaults[name]


def stored_of(recorded: Any) -> Served | None:
    """The :class:`Served` of a provenance record's ``feature_store`` decision (what a
    replay reuses); None when the record has none."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("values"), list):
        return None
    values = [dict(v) if isinstance(v, dict) else {} for v in recorded["values"]]
    defaulted = recorded.get("defaulted") or {}
    return Served(
        rows=[],
        values=values,
        at=float(recorded.get("at", 0.0)),
        ages=dict(recorded.get("ages") or {}),
        defaulted={int(k): list(v) for k, v in defaulted.items()},
    )
