"""Provenance over real HTTP against a real server: records of every protocol, filters,
tenants and scopes, capture modes, replays (API and CLI) that never count as live traffic."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from modelhost.api.provenance import parse_time
from modelhost.errors import InvalidInput
from modelhost.provenance import data_hash
from tests.conftest import (
    Server,
    create_key,
    run_cli,
    start_server,
    stop_server,
    write_python_model,
)

FLOWER = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
ENV = {
    "MODELHOST_DEMO__MODELS": '["iris"]',
    "MODELHOST_PROVENANCE__FLUSH_INTERVAL_S": "0.1",
}


@dataclass
class Setup:
    server: Server
    keys: dict[str, str]
    """API keys by name: alice (acme: predict, jobs, provenance), reader (acme: provenance),
    caller (acme: predict), bob (globex: predict, provenance), acme-admin (acme: admin),
    admin (system: admin)."""

    def client(self, who: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[who]}"}
        return httpx.Client(base_url=self.server.url, timeout=60, headers=headers)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("provenance-home")
    models = tmp_path_factory.mktemp("provenance-models")
    for name, provenance in (
        ("echo", {}),
        ("echo-hash", {"capture": "hash"}),
        ("echo-redacted", {"capture": "redacted"}),
        ("echo-unsampled", {"sample_rate": 0.0}),
    ):
        directory = write_python_model(models, name, provenance=provenance)
        result = run_cli(home, "models", "push", str(directory), "--stage", "production")
        assert result.returncode == 0, result.stderr
    keys = {
        "alice": create_key(
            home, "predict", "jobs", "provenance", tenant="acme", principal="alice"
        ),
        "reader": create_key(home, "provenance", tenant="acme", principal="auditor"),
        "caller": create_key(home, "predict", tenant="acme", principal="app"),
        "bob": create_key(home, "predict", "provenance", tenant="globex", principal="bob"),
        "acme-admin": create_key(home, "admin", tenant="acme", principal="ops"),
    }
    server = start_server(home, home / "server.log", env=ENV)
    keys["admin"] = server.api_key
    yield Setup(server, keys)
    stop_server(server)


@pytest.fixture
def alice(setup: Setup) -> Iterator[httpx.Client]:
    with setup.client("alice") as client:
        yield client


def rid() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def predict(client: httpx.Client, model: str, inputs: list[Any], status: int = 200) -> str:
    """A v1 predict with a fresh request id; returns the id."""
    request_id = rid()
    response = client.post(
        f"/v1/models/{model}/predict",
        json={"inputs": inputs},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == status, response.text
    return request_id


def record(client: httpx.Client, key: str, timeout: float = 15.0) -> dict[str, Any]:
    """The record of ``key``, polled (briefly, bounded) until the recorder wrote it."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/provenance/{key}")
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        assert response.status_code == 404, response.text
        assert time.monotonic() < deadline, f"no record of {key}"
        time.sleep(0.05)


def listing(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/provenance", params=params)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def test_a_v1_predict_is_recorded(alice: httpx.Client) -> None:
    request_id = predict(alice, "iris", [FLOWER])
    found = record(alice, request_id)
    assert found["request_id"] == request_id
    assert (found["model"], found["version"], found["runtime"]) == ("iris", "1.0.0", "sklearn")
    assert (found["protocol"], found["status"], found["payload"]) == ("v1", "ok", "full")
    assert (found["tenant"], found["principal"]) == ("acme", "acme/alice")
    assert found["inputs"] == [FLOWER]
    assert found["outputs"][0]["label"] == "virginica"
    assert found["data_hash"] == data_hash([FLOWER])
    assert len(found["manifest_digest"]) == 64
    assert found["timings"]["total_ms"] > 0
    assert found["timings"]["inference_ms"] > 0
    assert "total_tokens" in found["usage"]
    assert found["replayable"] is True
    assert found["replay_of"] is None


def test_a_failed_request_is_recorded_with_its_error(alice: httpx.Client) -> None:
    request_id = predict(alice, "iris", [{"sepal_length": 1}], status=400)
    found = record(alice, request_id)
    assert found["status"] == "error"
    assert found["error"]["type"] == "InvalidInput"
    assert found["error"]["outcome"] == "invalid_input"
    assert "petal_length" in found["error"]["message"] or "required" in found["error"]["message"]
    assert found["outputs"] is None
    assert found["output_hash"] is None


def test_a_job_is_recorded_with_its_queue_wait(alice: httpx.Client) -> None:
    accepted = alice.post("/v1/jobs", json={"model": "iris", "inputs": [FLOWER]})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    found = record(alice, job_id)
    assert found["protocol"] == "jobs"
    assert found["status"] == "ok"
    assert found["timings"]["queue_ms"] is not None
    assert found["timings"]["queue_ms"] >= 0


def test_filters_narrow_the_listing(alice: httpx.Client) -> None:
    ok = predict(alice, "echo", [{"text": "filter me"}])
    bad = predict(alice, "echo", [{"text": "x" * 30}], status=400)
    record(alice, ok)
    record(alice, bad)
    errors = [r["request_id"] for r in listing(alice, model="echo", status="error")]
    assert bad in errors
    assert ok not in errors
    recent = [r["request_id"] for r in listing(alice, model="echo", since="1h", limit=200)]
    assert {ok, bad} <= set(recent)
    assert listing(alice, model="echo", until="1h") == []
    mine = listing(alice, principal="alice", protocol="v1", version="1.0.0", model="echo")
    assert {r["principal"] for r in mine} == {"acme/alice"}
    newest = listing(alice, limit=1)
    assert len(newest) == 1
    page = alice.get("/v1/provenance", params={"limit": 1}).json()
    assert page["has_more"] is True
    following = listing(alice, limit=1, before=page["next_before"])
    assert following[0]["id"] < page["data"][0]["id"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"colour": "red"}, "colour"),
        ({"since": "yesterday"}, "since"),
        ({"status": "maybe"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"replays": "sometimes"}, "replays"),
    ],
)
def test_bad_filters_are_400_naming_the_filter(
    alice: httpx.Client, params: dict[str, str], param: str
) -> None:
    response = alice.get("/v1/provenance", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_times_are_unix_iso_or_a_duration_before_now() -> None:
    assert parse_time(1717243200, "since") == 1717243200.0
    assert parse_time("1717243200.5", "since") == 1717243200.5
    assert parse_time("2024-06-01T12:00:00Z", "since") == 1717243200.0
    assert parse_time("2024-06-01T14:00:00+02:00", "since") == 1717243200.0
    assert parse_time("2024-06-01T12:00:00", "since") == 1717243200.0  # no zone: UTC
    assert parse_time("90s", "since", now=1000.0) == 910.0
    assert parse_time("2h", "since", now=10_000.0) == 2800.0
    assert parse_time("1w", "since", now=1e6) == 1e6 - 604800
    for bad in ("yesterday", "", "5 fortnights", True, None, float("nan")):
        with pytest.raises(InvalidInput):
            parse_time(bad, "since")


def test_a_tenant_sees_only_its_own_records(setup: Setup, alice: httpx.Client) -> None:
    mine = predict(alice, "echo", [{"text": "acme only"}])
    record(alice, mine)
    with setup.client("bob") as bob:
        theirs = predict(bob, "echo", [{"text": "globex only"}])
        record(bob, theirs)
        assert bob.get(f"/v1/provenance/{mine}").status_code == 404
        assert {r["tenant"] for r in listing(bob, limit=200)} == {"globex"}
        replay = bob.post(f"/v1/provenance/{mine}/replay", json={})
        assert replay.status_code == 404
    assert alice.get(f"/v1/provenance/{theirs}").status_code == 404
    with setup.client("admin") as admin:
        assert record(admin, mine)["tenant"] == "acme"
        assert record(admin, theirs)["tenant"] == "globex"
        assert {r["tenant"] for r in listing(admin, tenant="globex")} == {"globex"}


def test_an_admin_of_another_tenant_sees_only_its_own_tenant(
    setup: Setup, alice: httpx.Client
) -> None:
    # issue 16: only the system tenant's administrators see across tenants
    mine = predict(alice, "echo", [{"text": "acme admin's tenant"}])
    record(alice, mine)
    with setup.client("bob") as bob:
        theirs = predict(bob, "echo", [{"text": "globex secret"}])
        record(bob, theirs)
    with setup.client("acme-admin") as ops:
        assert record(ops, mine)["tenant"] == "acme"
        assert ops.get(f"/v1/provenance/{theirs}").status_code == 404
        assert ops.post(f"/v1/provenance/{theirs}/replay", json={}).status_code == 404
        assert {r["tenant"] for r in listing(ops, tenant="globex", limit=200)} == {"acme"}
        assert {r["tenant"] for r in listing(ops, limit=200)} == {"acme"}


def test_provenance_needs_its_own_scope_and_replay_needs_predict(setup: Setup) -> None:
    with setup.client("caller") as caller:
        request_id = predict(caller, "echo", [{"text": "app call"}])
        denied = caller.get("/v1/provenance")
        assert denied.status_code == 403
        assert "provenance" in denied.json()["error"]["message"]
    with setup.client("reader") as reader:
        assert record(reader, request_id)["principal"] == "acme/app"
        refused = reader.post(f"/v1/provenance/{request_id}/replay", json={})
        assert refused.status_code == 403
        assert "predict" in refused.json()["error"]["message"]


def test_capture_modes_keep_what_the_manifest_asks(alice: httpx.Client) -> None:
    hashed = record(alice, predict(alice, "echo-hash", [{"text": "secret"}]))
    assert (hashed["payload"], hashed["inputs"], hashed["outputs"]) == ("hash", None, None)
    assert hashed["data_hash"] == data_hash([{"text": "secret"}])
    assert hashed["output_hash"] == data_hash([{"echo": {"text": "secret"}}])
    redacted = record(alice, predict(alice, "echo-redacted", [{"text": "to jane@example.com"}]))
    assert redacted["payload"] == "redacted"
    assert redacted["inputs"] == [{"text": "to [REDACTED:email]"}]
    assert redacted["outputs"] == [{"echo": {"text": "to [REDACTED:email]"}}]
    unsampled = record(alice, predict(alice, "echo-unsampled", [{"text": "not kept"}]))
    assert (unsampled["payload"], unsampled["inputs"]) == ("unsampled", None)
    assert unsampled["data_hash"] == data_hash([{"text": "not kept"}])
    for found in (hashed, redacted, unsampled):
        refused = alice.post(f"/v1/provenance/{found['request_id']}/replay", json={})
        assert refused.status_code == 409, refused.text
        assert "cannot be replayed" in refused.json()["error"]["message"]


def test_a_replay_of_an_iris_request_reproduces_its_output(alice: httpx.Client) -> None:
    original = record(alice, predict(alice, "iris", [FLOWER, {**FLOWER, "petal_length": 1.4}]))
    response = alice.post(f"/v1/provenance/{original['request_id']}/replay")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["same"] is True
    assert body["diff"] == []
    assert body["replay"]["outputs"] == original["outputs"]
    assert body["replay"]["version"] == "1.0.0"
    assert body["latency_ms"]["original"] == original["duration_ms"]
    assert body["latency_ms"]["replay"] > 0
    replayed = record(alice, body["replay"]["request_id"])
    assert (replayed["protocol"], replayed["replay_of"]) == ("replay", original["request_id"])
    assert replayed["principal"] == "acme/alice"
    live = [r["request_id"] for r in listing(alice, limit=200)]
    assert body["replay"]["request_id"] not in live
    replays = listing(alice, replay_of=original["request_id"])
    assert [r["request_id"] for r in replays] == [body["replay"]["request_id"]]


def test_a_replay_against_the_onnx_version_agrees(alice: httpx.Client) -> None:
    original = record(alice, predict(alice, "iris", [FLOWER]))
    response = alice.post(
        f"/v1/provenance/{original['request_id']}/replay", json={"version": "1.1.0"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["replay"]["version"] == "1.1.0"
    assert body["replay"]["outputs"][0]["label"] == original["outputs"][0]["label"]
    assert body["distance"] < 1e-5  # float32 ONNX against float64 scikit-learn
    window = alice.post(
        "/v1/provenance/replay", json={"model": "iris", "since": "1h", "against": "1.1.0"}
    )
    assert window.status_code == 200, window.text
    report = window.json()
    assert report["replayed"] >= 1
    assert report["failed"] == 0
    assert report["agreement"] == 1.0
    assert report["original_versions"].get("1.0.0", 0) >= 1
    assert report["latency_ms"]["replay_p50"] > 0
    assert report["latency_ms"]["change_pct"] is not None


def test_bad_replay_requests_are_refused(alice: httpx.Client) -> None:
    original = record(alice, predict(alice, "iris", [FLOWER]))
    path = f"/v1/provenance/{original['request_id']}/replay"
    assert alice.post(path, json={"version": "9.9.9"}).status_code == 404
    assert alice.post(path, json={"colour": "red"}).status_code == 400
    assert alice.post("/v1/provenance/nothing-here/replay").status_code == 404
    window = alice.post("/v1/provenance/replay", json={"model": "iris", "against": "1.1.0"})
    assert window.status_code == 400
    assert window.json()["error"]["param"] == "since"
    unknown = alice.post(
        "/v1/provenance/replay", json={"model": "iris", "since": "1h", "against": "7.0.0"}
    )
    assert unknown.status_code == 404


def _counter(exposition: str, protocol: str) -> float:
    total = 0.0
    wanted = ("modelhost_requests_total{", f'protocol="{protocol}"', 'model="iris"')
    for line in exposition.splitlines():
        if line.startswith(wanted[0]) and wanted[1] in line and wanted[2] in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_replays_never_count_as_live_traffic(setup: Setup, alice: httpx.Client) -> None:
    original = record(alice, predict(alice, "iris", [FLOWER]))
    with setup.client("admin") as admin:
        before = admin.get("/metrics").text
        response = alice.post(f"/v1/provenance/{original['request_id']}/replay")
        assert response.status_code == 200
        after = admin.get("/metrics").text
    assert _counter(after, "v1") == _counter(before, "v1")
    assert _counter(after, "replay") == _counter(before, "replay") + 1
    assert 'modelhost_provenance_records_total{outcome="written"}' in after


def test_the_cli_replays_one_request_and_a_window(setup: Setup, alice: httpx.Client) -> None:
    original = record(alice, predict(alice, "iris", [FLOWER]))
    remote = ("--url", setup.server.url, "--api-key", setup.keys["alice"])
    home = setup.server.home
    one = run_cli(home, "replay", original["request_id"], *remote)
    assert one.returncode == 0, one.stderr
    assert "the same" in one.stdout
    assert original["request_id"] in one.stdout
    onnx = run_cli(home, "replay", original["request_id"], "--version", "1.1.0", *remote)
    assert onnx.returncode == 0, onnx.stderr
    assert "iris@1.1.0" in onnx.stdout
    assert "probabilities" in onnx.stdout
    window = run_cli(
        home, "replay", "--model", "iris", "--since", "1h", "--against", "1.1.0", *remote
    )
    assert window.returncode == 0, window.stderr
    assert "agreement 100.0 %" in window.stdout
    assert "latency p50" in window.stdout
    listed = run_cli(home, "provenance", "list", "--model", "iris", "--limit", "50", *remote)
    assert listed.returncode == 0, listed.stderr
    assert original["request_id"] in listed.stdout
    shown = run_cli(home, "provenance", "show", original["request_id"], *remote)
    assert shown.returncode == 0, shown.stderr
    assert original["data_hash"] in shown.stdout
    missing = run_cli(home, "replay", "nothing-here", *remote)
    assert missing.returncode == 1
    assert "404" in missing.stderr


@pytest.mark.llm
def test_an_openai_chat_is_recorded(client: httpx.Client) -> None:
    request_id = rid()
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "gemma-270m",
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 4,
            "temperature": 0,
        },
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 200, response.text
    found = record(client, request_id, timeout=30)
    assert (found["protocol"], found["model"], found["status"]) == ("openai", "gemma-270m", "ok")
    assert found["runtime"] == "llamacpp"
    assert found["usage"]["output_tokens"] >= 1
    text = response.json()["choices"][0]["message"]["content"]
    assert found["outputs"][0]["text"] == text
    assert found["inputs"][0]["messages"][-1]["content"] == "Say hi."
