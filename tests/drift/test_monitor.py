"""The drift component in one process, built by the composition root: a real iris model (trained
here from sklearn's bundled data) with its training rows as reference data, real traffic through
the data plane, alerts delivered to a real HTTP receiver on loopback, and a real retraining
command."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import yaml

from modelhost.app import Services, build_services
from modelhost.config import DemoSettings, DriftSettings, JobSettings, Settings
from modelhost.demo import IRIS_FEATURES, IRIS_LABELS
from modelhost.drift.monitor import OVERALL, DriftMonitor
from modelhost.errors import InvalidInput
from modelhost.inference import InferenceEvent, InferenceRequest
from modelhost.jobs.webhooks import tenant_secret, verify
from modelhost.registry import Stage, VersionInfo
from tests.jobs.test_webhooks import Receiver, Reply

MASTER = "drift-test-master-secret"
#: A python one-liner that writes its standard input to the file named by its argument.
SAVE_STDIN = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_bytes(sys.stdin.buffer.read())"


def write_iris_model(
    root: Path, iris_data: tuple[Any, Any], version: str = "1.0.0", **monitoring: Any
) -> Path:
    """A ``flowers`` version: an iris pipeline trained now on 80% of sklearn's iris rows, with
    those rows as its reference data (CSV), and no input schema (so scaled inputs pass)."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = iris_data
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    pipe = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])
    pipe.fit(x_train, y_train)
    directory = root / f"flowers-{version}"
    directory.mkdir(parents=True)
    joblib.dump(pipe, directory / "model.joblib")
    lines = [",".join([*IRIS_FEATURES, "species"])]
    lines += [
        ",".join([*(f"{v:g}" for v in row), IRIS_LABELS[int(label)]])
        for row, label in zip(x_train.tolist(), y_train.tolist(), strict=True)
    ]
    (directory / "train.csv").write_text("\n".join(lines) + "\n")
    manifest = {
        "name": "flowers",
        "version": version,
        "runtime": "sklearn",
        "task": "classification",
        "artifacts": {"model": "model.joblib", "training": "train.csv"},
        "options": {"feature_names": IRIS_FEATURES, "labels": IRIS_LABELS},
        "limits": {"max_batch_items": 1024},
        "monitoring": {"reference_data": "training", **monitoring},
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return directory


def iris_stream(x: Any, scale: float, n: int, seed: int = 0) -> list[list[float]]:
    """``n`` iris rows in random order, every measurement multiplied by ``scale``."""
    rng = np.random.default_rng(seed)
    return [[round(v * scale, 3) for v in row] for row in x[rng.permutation(n) % len(x)].tolist()]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver([Reply(503), Reply(200)])  # the first attempt fails: it is retried
    yield started
    started.close()


@pytest_asyncio.fixture
async def services(
    tmp_path: Path, iris_data: tuple[Any, Any], receiver: Receiver
) -> AsyncIterator[Services]:
    """A process serving ``flowers`` 1.0.0 (monitored, alerting to ``receiver``, retraining
    by a command writing ``tmp_path/retrain.json``) and 2.0.0 (alerting to a private address
    the SSRF guard refuses)."""
    settings = Settings(
        home=tmp_path / "home",
        demo=DemoSettings(enabled=False),
        jobs=JobSettings(webhook_secret=MASTER, webhook_allow=["127.0.0.0/8"]),
        drift=DriftSettings(
            check_interval_s=3600, window=300, min_samples=100, alert_retry_base_s=0.05
        ),
    )
    built = build_services(settings)
    retrain = [sys.executable, "-c", SAVE_STDIN, str(tmp_path / "retrain.json")]
    one = write_iris_model(
        tmp_path / "models", iris_data, alert_url=receiver.url(), retrain_command=retrain
    )
    two = write_iris_model(
        tmp_path / "models", iris_data, "2.0.0", alert_url="http://10.255.255.1/hook"
    )
    built.registry.push(one, actor="test", stage=Stage.PRODUCTION)
    built.registry.push(two, actor="test", stage=Stage.STAGING)
    await built.manager.refresh()
    await built.manager.wait_loaded(timeout=60)
    yield built
    for component in built.components:
        await component.stop()
    await built.manager.close()
    built.plane.close()
    built.registry.engine.dispose()


def monitor_of(services: Services) -> DriftMonitor:
    return next(c for c in services.components if isinstance(c, DriftMonitor))


async def send(services: Services, rows: list[list[float]], version: str = "1.0.0") -> None:
    """Predict ``rows`` through the data plane, 50 per request."""
    for start in range(0, len(rows), 50):
        request = InferenceRequest(
            model="flowers", version=version, inputs=rows[start : start + 50], protocol="v1"
        )
        await services.plane.infer(request)


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def gauge(services: Services, feature: str, method: str, version: str = "1.0.0") -> float | None:
    labels = {"model": "flowers", "version": version, "feature": feature, "method": method}
    return services.metrics.registry.get_sample_value("modelhost_drift_score", labels)


async def info_of(services: Services, version: str = "1.0.0") -> VersionInfo:
    return await services.manager.resolve("flowers", version)


@pytest.mark.asyncio
async def test_reference_is_computed_once_from_the_training_data(
    services: Services, tmp_path: Path
) -> None:
    monitor = monitor_of(services)
    await monitor.tick()  # references of live versions are computed before any traffic
    info = await info_of(services)
    stored = await monitor.reference(info)
    assert stored is not None
    assert stored.reference.source == "artifact:train.csv"
    assert stored.reference.rows == 120
    assert list(stored.reference.features) == IRIS_FEATURES  # options.feature_names, no label
    assert stored.content_sha256 == info.files["train.csv"]
    again = build_services(services.settings)  # another process: reads it, computes nothing
    try:
        found = await monitor_of(again).reference(info)
        assert found is not None
        assert found.created_at == stored.created_at
        assert found.reference == stored.reference
    finally:
        again.plane.close()
        again.registry.engine.dispose()


@pytest.mark.asyncio
async def test_shifted_traffic_alerts_once_and_retrains_unshifted_does_not(
    services: Services, receiver: Receiver, iris_data: tuple[Any, Any], tmp_path: Path
) -> None:
    x, _ = iris_data
    monitor = monitor_of(services)
    info = await info_of(services)
    await send(services, iris_stream(x, 1.0, 50))
    assert await monitor.check(info) is None  # 50 < min_samples
    assert (await monitor.describe(info))["status"] == "insufficient_data"

    await send(services, iris_stream(x, 1.0, 300))
    assert await monitor.check(info) is None
    body = await monitor.describe(info)
    assert body["status"] == "ok"
    assert body["window"]["size"] == 300
    assert body["overall"]["psi"] < 0.2
    assert body["alerting"] == {"state": "ok", "since": None}
    psi_ok = gauge(services, OVERALL, "psi")
    assert psi_ok is not None
    assert psi_ok < 0.2
    assert gauge(services, "petal_length", "ks") is not None

    await send(services, iris_stream(x, 1.5, 300))
    assert await monitor.check(info) == "drift.alert"
    assert await monitor.check(info) is None  # once per crossing
    await until(lambda: len(receiver.received) >= 2 and (tmp_path / "retrain.json").exists())
    psi_drift = gauge(services, OVERALL, "psi")
    assert psi_drift is not None
    assert psi_drift > 0.2
    ks_drift = gauge(services, "sepal_length", "ks")
    assert ks_drift is not None
    assert ks_drift > 0.1

    first, second = receiver.received[:2]  # 503, then delivered on the retry
    assert first.body == second.body
    assert second.headers["x-modelhost-event"] == "drift.alert"
    secret = tenant_secret(MASTER.encode(), "system")
    headers = second.headers
    assert verify(
        secret, headers["x-modelhost-timestamp"], second.body, headers["x-modelhost-signature"]
    )
    alert = json.loads(second.body)
    assert alert["type"] == "drift.alert"
    evidence = alert["data"]
    assert evidence["model"] == "flowers"
    assert evidence["version"] == "1.0.0"
    assert evidence["status"] == "drift"
    assert evidence["overall"]["drifted_features"] == IRIS_FEATURES
    assert evidence["thresholds"]["psi"] == 0.2
    assert evidence["window"]["size"] == 300
    sepal = evidence["features"]["sepal_length"]
    assert sepal["reasons"][:2] == ["psi", "ks"]
    assert sepal["live"]["mean"] > sepal["reference"]["mean"] * 1.4
    assert headers["x-modelhost-delivery"] == f"{evidence['alert_id']}:2"

    retrained = json.loads((tmp_path / "retrain.json").read_text())
    assert retrained["alert_id"] == evidence["alert_id"]

    def settled() -> bool:  # the hook ran and the retried delivery was logged
        alert = monitor.store.alerts("flowers", "1.0.0")[0]
        return len(alert["hooks"]) == 1 and len(alert["deliveries"]) == 2

    await until(settled)
    logged = monitor.store.alerts("flowers", "1.0.0")[0]
    assert [d["status_code"] for d in logged["deliveries"]] == [503, 200]
    assert logged["hooks"][0]["exit_code"] == 0
    body = await monitor.describe(info)
    assert body["alerting"]["state"] == "drift"
    assert body["alerts"][0]["id"] == evidence["alert_id"]

    await send(services, iris_stream(x, 1.0, 300, seed=1))
    assert await monitor.check(info) == "drift.resolved"
    await until(lambda: len(receiver.received) >= 3)
    assert receiver.received[2].headers["x-modelhost-event"] == "drift.resolved"


@pytest.mark.asyncio
async def test_an_alert_url_the_guard_refuses_is_given_up_at_once(
    services: Services, iris_data: tuple[Any, Any]
) -> None:
    x, _ = iris_data
    monitor = monitor_of(services)
    info = await info_of(services, "2.0.0")
    await send(services, iris_stream(x, 1.5, 200), version="2.0.0")
    assert await monitor.check(info) == "drift.alert"
    await until(lambda: bool(monitor.store.alerts("flowers", "2.0.0")[0]["deliveries"]))
    await asyncio.sleep(0.3)
    deliveries = monitor.store.alerts("flowers", "2.0.0")[0]["deliveries"]
    assert len(deliveries) == 1
    assert "refused by the callback policy" in deliveries[0]["error"]


@pytest.mark.asyncio
async def test_only_answered_live_inferences_are_watched(services: Services) -> None:
    monitor = monitor_of(services)
    info = await info_of(services)
    request = InferenceRequest(model="flowers", inputs=[[5.0, 3.0, 1.5, 0.2]])
    replay = InferenceRequest(model="flowers", inputs=[[1.0] * 4], replay_of="pred_x")
    for event in (
        InferenceEvent(request, info, time.time(), 0.01, results=[{}]),
        InferenceEvent(request, info, time.time(), 0.01, error=InvalidInput("bad")),
        InferenceEvent(replay, info, time.time(), 0.01, results=[{}]),
        InferenceEvent(request, None, time.time(), 0.01, error=InvalidInput("bad")),
    ):
        monitor.live.observe(event)
    window = monitor.live.windows[info.ref]
    assert window.seen == 1
    items, since, until_ = window.snapshot()
    assert items == [[5.0, 3.0, 1.5, 0.2]]
    assert since == until_


@pytest.mark.asyncio
async def test_a_supplied_reference_replaces_the_training_data(
    services: Services, iris_data: tuple[Any, Any]
) -> None:
    x, _ = iris_data
    monitor = monitor_of(services)
    info = await info_of(services)
    scaled = "\n".join(
        json.dumps(dict(zip(IRIS_FEATURES, r, strict=True))) for r in iris_stream(x, 1.5, 150)
    )
    stored = await monitor.supply(info, scaled.encode(), "application/x-ndjson", actor="t/alice")
    assert stored.reference.source == "supplied"
    assert stored.created_by == "t/alice"
    await send(services, iris_stream(x, 1.5, 200))  # like the supplied reference: no drift
    assert (await monitor.describe(info))["status"] == "ok"
    again = build_services(services.settings)  # never recomputed from the manifest's file
    try:
        found = await monitor_of(again).reference(info)
        assert found is not None
        assert found.reference.source == "supplied"
    finally:
        again.plane.close()
        again.registry.engine.dispose()
    with pytest.raises(InvalidInput, match="line 1"):
        await monitor.supply(info, b"{nope\n", "application/x-ndjson", actor="t/alice")


@pytest.mark.asyncio
async def test_versions_without_reference_data_say_how_to_get_one(
    services: Services, tmp_path: Path, iris_data: tuple[Any, Any]
) -> None:
    monitor = monitor_of(services)
    missing = write_iris_model(tmp_path / "more", iris_data, "3.0.0", reference_data="gone.csv")
    services.registry.push(missing, actor="test")
    info = services.registry.get_version("flowers", "3.0.0")
    body = await monitor.describe(info)
    assert body["status"] == "no_reference"
    assert "'gone.csv', which is not a file of this version" in body["reference_error"]
    none = write_iris_model(tmp_path / "none", iris_data, "4.0.0", enabled=False)
    services.registry.push(none, actor="test")
    info = services.registry.get_version("flowers", "4.0.0")
    request = InferenceRequest(model="flowers", inputs=[[5.0, 3.0, 1.5, 0.2]])
    monitor.live.observe(InferenceEvent(request, info, time.time(), 0.01, results=[{}]))
    assert info.ref not in monitor.live.windows  # monitoring switched off in the manifest
