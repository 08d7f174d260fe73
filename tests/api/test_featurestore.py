"""Models that read stored features, over HTTP, against a real Feast repository.

A server (no demo models) serves ``scorer``, a scikit-learn model whose manifest names a Feast
repository written by the test (local provider, SQLite online store, file offline store; see
``tests/featurestore/builder.py``). Callers send entity keys and request-time values; the
answers must equal the model run on the rows merged by hand from the snapshots. REST v1, OIP v2
(tritonclient) and jobs are checked; then provenance and replay, drift, the skew check (clean,
then after a deliberately wrong write to the online store, with its webhook and metric), and a
second server whose online store is Redis.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from prometheus_client.parser import text_string_to_metric_families

from modelhost.featurestore import open_store
from tests.conftest import Server, create_key, run_cli, start_server, stop_server
from tests.featurestore.builder import (
    CUSTOMERS,
    FEATURES,
    UNKNOWN,
    Repo,
    merged,
    write_model,
    write_repo,
)
from tests.jobs.test_webhooks import Receiver, Reply

pytest.importorskip("feast")

REDIS_URL = "redis://127.0.0.1:6379/0"
SKEW_THRESHOLD = 0.05
LINEAGE = {
    "path": "/data/train.parquet",
    "sha256": "ab" * 32,
    "rows": 600,
    "columns": ["customer_id", "event_timestamp", "amount", "label", *FEATURES[1:]],
    "entities_sha256": "cd" * 32,
    "definitions_sha256": "ef" * 32,
    "feature_service": "scoring",
    "features": FEATURES[1:],
    "created_at": "2026-11-23T00:00:00+00:00",
}


def _cli(home: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = run_cli(home, *args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _reference(directory: Path) -> None:
    """Drift reference rows of the model's four features (CSV with a header row)."""
    rng = np.random.default_rng(3)
    avg = rng.uniform(25, 85, 300)
    ratio = rng.uniform(0.2, 4.0, 300)
    frame = pd.DataFrame(
        {
            "amount": avg * ratio,
            "avg_amount_7d": avg,
            "txn_count_7d": rng.integers(1, 16, 300),
            "amount_ratio": ratio,
        }
    )
    frame.to_csv(directory / "reference.csv", index=False)


def _serve(home: Path, root: Path, project: str, env: dict[str, str]) -> Repo:
    """Write, apply and materialize a repository with the real CLI."""
    repo = write_repo(root, project)
    _cli(home, "featurestore", "apply", str(repo.path), env=env)
    _cli(home, "featurestore", "materialize", "--repo", str(repo.path), env=env)
    return repo


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    started = Receiver([Reply(200)])
    yield started
    started.close()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[tuple[Server, Repo, Any]]:
    """The SQLite-backed server, its repository and the model object (for expected answers)."""
    home = tmp_path_factory.mktemp("fs-home")
    root = tmp_path_factory.mktemp("fs-models")
    env = {"MODELHOST_REDIS_URL": ""}
    repo = _serve(home, root, f"fs{uuid.uuid4().hex[:8]}", env)
    scorer = write_model(
        root,
        repo.path,
        feature_store={"skew_threshold": SKEW_THRESHOLD, "alert_url": receiver.url()},
        artifacts={"model": "model.joblib", "reference": "reference.csv"},
        monitoring={"reference_data": "reference", "min_samples": 10, "check_interval_s": 1},
        lineage={"training_set": LINEAGE},
    )
    _reference(scorer)
    lenient = write_model(
        root,
        repo.path,
        name="lenient",
        feature_store={
            "on_missing": "default",
            "defaults": {"avg_amount_7d": 50.0, "txn_count_7d": 0, "amount_ratio": 1.0},
        },
    )
    for directory in (scorer, lenient):
        _cli(home, "models", "push", str(directory), "--stage", "production", env=env)
    server = start_server(
        home,
        home / "server.log",
        env={
            **env,
            "MODELHOST_DEMO__ENABLED": "false",
            "MODELHOST_JOBS__WEBHOOK_ALLOW": '["127.0.0.0/8"]',
            "MODELHOST_PROVENANCE__FLUSH_INTERVAL_S": "0.2",
        },
        ready_timeout=180,
    )
    model = joblib.load(scorer / "model.joblib")
    yield server, repo, model
    stop_server(server)


def _expected(model: Any, rows: list[dict[str, Any]]) -> list[str]:
    matrix = np.asarray([[row[name] for name in FEATURES] for row in rows], dtype=np.float64)
    return [str(label) for label in model.predict(matrix)]


def _requests(count: int) -> list[dict[str, Any]]:
    return [
        {"customer_id": 1 + i % CUSTOMERS, "amount": round(15.0 + 37.0 * (i % 7), 2)}
        for i in range(count)
    ]


def _metric(server: Server, name: str, labels: dict[str, str]) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=server.headers, timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_predict_with_entity_keys_answers_as_the_model_on_the_stored_features(
    stack: tuple[Server, Repo, Any],
) -> None:
    server, repo, model = stack
    rows = _requests(32)
    fetches = {"model": "scorer", "version": "1.0.0"}
    before = _metric(server, "modelhost_feature_fetch_seconds_count", fetches)
    with server.client() as client:
        answer = client.post("/v1/models/scorer/predict", json={"inputs": rows})
    assert answer.status_code == 200, answer.text
    labels = [r["label"] for r in answer.json()["results"]]
    expected = [merged(repo, r["customer_id"], r["amount"]) for r in rows]
    assert labels == _expected(model, expected)
    assert {"legit", "fraud"} <= set(labels)  # the rows exercise both answers
    # one online read for the whole batch of 32 rows
    assert _metric(server, "modelhost_feature_fetch_seconds_count", fetches) == before + 1
    age = _metric(
        server,
        "modelhost_feature_age_seconds_count",
        {"model": "scorer", "version": "1.0.0", "view": "customer_stats"},
    )
    assert age >= 1


def test_oip_v2_rest_and_grpc_send_one_column_tensor_per_request_field(
    stack: tuple[Server, Repo, Any],
) -> None:
    server, repo, model = stack
    rows = _requests(9)
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    client.register_plugin(server.triton_auth())
    metadata = client.get_model_metadata("scorer")
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
        ("customer_id", "INT64"),
        ("amount", "FP64"),
    ]
    ids = triton_http.InferInput("customer_id", [len(rows)], "INT64")
    ids.set_data_from_numpy(np.asarray([r["customer_id"] for r in rows], dtype=np.int64))
    amounts = triton_http.InferInput("amount", [len(rows)], "FP64")
    amounts.set_data_from_numpy(np.asarray([r["amount"] for r in rows], dtype=np.float64))
    result = client.infer("scorer", [ids, amounts])
    labels = [x.decode() for x in result.as_numpy("label").tolist()]
    assert labels == _expected(model, [merged(repo, r["customer_id"], r["amount"]) for r in rows])
    client.close()

    remote = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    remote.register_plugin(server.triton_auth())
    columns = [
        triton_grpc.InferInput("customer_id", [len(rows)], "INT64"),
        triton_grpc.InferInput("amount", [len(rows)], "FP64"),
    ]
    columns[0].set_data_from_numpy(np.asarray([r["customer_id"] for r in rows], dtype=np.int64))
    columns[1].set_data_from_numpy(np.asarray([r["amount"] for r in rows], dtype=np.float64))
    over_grpc = remote.infer("scorer", columns)
    assert [x.decode() for x in over_grpc.as_numpy("label").tolist()] == labels
    remote.close()


def test_a_job_reads_the_stored_features_too(stack: tuple[Server, Repo, Any]) -> None:
    server, repo, model = stack
    rows = _requests(5)
    with server.client() as client:
        queued = client.post("/v1/jobs", json={"model": "scorer", "inputs": rows})
        assert queued.status_code in (200, 202), queued.text
        job_id = queued.json()["job_id"]
        deadline = time.monotonic() + 60
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = client.get(f"/v1/jobs/{job_id}").json()
            if body["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.2)
    assert body["status"] == "succeeded", body
    labels = [r["label"] for r in body["result"]["results"]]
    assert labels == _expected(model, [merged(repo, r["customer_id"], r["amount"]) for r in rows])


def test_an_unknown_entity_is_refused_with_422_naming_it(stack: tuple[Server, Repo, Any]) -> None:
    server, _, _ = stack
    rows = [{"customer_id": 3, "amount": 10.0}, {"customer_id": UNKNOWN, "amount": 10.0}]
    with server.client() as client:
        answer = client.post("/v1/models/scorer/predict", json={"inputs": rows})
        lacking = client.post("/v1/models/scorer/predict", json={"inputs": [{"amount": 1.0}]})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["type"] == "features_unavailable"
    assert f"customer_id={UNKNOWN}" in error["message"]
    assert error["param"] == "inputs[1]"
    assert lacking.status_code == 400  # the input schema requires the entity key


def test_the_default_policy_uses_the_declared_defaults(stack: tuple[Server, Repo, Any]) -> None:
    server, _, model = stack
    row = {"customer_id": UNKNOWN, "amount": 400.0}
    with server.client() as client:
        answer = client.post("/v1/models/lenient/predict", json={"inputs": [row]})
    assert answer.status_code == 200, answer.text
    filled = {**row, "avg_amount_7d": 50.0, "txn_count_7d": 0, "amount_ratio": 1.0}
    assert answer.json()["results"][0]["label"] == _expected(model, [filled])[0]


def _record(server: Server, request_id: str) -> dict[str, Any]:
    with server.client() as client:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = client.get(f"/v1/provenance/{request_id}")
            if found.status_code == 200:
                body: dict[str, Any] = found.json()
                return body
            time.sleep(0.2)
    raise AssertionError(f"no provenance record {request_id}")


def test_provenance_keeps_the_served_feature_vector_and_replay_reuses_it(
    stack: tuple[Server, Repo, Any],
) -> None:
    server, repo, _ = stack
    rows: list[dict[str, Any]] = [
        {"customer_id": 4, "amount": 99.0},
        {"customer_id": 7, "amount": 12.5},
    ]
    with server.client() as client:
        answer = client.post("/v1/models/scorer/predict", json={"inputs": rows})
    assert answer.status_code == 200
    record = _record(server, answer.headers["x-request-id"])
    served = record["decisions"]["feature_store"]
    expected = [merged(repo, r["customer_id"], r["amount"]) for r in rows]
    assert served["values"] == [
        {k: v for k, v in row.items() if k not in ("customer_id", "amount")} for row in expected
    ]
    assert served["ages"]["customer_stats"] > 3000  # the newest snapshot is an hour old
    with server.client() as client:
        replay = client.post(f"/v1/provenance/{record['request_id']}/replay", json={})
    assert replay.status_code == 200, replay.text
    assert replay.json()["same"] is True
    assert replay.json()["replay"]["outputs"] == answer.json()["results"]


def test_drift_statistics_cover_the_fetched_features(stack: tuple[Server, Repo, Any]) -> None:
    server, _, _ = stack
    with server.client() as client:
        for _ in range(3):
            sent = client.post("/v1/models/scorer/predict", json={"inputs": _requests(12)})
            assert sent.status_code == 200
        drift = client.get("/v1/models/scorer/drift")
    assert drift.status_code == 200, drift.text
    features = drift.json()["features"]
    assert {"avg_amount_7d", "txn_count_7d", "amount_ratio"} <= set(features)
    assert features["avg_amount_7d"]["live"]["count"] >= 10


def test_the_skew_check_of_another_tenant_sees_none_of_these_requests(
    stack: tuple[Server, Repo, Any],
) -> None:
    # the report's examples hold served values: another tenant's admin compares only its own
    server, _, _ = stack
    with server.client() as client:
        assert client.post("/v1/models/scorer/predict", json={"inputs": _requests(6)}).is_success
        mine = client.post("/v1/models/scorer/feature-store/skew", params={"since": "1h"})
    key = create_key(server.home, "admin", tenant="acme", principal="eve")
    other = httpx.post(
        f"{server.url}/v1/models/scorer/feature-store/skew",
        params={"since": "1h"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert mine.status_code == 200, mine.text
    assert mine.json()["rows"] >= 6
    assert other.status_code == 200, other.text
    assert other.json()["rows"] == 0
    assert all(not f["examples"] for f in other.json()["features"].values())


def test_the_skew_check_is_clean_then_catches_a_skewed_online_write(
    stack: tuple[Server, Repo, Any], receiver: Receiver
) -> None:
    server, repo, _ = stack
    with server.client() as client:
        before = client.post("/v1/models/scorer/predict", json={"inputs": _requests(24)})
        assert before.is_success
        clean = client.post("/v1/models/scorer/feature-store/skew", params={"since": "1h"})
    assert clean.status_code == 200, clean.text
    report = clean.json()
    assert report["status"] == "ok", report
    assert report["rows"] >= 24
    assert all(f["mismatched"] == 0 for f in report["features"].values())

    # a hand-written serving path writes the 7-day average in cents into the online store
    store = open_store(repo.path, online_store="sqlite")
    wrong = pd.DataFrame(
        [
            {
                "customer_id": customer,
                "avg_amount_7d": merged(repo, customer, 1.0)["avg_amount_7d"] * 100,
                "txn_count_7d": merged(repo, customer, 1.0)["txn_count_7d"],
                "event_timestamp": repo.snapshot_time(2),
            }
            for customer in range(1, CUSTOMERS + 1)
        ]
    )
    store.write_to_online_store("customer_stats", wrong)
    since = time.time()  # after the clean rows: the second check sees only the skewed ones
    with server.client() as client:
        after = client.post("/v1/models/scorer/predict", json={"inputs": _requests(24)})
        assert after.is_success
        # a replay of a request served before the write reuses the values served then
        replay = client.post(f"/v1/provenance/{before.headers['x-request-id']}/replay", json={})
        assert replay.json()["same"] is True, replay.text
        assert after.json()["results"] != before.json()["results"]
        skewed = client.post(
            "/v1/models/scorer/feature-store/skew", params={"since": str(since), "sample": 500}
        )
    assert skewed.status_code == 200, skewed.text
    report = skewed.json()
    assert report["status"] == "skew"
    assert set(report["over_threshold"]) == {"avg_amount_7d", "amount_ratio"}
    assert report["features"]["avg_amount_7d"]["mismatch_rate"] == 1.0
    assert report["features"]["txn_count_7d"]["mismatched"] == 0
    example = report["features"]["avg_amount_7d"]["examples"][0]
    assert example["served"] == pytest.approx(example["offline"] * 100)
    gauge = {"model": "scorer", "version": "1.0.0", "feature": "avg_amount_7d"}
    assert _metric(server, "modelhost_feature_skew_ratio", gauge) == 1.0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not receiver.received:
        time.sleep(0.1)
    assert receiver.received, "no skew webhook arrived"
    hook = receiver.received[-1]
    assert hook.headers["x-modelhost-event"] == "featurestore.skew"
    assert b'"avg_amount_7d"' in hook.body

    printed = run_cli(
        server.home,
        "featurestore",
        "skew",
        "scorer",
        "--url",
        server.url,
        "--api-key",
        server.api_key,
        "--since",
        str(since),
    )
    assert printed.returncode == 2, printed.stdout + printed.stderr
    assert "avg_amount_7d" in printed.stdout
    assert "skew" in printed.stdout


def test_describe_says_what_the_version_reads(stack: tuple[Server, Repo, Any]) -> None:
    server, repo, _ = stack
    with server.client() as client:
        body = client.get("/v1/models/scorer/feature-store").json()
        plain = client.get("/v1/models/lenient/feature-store")
    assert body["service"] == "scoring"
    assert body["names"] == ["avg_amount_7d", "txn_count_7d", "amount_ratio"]
    assert body["request_fields"] == ["amount"]
    assert body["online_store"] == "sqlite"
    assert body["project"] == repo.project
    assert len(body["definitions_sha256"]) == 64
    assert body["lineage"]["training_set"] == LINEAGE
    assert plain.status_code == 200
    with server.client() as client:
        metadata = client.get("/v1/models/scorer").json()
    assert metadata["lineage"]["training_set"]["sha256"] == LINEAGE["sha256"]


def test_redis_is_the_online_store_when_modelhost_redis_url_is_set(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = tmp_path_factory.mktemp("fs-redis-home")
    root = tmp_path_factory.mktemp("fs-redis-models")
    env = {"MODELHOST_REDIS_URL": REDIS_URL}
    repo = write_repo(root, f"fsr{uuid.uuid4().hex[:8]}")
    _cli(home, "featurestore", "apply", str(repo.path), env=env)
    scorer = write_model(root, repo.path)
    _cli(home, "models", "push", str(scorer), "--stage", "production", env=env)
    # not materialized by hand: the server's schedule loads the online store
    server = start_server(
        home,
        home / "server.log",
        env={
            **env,
            "MODELHOST_DEMO__ENABLED": "false",
            "MODELHOST_FEATURE_STORE__MATERIALIZE_INTERVAL_S": "1",
        },
        ready_timeout=180,
    )
    try:
        rows = _requests(6)
        deadline = time.monotonic() + 90
        with server.client() as client:
            answer = client.post("/v1/models/scorer/predict", json={"inputs": rows})
            while answer.status_code == 422 and time.monotonic() < deadline:
                time.sleep(0.5)  # not materialized yet: the policy refuses, naming the entity
                answer = client.post("/v1/models/scorer/predict", json={"inputs": rows})
            described = client.get("/v1/models/scorer/feature-store").json()
        assert answer.status_code == 200, answer.text
        materialized = _metric(
            server, "modelhost_feature_materialized_timestamp", {"repository": str(repo.path)}
        )
        assert time.time() - 120 < materialized <= time.time()
        assert described["online_store"] == "redis"
        model = joblib.load(scorer / "model.joblib")
        expected = [merged(repo, r["customer_id"], r["amount"]) for r in rows]
        assert [r["label"] for r in answer.json()["results"]] == _expected(model, expected)
        # the values came from Redis: the repository's SQLite online store was never loaded
        assert not (repo.path / "data" / "online.db").exists()
    finally:
        stop_server(server)
