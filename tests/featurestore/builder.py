"""A real Feast repository and a real scikit-learn model that reads from it, for the tests.

The repository (local provider) has one entity ``customer`` (join key ``customer_id``), one
feature view ``customer_stats`` over a parquet file of daily snapshots, a request source
``transaction`` (``amount``), an on-demand feature view ``amount_features`` computing
``amount_ratio = amount / avg_amount_7d``, and a feature service ``scoring`` of both.

Snapshot values are a function of the customer and the day (:func:`stats_at`), so a test can
say which value a point-in-time read must return. Customers 1…``CUSTOMERS`` exist; any other
id is unknown to the store.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import yaml

CUSTOMERS = 12
#: Snapshots per customer: DAYS days back from the repository's ``now`` (the last one an hour
#: before ``now``).
DAYS = 3
FEATURES = ["amount", "avg_amount_7d", "txn_count_7d", "amount_ratio"]
SERVICE = "scoring"
UNKNOWN = 4242

DEFINITIONS = textwrap.dedent(
    """
    from datetime import timedelta

    import pandas as pd
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource
    from feast.on_demand_feature_view import on_demand_feature_view
    from feast.types import Float64, Int64
    from feast.value_type import ValueType

    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
    stats_source = FileSource(
        name="customer_stats_source",
        path="data/customer_stats.parquet",
        timestamp_field="event_timestamp",
    )
    customer_stats = FeatureView(
        name="customer_stats",
        entities=[customer],
        ttl=timedelta(days=30),
        schema=[
            Field(name="avg_amount_7d", dtype=Float64),
            Field(name="txn_count_7d", dtype=Int64),
        ],
        source=stats_source,
    )
    transaction = RequestSource(name="transaction", schema=[Field(name="amount", dtype=Float64)])


    @on_demand_feature_view(
        sources=[customer_stats, transaction],
        schema=[Field(name="amount_ratio", dtype=Float64)],
    )
    def amount_features(inputs: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame()
        out["amount_ratio"] = inputs["amount"] / inputs["avg_amount_7d"]
        return out


    scoring = FeatureService(name="scoring", features=[customer_stats, amount_features])
    """
)


@dataclass(frozen=True, slots=True)
class Repo:
    """A written repository."""

    path: Path
    project: str
    now: datetime
    """The snapshots' reference time: the last snapshot is one hour before it."""

    def snapshot_time(self, day: int) -> datetime:
        """When snapshot ``day`` (0 = oldest, ``DAYS - 1`` = newest) was taken."""
        return self.now - timedelta(hours=1) - timedelta(days=DAYS - 1 - day)


def stats_at(customer: int, day: int) -> tuple[float, int]:
    """``(avg_amount_7d, txn_count_7d)`` of a customer's snapshot ``day``."""
    return 20.0 + 5.0 * customer + 1.5 * day, customer + day


def write_repo(root: Path, project: str, now: datetime | None = None) -> Repo:
    """Write the repository (definitions, ``feature_store.yaml``, snapshot parquet) under
    ``root/project``; not applied yet."""
    import pandas as pd

    when = now or datetime.now(UTC).replace(microsecond=0)
    path = root / project
    (path / "data").mkdir(parents=True, exist_ok=True)
    (path / "features.py").write_text(DEFINITIONS)
    (path / "feature_store.yaml").write_text(
        yaml.safe_dump({"project": project, "provider": "local", "registry": "data/registry.db"})
    )
    repo = Repo(path, project, when)
    rows = []
    for customer in range(1, CUSTOMERS + 1):
        for day in range(DAYS):
            avg, count = stats_at(customer, day)
            rows.append(
                {
                    "customer_id": customer,
                    "avg_amount_7d": avg,
                    "txn_count_7d": count,
                    "event_timestamp": repo.snapshot_time(day),
                }
            )
    pd.DataFrame(rows).to_parquet(path / "data" / "customer_stats.parquet", index=False)
    return repo


def label_of(ratio: float) -> str:
    """The rule the model learns: an amount over 3 times the customer's average is fraud."""
    return "fraud" if ratio > 3.0 else "legit"


def train_rows(count: int = 600, seed: int = 7) -> tuple[np.ndarray[Any, Any], list[str]]:
    """Feature rows (``FEATURES`` order) and labels following :func:`label_of`."""
    rng = np.random.default_rng(seed)
    avg = rng.uniform(20, 90, count)
    ratio = rng.uniform(0.1, 6.0, count)
    x = np.column_stack([avg * ratio, avg, rng.integers(1, 20, count), ratio])
    return x, [label_of(r) for r in ratio]


def write_model(
    root: Path,
    repo: Path,
    *,
    name: str = "scorer",
    version: str = "1.0.0",
    feature_store: dict[str, Any] | None = None,
    **manifest: Any,
) -> Path:
    """A scikit-learn pipeline over ``FEATURES`` with a manifest that reads them from
    ``repo`` (``feature_store`` entries override the defaults: service ``scoring``, entity
    ``customer_id``, policy ``reject``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    directory = root / f"{name}-{version}"
    directory.mkdir(parents=True, exist_ok=True)
    x, y = train_rows()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    joblib.dump(model, directory / "model.joblib")
    body = {
        "name": name,
        "version": version,
        "runtime": "sklearn",
        "task": "classification",
        "artifacts": {"model": "model.joblib"},
        "options": {"feature_names": FEATURES},
        "input_schema": {
            "type": "object",
            "properties": {
                "customer_id": {"type": "integer"},
                "amount": {"type": "number", "minimum": 0},
            },
            "required": ["customer_id", "amount"],
            "additionalProperties": False,
        },
        "feature_store": {
            "repo": str(repo),
            "service": SERVICE,
            "entities": ["customer_id"],
            **(feature_store or {}),
        },
        **manifest,
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return directory


def merged(repo: Repo, customer: int, amount: float, day: int = DAYS - 1) -> dict[str, Any]:
    """The row the model must get for a known customer, from snapshot ``day``."""
    avg, count = stats_at(customer, day)
    return {
        "customer_id": customer,
        "amount": amount,
        "avg_amount_7d": avg,
        "txn_count_7d": count,
        "amount_ratio": amount / avg,
    }
