"""Drift over a real server: the demo iris is monitored out of the box; an iris model pushed
with its training rows stays ``ok`` under unshifted traffic and, under traffic scaled by 1.5,
goes to ``drift``, sends a signed alert to a real receiver on loopback and runs its retraining
command; the scores are metrics; references can be supplied; the CLI shows and reports it."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelhost.demo import IRIS_FEATURES
from modelhost.jobs.webhooks import verify
from tests.conftest import Server, create_key, run_cli, start_server, stop_server
from tests.drift.test_monitor import SAVE_STDIN, iris_stream, write_iris_model
from tests.jobs.test_webhooks import Receiver, Reply

T = TypeVar("T")
DRIFT_ENV = {
    "MODELHOST_DEMO__MODELS": json.dumps(["iris"]),
    "MODELHOST_JOBS__WEBHOOK_SECRET": "drift-api-test-master",
    "MODELHOST_JOBS__WEBHOOK_ALLOW": json.dumps(["127.0.0.0/8"]),
    "MODELHOST_DRIFT__CHECK_INTERVAL_S": "0.3",
    "MODELHOST_DRIFT__WINDOW": "300",
    "MODELHOST_DRIFT__MIN_SAMPLES": "100",
}


@dataclass
class Setup:
    server: Server
    receiver: Receiver
    retrained: Path
    predict_only: dict[str, str]
    writer: dict[str, str]
    x: Any


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, iris_data: tuple[Any, Any]) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("drift-home")
    models = tmp_path_factory.mktemp("drift-models")
    receiver = Receiver([Reply(200)])
    retrained = models / "retrain.json"
    one = write_iris_model(
        models,
        iris_data,
        alert_url=receiver.url("/drift"),
        retrain_command=[sys.executable, "-c", SAVE_STDIN, str(retrained)],
    )
    two = write_iris_model(models, iris_data, "2.0.0", reference_data=None)
    for directory, stage in ((one, "production"), (two, "staging")):
        pushed = run_cli(home, "models", "push", str(directory), "--stage", stage)
        assert pushed.returncode == 0, pushed.stderr
    predict_only = _bearer(create_key(home, "predict", principal="reader"))
    writer = _bearer(create_key(home, "predict", "models:write", principal="trainer"))
    server = start_server(home, home / "server.log", env=DRIFT_ENV)
    yield Setup(server, receiver, retrained, predict_only, writer, iris_data[0])
    stop_server(server)
    receiver.close()


def eventually(probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """The first truthy answer of ``probe``, polled."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def read_if_there(path: Path) -> str | None:
    """The file's text once it is there and complete (a JSON document)."""
    try:
        text = path.read_text()
        json.loads(text)
    except (FileNotFoundError, ValueError):
        return None
    return text


def predict(setup: Setup, rows: list[list[float]]) -> None:
    """One request, so the server's checks see the window before or after it, never half."""
    with setup.server.client() as client:
        response = client.post("/v1/models/flowers/predict", json={"inputs": rows})
        assert response.status_code == 200, response.text


def drift(setup: Setup, model: str = "flowers", **params: str) -> dict[str, Any]:
    response = httpx.get(
        f"{setup.server.url}/v1/models/{model}/drift",
        params=params,
        headers=setup.predict_only,  # model metadata: the predict scope is enough
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def drift_score(setup: Setup, feature: str, method: str) -> float | None:
    with setup.server.client() as client:
        text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "modelhost_drift_score"
                and labels["model"] == "flowers"
                and labels["feature"] == feature
                and labels["method"] == method
            ):
                return float(sample.value)
    return None


def test_the_demo_iris_is_monitored_out_of_the_box(setup: Setup) -> None:
    body = drift(setup, "iris")
    assert body["object"] == "drift"
    assert body["version"] == "1.0.0"
    assert body["status"] == "insufficient_data"
    reference = body["reference"]
    assert reference["source"] == "artifact:training_data.csv"
    assert reference["rows"] == 120
    assert reference["features"] == dict.fromkeys(IRIS_FEATURES, "numeric")
    assert body["thresholds"]["psi"] == 0.2


def test_unshifted_traffic_is_ok_and_shifted_traffic_alerts_and_retrains(setup: Setup) -> None:
    predict(setup, iris_stream(setup.x, 1.0, 300))
    ok_psi = eventually(lambda: drift_score(setup, "_overall", "psi"))  # checked by the server
    assert ok_psi < 0.2
    body = drift(setup)
    assert body["status"] == "ok"
    assert body["window"]["size"] == 300
    assert all(not f["drifted"] for f in body["features"].values())
    time.sleep(1.0)  # a few more checks: still nothing sent
    assert setup.receiver.received == []
    assert not setup.retrained.exists()

    predict(setup, iris_stream(setup.x, 1.5, 300))
    received = eventually(lambda: setup.receiver.received)
    alert = received[0]
    assert alert.path == "/drift"
    assert alert.headers["x-modelhost-event"] == "drift.alert"
    with setup.server.client() as client:  # the alert tenant is 'system', the admin key's
        secret = client.get("/v1/webhooks/secret").json()["secret"]
    assert verify(
        secret,
        alert.headers["x-modelhost-timestamp"],
        alert.body,
        alert.headers["x-modelhost-signature"],
    )
    evidence = json.loads(alert.body)["data"]
    assert evidence["status"] == "drift"
    assert evidence["overall"]["psi"] > 0.2
    assert evidence["overall"]["ks"] > 0.1
    for feature in IRIS_FEATURES:
        assert evidence["features"][feature]["reasons"][:2] == ["psi", "ks"]

    retrained = json.loads(eventually(lambda: read_if_there(setup.retrained)))
    assert retrained["alert_id"] == evidence["alert_id"]
    body = drift(setup)
    assert body["status"] == "drift"
    assert body["alerting"]["state"] == "drift"
    assert body["alerts"][0]["id"] == evidence["alert_id"]
    assert body["alerts"][0]["deliveries"][0]["status_code"] == 200
    eventually(lambda: (drift_score(setup, "_overall", "psi") or 0) > 0.2)
    psi = drift_score(setup, "_overall", "psi")
    assert psi is not None
    assert psi > 0.2
    ks = drift_score(setup, "sepal_length", "ks")
    assert ks is not None
    assert ks > 0.1
    time.sleep(1.0)
    assert len(setup.receiver.received) == 1  # once per crossing


def test_histograms_for_the_report(setup: Setup) -> None:
    predict(setup, iris_stream(setup.x, 1.5, 300))
    body = drift(setup, detail="histograms")
    histogram = body["features"]["petal_width"]["histogram"]
    assert len(histogram["edges"]) == len(histogram["reference"]) + 1
    assert sum(histogram["live"]) == pytest.approx(1.0)
    assert "histogram" not in drift(setup)["features"]["petal_width"]
    # another tenant reads the scores, not the live shares of every tenant's requests
    other = _bearer(create_key(setup.server.home, "predict", tenant="acme", principal="eve"))
    url = f"{setup.server.url}/v1/models/flowers/drift"
    scores = httpx.get(url, headers=other, timeout=30)
    assert scores.status_code == 200, scores.text
    refused = httpx.get(url, params={"detail": "histograms"}, headers=other, timeout=30)
    assert refused.status_code == 403, refused.text
    assert "only tenant 'system'" in refused.json()["error"]["message"]


def test_a_reference_can_be_supplied_by_a_writer(setup: Setup, tmp_path: Path) -> None:
    url = f"{setup.server.url}/v1/models/flowers/versions/2.0.0/drift/reference"
    csv = "sepal_length,sepal_width,petal_length,petal_width\n" + "\n".join(
        ",".join(str(v) for v in row) for row in setup.x.tolist()
    )
    headers = {"Content-Type": "text/csv"}
    refused = httpx.put(url, content=csv, headers={**headers, **setup.predict_only}, timeout=30)
    assert refused.status_code == 403
    assert drift(setup, version="2.0.0")["status"] == "no_reference"
    accepted = httpx.put(url, content=csv, headers={**headers, **setup.writer}, timeout=30)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["source"] == "supplied"
    assert accepted.json()["rows"] == 150
    assert accepted.json()["created_by"] == "system/trainer"
    body = drift(setup, version="2.0.0")
    assert body["status"] == "insufficient_data"
    assert body["reference"]["rows"] == 150

    wrong = httpx.put(
        url, content=b"<xml/>", headers={"Content-Type": "text/xml", **setup.writer}, timeout=30
    )
    assert wrong.status_code == 415
    broken = httpx.put(
        url,
        content=b"{oops\n",
        headers={"Content-Type": "application/x-ndjson", **setup.writer},
        timeout=30,
    )
    assert broken.status_code == 400
    assert "line 1" in broken.json()["error"]["message"]

    jsonl = tmp_path / "reference.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in setup.x.tolist()[:100]))
    done = run_cli(
        setup.server.home,
        "drift",
        "reference",
        "flowers",
        "2.0.0",
        str(jsonl),
        "--url",
        setup.server.url,
        "--api-key",
        setup.writer["Authorization"].split()[1],
    )
    assert done.returncode == 0, done.stderr
    assert "reference of 100 rows" in done.stdout
    assert drift(setup, version="2.0.0")["reference"]["rows"] == 100


def test_errors(setup: Setup) -> None:
    missing = httpx.get(
        f"{setup.server.url}/v1/models/nosuch/drift", headers=setup.predict_only, timeout=30
    )
    assert missing.status_code == 404
    bad = httpx.get(
        f"{setup.server.url}/v1/models/flowers/drift",
        params={"detail": "everything"},
        headers=setup.predict_only,
        timeout=30,
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "detail"
    anonymous = httpx.get(f"{setup.server.url}/v1/models/flowers/drift", timeout=30)
    assert anonymous.status_code == 401


def test_the_cli_shows_and_reports_drift(setup: Setup, tmp_path: Path) -> None:
    predict(setup, iris_stream(setup.x, 1.5, 300))
    auth = ("--url", setup.server.url, "--api-key", setup.server.api_key)
    shown = run_cli(setup.server.home, "drift", "show", "flowers", *auth)
    assert shown.returncode == 0, shown.stderr
    assert "flowers@1.0.0: drift" in shown.stdout
    for feature in IRIS_FEATURES:
        assert feature in shown.stdout
    report = tmp_path / "report.html"
    made = run_cli(setup.server.home, "drift", "report", "flowers", "--output", str(report), *auth)
    assert made.returncode == 0, made.stderr
    assert f"wrote {report}" in made.stdout
    page = report.read_text()
    assert "Drift detected in 4 of 4 features" in page
    assert page.count("data:image/png;base64,") == 5
    unknown = run_cli(setup.server.home, "drift", "show", "nosuch", *auth)
    assert unknown.returncode == 1
    assert "404" in unknown.stderr
