"""The fraud example (``examples/fraud``, issue 10): its generated events are shaped like card
traffic, its feature tables are what the events say at each midnight and nothing later, and its
hand-written "skewed" job differs from the batch definition in exactly one feature.

The generator runs at its ``--small`` size (200 customers over 30 days, about a second). Every
feature value checked here is recomputed from the events by brute force, independently of the
generator's rolling windows.

The last test runs the README's walk-through on a copy of the example at that size, with the
real command line, server and scripts: generate, apply, training set, train, push and promote,
materialize, serve, predict, then the skew check before and after ``skewed_push.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import Server, modelhost_env, run_cli, start_server, stop_server

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fraud"
END = "2026-01-01"
SEED = 7


def load_example(name: str) -> ModuleType:
    """Import ``examples/fraud/<name>.py`` (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"fraud_example_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Run:
    """The files of one generator run."""

    out: Path
    repo: Path

    def read(self, name: str) -> Any:
        """A generated table by file name (events and labels in ``out``, features in data/)."""
        folder = self.out if name in ("transactions", "labels") else self.repo / "data"
        return pd.read_parquet(folder / f"{name}.parquet")


def generate(root: Path, *extra: str) -> Run:
    """Run the generator's command line at the small size into ``root``."""
    run = Run(out=root / "work", repo=root / "feature_repo")
    load_example("generate").main(
        ["--small", "--out", str(run.out), "--repo", str(run.repo), "--end", END, *extra]
    )
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One small run shared by the tests that only read it."""
    return generate(tmp_path_factory.mktemp("fraud"), "--seed", str(SEED))


def test_events_look_like_card_traffic(run: Run) -> None:
    events = run.read("transactions")
    assert list(events.columns) == [
        "transaction_id",
        "customer_id",
        "merchant_id",
        "amount",
        "event_timestamp",
        "is_fraud",
    ]
    assert str(events["event_timestamp"].dt.tz) == "UTC"
    assert events["event_timestamp"].is_monotonic_increasing
    assert events["transaction_id"].is_unique
    end = pd.Timestamp(END, tz="UTC")
    assert events["event_timestamp"].min() >= end - pd.Timedelta(days=30)
    assert events["event_timestamp"].max() < end
    assert (events["amount"] > 0).all()
    assert 2_000 < len(events) < 10_000

    fraud = events[events["is_fraud"] == 1]
    legit = events[events["is_fraud"] == 0]
    assert 0.002 < len(fraud) / len(events) < 0.03
    # Fraud is larger and more nocturnal than ordinary spending.
    assert fraud["amount"].median() > 2 * legit["amount"].median()
    night = events["event_timestamp"].dt.hour < 6
    assert night[fraud.index].mean() > 3 * night[legit.index].mean()


def test_labels_are_the_events_as_an_entity_file(run: Run) -> None:
    events, labels = run.read("transactions"), run.read("labels")
    assert set(labels.columns) == {
        "transaction_id",
        "customer_id",
        "merchant_id",
        "event_timestamp",
        "amount",
        "is_fraud",
    }
    pd.testing.assert_frame_equal(labels, events[labels.columns])


def _sample(table: Any, n: int = 150) -> Any:
    """Rows of a feature table to check, with and without activity."""
    return table.sample(n=min(n, len(table)), random_state=0)


def test_customer_stats_summarise_the_days_before_each_midnight(run: Run) -> None:
    events, stats = run.read("transactions"), run.read("customer_stats")
    assert not stats.duplicated(["customer_id", "event_timestamp"]).any()
    for row in _sample(stats).itertuples():
        stamp, mine = events["event_timestamp"], events["customer_id"] == row.customer_id
        week = events[mine & (stamp >= row.event_timestamp - pd.Timedelta(days=7))]
        week = week[week["event_timestamp"] < row.event_timestamp]
        month = events[mine & (stamp >= row.event_timestamp - pd.Timedelta(days=30))]
        month = month[month["event_timestamp"] < row.event_timestamp]
        assert row.txn_count_7d == len(week)
        assert row.avg_amount_7d == pytest.approx(
            week["amount"].mean() if len(week) else 0, abs=0.01
        )
        assert row.max_amount_7d == pytest.approx(week["amount"].max() if len(week) else 0)
        assert row.avg_amount_30d == pytest.approx(
            month["amount"].mean() if len(month) else 0, abs=0.01
        )


def test_no_feature_row_sees_the_transactions_of_its_own_day(run: Run) -> None:
    """A point-in-time join picks the row of the last midnight: it must not hold that day."""
    events, stats = run.read("transactions"), run.read("customer_stats")
    busiest = events.groupby("customer_id").size().idxmax()
    mine = events[events["customer_id"] == busiest]
    day = mine["event_timestamp"].iloc[len(mine) // 2].floor("D")
    today = mine[mine["event_timestamp"].dt.floor("D") == day]
    row = stats[(stats["customer_id"] == busiest) & (stats["event_timestamp"] == day)]
    before = mine[
        (mine["event_timestamp"] < day) & (mine["event_timestamp"] >= day - pd.Timedelta(days=7))
    ]
    assert len(today) > 0
    assert row["txn_count_7d"].item() == len(before)


def test_merchant_stats_count_frauds_of_the_30_days_before(run: Run) -> None:
    events, stats = run.read("transactions"), run.read("merchant_stats")
    for row in _sample(stats).itertuples():
        stamp = events["event_timestamp"]
        window = events[
            (events["merchant_id"] == row.merchant_id)
            & (stamp >= row.event_timestamp - pd.Timedelta(days=30))
            & (stamp < row.event_timestamp)
        ]
        assert row.merchant_txn_count_30d == len(window)
        rate = window["is_fraud"].mean() if len(window) else 0.0
        assert row.merchant_fraud_rate_30d == pytest.approx(rate, abs=1e-4)


def test_every_transaction_has_a_feature_row_as_of_its_time(run: Run) -> None:
    """The first midnight has a (zero) row, so no training row lacks its customer's stats."""
    events, stats = run.read("transactions"), run.read("customer_stats")
    first = stats.groupby("customer_id")["event_timestamp"].min()
    assert (first.loc[events["customer_id"]].to_numpy() <= events["event_timestamp"]).all()


def test_same_seed_same_data_and_the_end_date_only_shifts_time(tmp_path: Path, run: Run) -> None:
    again = generate(tmp_path / "again", "--seed", str(SEED))
    for name in ("transactions", "labels", "customer_stats", "merchant_stats"):
        pd.testing.assert_frame_equal(again.read(name), run.read(name))

    other = generate(tmp_path / "other", "--seed", str(SEED + 1))
    assert len(other.read("transactions")) != len(run.read("transactions"))

    later = generate(tmp_path / "later", "--seed", str(SEED), "--end", "2026-03-01")
    shift = pd.Timestamp("2026-03-01") - pd.Timestamp(END)
    moved = later.read("transactions")
    moved["event_timestamp"] -= shift
    pd.testing.assert_frame_equal(moved, run.read("transactions"))


def test_the_skewed_job_differs_in_avg_amount_7d_only(run: Run) -> None:
    """The hand-written online job agrees with the batch rows of the last midnight, except for
    the feature with the bug, which differs for nearly every customer."""
    skewed_push = load_example("skewed_push")
    events, stats = run.read("transactions"), run.read("customer_stats")
    as_of = events["event_timestamp"].max().ceil("D")
    skewed = skewed_push.skewed_customer_stats(events, as_of).set_index("customer_id")
    batch = stats[stats["event_timestamp"] == as_of].set_index("customer_id").loc[skewed.index]
    for name in ("txn_count_7d", "max_amount_7d", "avg_amount_30d"):
        pd.testing.assert_series_equal(skewed[name], batch[name], check_exact=False, atol=0.01)
    differs = (skewed["avg_amount_7d"] - batch["avg_amount_7d"]).abs() > 0.01
    assert differs.mean() > 0.8


@pytest.mark.filterwarnings("ignore:On demand feature view is an experimental feature")
def test_feast_joins_the_features_point_in_time(tmp_path: Path, run: Run) -> None:
    """The repository's definitions, applied and queried through Feast: the historical join
    gives each transaction its customer's row of the last midnight, and the on-demand ratio
    guards an unknown customer."""
    pytest.importorskip("feast")
    from modelhost.featurestore import apply_repo, open_store

    repo = tmp_path / "feature_repo"
    shutil.copytree(EXAMPLE / "feature_repo", repo, ignore=shutil.ignore_patterns("data"))
    shutil.copytree(run.repo / "data", repo / "data")
    store = open_store(repo, online_store="sqlite")
    apply_repo(store)

    labels = run.read("labels").sample(n=40, random_state=1)
    unknown = labels.iloc[[0]].assign(customer_id=999_999, amount=50.0)
    entity_df = pd.concat([labels, unknown], ignore_index=True)
    service = store.get_feature_service("fraud_detection_v1")
    frame = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    frame = frame.set_index(["transaction_id", "customer_id"])
    assert len(frame) == len(entity_df)

    stats = run.read("customer_stats").set_index(["customer_id", "event_timestamp"])
    for row in labels.itertuples():
        midnight = row.event_timestamp.floor("D")
        expected = stats.loc[(row.customer_id, midnight)]
        got = frame.loc[(row.transaction_id, row.customer_id)]
        assert got["txn_count_7d"] == expected["txn_count_7d"]
        assert got["avg_amount_7d"] == pytest.approx(expected["avg_amount_7d"])
        usual = max(expected["avg_amount_7d"], 1.0)
        assert got["amount_to_avg_ratio"] == pytest.approx(row.amount / usual)

    stranger = frame.loc[(unknown["transaction_id"].item(), 999_999)]
    assert pd.isna(stranger["avg_amount_7d"])
    assert stranger["amount_to_avg_ratio"] == pytest.approx(50.0)  # compared with a $1 habit


# --- The README walk-through, end to end -------------------------------------------------------

#: Settings shared by every command, the server and the scripts: the repository's SQLite online
#: store, whatever this machine's environment says about Redis.
SQLITE_ONLY = {"MODELHOST_REDIS_URL": "", "MODELHOST_FEATURE_STORE__ONLINE_STORE": "auto"}


def load_copy(folder: Path, name: str) -> ModuleType:
    """Import ``<folder>/<name>.py``: a copied script, whose default paths are in the copy."""
    spec = importlib.util.spec_from_file_location(f"fraud_copy_{name}", folder / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cli(home: Path, *args: str) -> str:
    """The real ``modelhost`` command; its standard output (it must succeed)."""
    done = run_cli(home, *args, env={**SQLITE_ONLY, "COLUMNS": "200"})
    assert done.returncode == 0, f"modelhost {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def predict(server: Server, *rows: dict[str, Any]) -> Any:
    with server.client() as client:
        return client.post("/v1/models/fraud/predict", json={"inputs": list(rows)})


@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore:On demand feature view is an experimental feature")
def test_the_readme_walk_through_runs_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every step of README.md at the small size, with the real command line and server: the
    training set is recorded in the manifest, the model serves known and unknown customers,
    the skew check is clean, then catches ``skewed_push.py`` and names ``avg_amount_7d``."""
    pytest.importorskip("feast")
    pytest.importorskip("sklearn")
    example = tmp_path / "fraud"  # a copy: training-set writes lineage into model/modelhost.yaml
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("work", "data", "__pycache__"))
    home, work, model = tmp_path / "home", example / "work", example / "model"
    home.mkdir()

    # 1. generate (the copy's defaults: work/ and feature_repo/data/ next to the scripts)
    load_copy(example, "generate").main(["--small"])
    labels = pd.read_parquet(work / "labels.parquet")

    # 2. apply; 3. the training set, recorded in the manifest
    assert "fraud_detection_v1" in cli(home, "featurestore", "apply", str(example / "feature_repo"))
    printed = cli(
        home,
        "featurestore",
        "training-set",
        str(model),
        "--entities",
        str(work / "labels.parquet"),
        "--out",
        str(work / "train.parquet"),
    )
    counts = re.search(r"(\d+) entity rows in, (\d+) out", printed)
    assert counts is not None, printed
    assert int(counts[1]) == int(counts[2]) == len(labels)
    lineage = yaml.safe_load((model / "modelhost.yaml").read_text())["lineage"]["training_set"]
    assert lineage["sha256"] == hashlib.sha256((work / "train.parquet").read_bytes()).hexdigest()
    assert lineage["rows"] == len(labels)

    # 4. train; 5. push and promote; 6. materialize
    load_copy(example, "train").main([])
    assert (model / "model.joblib").is_file()
    assert "registered fraud@1.0.0" in cli(home, "models", "push", str(model))
    assert "now production" in cli(home, "models", "promote", "fraud", "1.0.0")
    assert "materialized" in cli(home, "featurestore", "materialize", "fraud")

    # 7. serve and predict
    server = start_server(
        home,
        tmp_path / "server.log",
        env={**SQLITE_ONLY, "MODELHOST_DEMO__ENABLED": "false"},
        ready_timeout=180,
    )
    try:
        events = pd.read_parquet(work / "transactions.parquet")
        known = events.iloc[-1]
        payment = {"customer_id": int(known.customer_id), "merchant_id": int(known.merchant_id)}
        answer = predict(server, {**payment, "amount": 87.5})
        assert answer.status_code == 200, answer.text
        result = answer.json()["results"][0]
        assert 0 <= result["score"] <= 1
        assert result["label"] in ("legit", "fraud")
        stranger = predict(server, {**payment, "customer_id": 999_999, "amount": 87.5})
        assert stranger.status_code == 200, stranger.text  # scored with the manifest's defaults
        keyless = predict(server, {"customer_id": payment["customer_id"], "amount": 87.5})
        assert keyless.status_code == 400, keyless.text
        assert "merchant_id" in keyless.text

        # 8. traffic, a clean check, the bug, traffic, the check again
        monkeypatch.setenv("MODELHOST_API_KEY", server.api_key)
        send_traffic = load_copy(example, "send_traffic")
        capsys.readouterr()
        send_traffic.main(["--url", server.url])
        assert capsys.readouterr().out.startswith("sent ")
        remote = ("--url", server.url, "--api-key", server.api_key)
        clean = cli(home, "featurestore", "skew", "fraud", "--since", "1h", *remote)
        assert clean.rstrip().endswith("threshold 0.01: ok"), clean
        assert re.search(r"(\d+) rows from \d+ records since \S+, \1 recomputed offline", clean)
        with server.client() as client:
            first = client.post("/v1/models/fraud/feature-store/skew", params={"since": "1h"})
        assert first.status_code == 200, first.text
        mismatched = {name: f["mismatched"] for name, f in first.json()["features"].items()}
        assert mismatched == dict.fromkeys(mismatched, 0), first.text  # the stranger's too

        since = time.time()
        pushed = subprocess.run(
            [sys.executable, str(example / "skewed_push.py")],
            env={**modelhost_env(home), **SQLITE_ONLY},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert pushed.returncode == 0, pushed.stderr
        assert "skewed customer_stats rows" in pushed.stdout
        assert "to the sqlite store" in pushed.stdout
        capsys.readouterr()
        send_traffic.main(["--url", server.url])
        served = int(capsys.readouterr().out.split()[1])

        done = run_cli(
            home,
            "featurestore",
            "skew",
            "fraud",
            "--since",
            str(since),
            *remote,
            env={**SQLITE_ONLY, "COLUMNS": "200"},
        )
        assert done.returncode == 2, done.stdout + done.stderr
        named = re.search(r"avg_amount_7d\W+(\d+)\W+(\d+)\W+([\d.]+)", done.stdout)
        assert named is not None, done.stdout  # the table's row: compared, mismatched, rate
        assert float(named[3]) > 0.01, done.stdout
        assert done.stdout.rstrip().endswith("threshold 0.01: skew"), done.stdout
        with server.client() as client:
            found = client.post("/v1/models/fraud/feature-store/skew", params={"since": str(since)})
        assert found.status_code == 200, found.text
        report = found.json()
        assert report["status"] == "skew"
        assert report["rows"] == served
        assert report["recomputed"] == report["rows"]
        assert "avg_amount_7d" in report["over_threshold"]
        assert report["features"]["avg_amount_7d"]["mismatch_rate"] > 0.5
        assert report["features"]["txn_count_7d"]["compared"] == served
        assert report["features"]["txn_count_7d"]["mismatched"] == 0
    finally:
        stop_server(server)
