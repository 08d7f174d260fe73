"""Train the fraud model on the training set that Feast built from the offline store.

The input is the parquet file written by ``modelhost featurestore training-set``: one row per
past transaction (the entity file made by ``generate.py``) with every feature of the feature
service as it was known at that transaction's time. This script never computes a feature:
whatever it learns from, serving reads from the same definitions.

The model is evaluated on the most recent quarter of the transactions, never seen in training,
as a fraud model is used: trained on the past, scoring the future.

Run ``python examples/fraud/train.py`` after the training-set command; it writes
``model/model.joblib`` and ``model/evaluation_report.json`` (read into the manifest's
``evaluation`` when the model is pushed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import yaml
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score

HERE = Path(__file__).resolve().parent
DEFAULT_TRAINING_SET = HERE / "work" / "train.parquet"
DEFAULT_MODEL_DIR = HERE / "model"
LABEL = "is_fraud"
HOLDOUT_SHARE = 0.25
#: Share of payments the fraud team can review: the model's top scores get flagged.
REVIEW_SHARE = 0.01


def load_manifest(model_dir: Path) -> dict[str, Any]:
    """The model's ``modelhost.yaml``: the one place that names the columns and the defaults."""
    with (model_dir / "modelhost.yaml").open(encoding="utf-8") as file:
        manifest: dict[str, Any] = yaml.safe_load(file)
    return manifest


def feature_matrix(frame: pd.DataFrame, manifest: dict[str, Any]) -> pd.DataFrame:
    """The model's columns in the manifest's order, a missing value filled as serving fills it.

    A transaction of a customer or merchant the feature tables did not know yet has no stored
    values; at serving time modelhost uses the manifest's ``defaults`` instead, and the
    training-set command already filled them the same way. Filling again from the manifest
    costs nothing and keeps a training set made by other means on the same definition of
    "unknown".
    """
    names: list[str] = manifest["options"]["feature_names"]
    defaults: dict[str, float] = manifest["feature_store"].get("defaults", {})
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise SystemExit(f"the training set lacks {missing}: rebuild it with the feature service")
    return frame[names].fillna(defaults).astype(float)


def split_by_time(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Everything before the last ``HOLDOUT_SHARE`` of time for training, the rest for testing."""
    cut = frame["event_timestamp"].quantile(1 - HOLDOUT_SHARE)
    return frame[frame["event_timestamp"] < cut], frame[frame["event_timestamp"] >= cut]


def evaluate(y_true: np.ndarray, scores: np.ndarray, amount: np.ndarray) -> dict[str, float]:
    """Ranking quality, and what a review queue of the top ``REVIEW_SHARE`` scores would catch.

    The amount alone, the only thing a model without a feature store would see, is scored the
    same way for comparison.
    """
    flagged = scores >= np.quantile(scores, 1 - REVIEW_SHARE)
    return {
        "rows": len(y_true),
        "fraud_rate": round(float(y_true.mean()), 5),
        "roc_auc": round(float(roc_auc_score(y_true, scores)), 4),
        "average_precision": round(float(average_precision_score(y_true, scores)), 4),
        f"precision_top_{REVIEW_SHARE:.0%}": round(float(precision_score(y_true, flagged)), 4),
        f"recall_top_{REVIEW_SHARE:.0%}": round(float(recall_score(y_true, flagged)), 4),
        "roc_auc_amount_only": round(float(roc_auc_score(y_true, amount)), 4),
    }


def main(argv: list[str] | None = None) -> None:
    """Read, split, fit, evaluate, write the artifacts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--training-set", type=Path, default=DEFAULT_TRAINING_SET)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    args = parser.parse_args(argv)

    manifest = load_manifest(args.model_dir)
    frame = pd.read_parquet(args.training_set).sort_values("event_timestamp")
    train, test = split_by_time(frame)
    print(
        f"{len(frame):,} rows: training on {len(train):,} before "
        f"{test['event_timestamp'].min():%Y-%m-%d %H:%M}, testing on {len(test):,} after"
    )

    # Gradient-boosted trees: no scaling needed, and ratios like amount_to_avg_ratio are used
    # as thresholds ("over 4x the usual"), which is how fraud analysts read them too.
    model = HistGradientBoostingClassifier(
        learning_rate=0.05, max_iter=300, max_leaf_nodes=15, l2_regularization=1.0, random_state=0
    )
    model.fit(feature_matrix(train, manifest).to_numpy(), train[LABEL].to_numpy())

    scores = model.predict_proba(feature_matrix(test, manifest).to_numpy())[:, 1]
    report = evaluate(test[LABEL].to_numpy(), scores, test["amount"].to_numpy())
    report["train_rows"] = len(train)
    for key, value in report.items():
        print(f"  {key:<24} {value}")

    args.model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, args.model_dir / "model.joblib")
    (args.model_dir / "evaluation_report.json").write_text(
        json.dumps(report, indent=2) + "\n", encoding="utf-8"
    )
    try:
        shown = args.model_dir.resolve().relative_to(Path.cwd())
    except ValueError:  # not under the working directory
        shown = args.model_dir
    print(f"wrote {shown / 'model.joblib'} and evaluation_report.json")


if __name__ == "__main__":
    main()
