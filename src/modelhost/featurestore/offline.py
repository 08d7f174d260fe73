"""The offline side: training frames and train-serve skew, from the same definitions.

* :func:`training_set` asks Feast for a point-in-time-correct frame (each entity row gets the
  feature values as they were at its ``event_timestamp``, on-demand transformations applied)
  and fills missing values with the model's declared defaults exactly as serving does, so a
  model is trained on what it will be served.
* :func:`compare` recomputes served rows offline, at the entity and the moment they were
  served, and counts per feature how often the value served differs from the recomputation.
  A feature computed one way for training and another way online (a hand-written serving
  path, a unit mistake, a window of another length) shows up as a mismatch rate.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelhost.errors import InvalidInput
from modelhost.featurestore.online import missing, plain
from modelhost.featurestore.repo import Selection

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

    from modelhost.manifest import FeatureStoreConfig

TIMESTAMP = "event_timestamp"
#: Column that keeps served rows in order through Feast's point-in-time join.
_ROW = "_modelhost_row"
#: Mismatching rows shown per feature in a skew report.
_EXAMPLES = 5


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_entities(path: Path) -> pd.DataFrame:
    """An entity file (parquet, CSV or JSON lines) as a frame with a UTC ``event_timestamp``.

    Raises:
        InvalidInput: the file cannot be read or has no ``event_timestamp`` column.
    """
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True)
        else:
            frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path}: not a readable entity file: {exc}", param="entities") from None
    if TIMESTAMP not in frame.columns:
        raise InvalidInput(
            f"{path}: the entity file needs an {TIMESTAMP!r} column (when each row's features "
            "should be taken)",
            param="entities",
        )
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True)
    return frame


def _check_columns(frame: pd.DataFrame, config: FeatureStoreConfig, chosen: Selection) -> None:
    lacking = [c for c in (*config.entities, *chosen.request_fields) if c not in frame.columns]
    if lacking:
        raise InvalidInput(
            f"the entity file lacks {', '.join(lacking)} (entity keys and request-time values "
            "the features need)",
            param="entities",
        )


def fill_defaults(frame: pd.DataFrame, config: FeatureStoreConfig, names: tuple[str, ...]) -> int:
    """Fill missing feature values with the declared defaults, as serving does under
    ``on_missing: default``; returns how many rows had a missing value."""
    present = [n for n in names if n in frame.columns]
    lacking = int(frame[present].isna().any(axis=1).sum()) if present else 0
    if config.on_missing == "default":
        for name in present:
            if name in config.defaults:
                frame[name] = frame[name].fillna(config.defaults[name])
    return lacking


def distinct_times(frame: pd.DataFrame) -> pd.DataFrame:
    """The entity frame with rows that share a timestamp made distinct by a microsecond each:
    Feast's file offline store (0.67) collapses rows that share one view's join key and the
    timestamp into one (feast-dev/feast#6787), and a batch served at one moment often names an
    entity twice (or two entities of one view's key, with different other keys)."""
    import pandas as pd

    repeat = frame.groupby(TIMESTAMP, sort=False).cumcount()
    if not repeat.any():
        return frame
    shifted = frame.copy()
    shifted[TIMESTAMP] = shifted[TIMESTAMP] + pd.to_timedelta(repeat, unit="us")
    return shifted


@dataclass(frozen=True, slots=True)
class TrainingFrame:
    """A training frame and what building it found."""

    frame: pd.DataFrame
    rows_in: int
    """Rows of the entity file."""
    missing: int
    """Rows that lacked a stored value (the ``on_missing`` policy was applied)."""

    @property
    def lost(self) -> int:
        """Entity rows the offline store returned no row for (a view's ``ttl`` shorter than
        the gap to the entity's previous value drops the row in Feast's file store)."""
        return self.rows_in - len(self.frame)


def training_set(
    store: FeatureStore, config: FeatureStoreConfig, chosen: Selection, entities: pd.DataFrame
) -> TrainingFrame:
    """The point-in-time-correct training frame of ``entities``: every column of the entity
    file is kept (labels ride along), rows in the file's order with its timestamps.

    Raises:
        InvalidInput: the entity file lacks a key or a request-time value.
    """
    _check_columns(entities, config, chosen)
    asked = entities.reset_index(drop=True).copy()
    asked[_ROW] = range(len(asked))
    original = asked[TIMESTAMP].copy()
    query = distinct_times(asked)
    frame = store.get_historical_features(entity_df=query, features=chosen.features).to_df()
    frame = frame.sort_values(_ROW).reset_index(drop=True)
    frame[TIMESTAMP] = original.iloc[frame[_ROW].to_numpy()].to_numpy()
    frame = frame.drop(columns=[_ROW])
    lacking = fill_defaults(frame, config, chosen.names)
    return TrainingFrame(frame, len(asked), lacking)


@dataclass(slots=True)
class FeatureSkew:
    """How one feature compared."""

    compared: int = 0
    mismatched: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Share of compared rows that differ."""
        return self.mismatched / self.compared if self.compared else 0.0


@dataclass(slots=True)
class ServedRow:
    """One row as served: its request values, the feature values and when."""

    row: dict[str, Any]
    values: dict[str, Any]
    at: float
    request_id: str = ""


def same(served: Any, offline: Any, tolerance: float) -> bool:
    """Whether a served value equals its offline recomputation (numbers within a relative
    ``tolerance``; two missing values are equal)."""
    if missing(served) or missing(offline):
        return missing(served) and missing(offline)
    numbers = (int, float)
    if isinstance(served, numbers) and isinstance(offline, numbers):
        return math.isclose(float(served), float(offline), rel_tol=tolerance, abs_tol=1e-9)
    return bool(served == offline)


def compare(
    store: FeatureStore,
    config: FeatureStoreConfig,
    chosen: Selection,
    served: list[ServedRow],
) -> tuple[dict[str, FeatureSkew], int]:
    """Recompute ``served`` rows offline and count mismatches per feature; also returns how
    many rows the offline store gave back (a row it drops is not compared)."""
    import pandas as pd

    if not served:
        return {name: FeatureSkew() for name in chosen.names}, 0
    keys = (*config.entities, *chosen.request_fields)
    entity_df = pd.DataFrame(
        [
            {
                **{k: s.row.get(k) for k in keys},
                TIMESTAMP: datetime.fromtimestamp(s.at, UTC),
                _ROW: i,
            }
            for i, s in enumerate(served)
        ]
    )
    query = distinct_times(entity_df)
    frame = store.get_historical_features(entity_df=query, features=chosen.features).to_df()
    fill_defaults(frame, config, chosen.names)
    frame = frame.sort_values(_ROW).set_index(_ROW)
    found = {name: FeatureSkew() for name in chosen.names}
    for index, item in enumerate(served):
        if index not in frame.index:
            continue
        offline = frame.loc[index]
        for name, skew in found.items():
            if name not in item.values or name not in frame.columns:
                continue
            now, then = item.values[name], plain(offline[name])
            skew.compared += 1
            if same(now, then, config.skew_tolerance):
                continue
            skew.mismatched += 1
            if len(skew.examples) < _EXAMPLES:
                skew.examples.append(
                    {
                        "request_id": item.request_id,
                        "entity": {k: item.row.get(k) for k in config.entities},
                        "served_at": datetime.fromtimestamp(item.at, UTC).isoformat(),
                        "served": now,
                        "offline": then,
                    }
                )
    return found, len(frame)
