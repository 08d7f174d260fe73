"""Deployments over REST and the ``modelhost deploy`` command, on real servers: canary and
shadows set, bad changes refused with the field named, every change in the history, and two
replicas sharing one database agreeing within two seconds."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, create_key, run_cli, start_server, stop_server
from tests.serving.iris_variants import iris_rows, write_iris_variant

#: No demo models (they take long to build): the iris variants are enough; no response cache.
ENV = {"MODELHOST_DEMO__ENABLED": "false", "MODELHOST_CACHE__ENABLED": "false"}
"""(The traffic repeats iris rows: cache hits would answer without canaries and shadows
running.)"""


def _push(home: Path, directory: Path, *stage: str) -> None:
    result = run_cli(home, "models", "push", str(directory), *stage)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """Two ``modelhost serve`` processes over one home (one SQLite database, one artifact
    store), with iris 1.0.0 in production and 1.1.0 / 1.2.0 staged."""
    home = tmp_path_factory.mktemp("home")
    models = tmp_path_factory.mktemp("models")
    _push(home, write_iris_variant(models, "iris", "1.0.0"), "--stage", "production")
    _push(home, write_iris_variant(models, "iris", "1.1.0"))
    _push(home, write_iris_variant(models, "iris", "1.2.0", wrong=True))
    _push(home, write_iris_variant(models, "iris", "1.3.0", fail_every=3))
    key = create_key(home, "admin")
    first = start_server(home, home / "a.log", env=ENV, api_key=key)
    try:
        second = start_server(home, home / "b.log", env=ENV, api_key=key)
    except BaseException:
        stop_server(first)
        raise
    yield first, second
    stop_server(second)
    stop_server(first)


def _patch(client: httpx.Client, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = client.patch("/v1/models/iris/deployment", json=body)
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _versions_seen(server: Server, callers: int) -> set[str]:
    rows, _ = iris_rows()
    seen = set()
    with server.client() as client:
        for n in range(callers):
            response = client.post(
                "/v1/models/iris/predict",
                json={"inputs": [rows[n % len(rows)]]},
                headers={"X-Session-ID": f"s{n}"},
            )
            assert response.status_code == 200, response.text
            seen.add(response.json()["version"])
    return seen


def test_canary_and_shadow_changes_are_checked_and_recorded(
    replicas: tuple[Server, Server],
) -> None:
    server, _ = replicas
    with server.client() as client:
        spec = _patch(client, {"canary": "1.1.0", "weight": 25, "sticky": "session"})
        assert (spec["canary"], spec["weight"], spec["state"]) == ("1.1.0", 25.0, "canary")
        spec = _patch(client, {"add_shadow": "1.2.0"})
        assert spec["shadows"] == ["1.2.0"]
        assert spec["canary"] == "1.1.0"

        refused: dict[str, tuple[dict[str, Any], int, str]] = {
            "weight over 100": ({"weight": 150}, 400, "weight"),
            "production as canary": ({"canary": "1.0.0"}, 400, "canary"),
            "unknown version": ({"canary": "9.9.9"}, 404, "version"),
            "unknown field": ({"canray": "1.1.0"}, 400, "canray"),
            "bad ramp": ({"ramp": {"steps": [50, 5], "interval_s": 1}}, 400, "ramp.steps"),
            "bad guard": ({"guards": {"latency": 2}}, 400, "guards.latency"),
        }
        for name, (body, status, param) in refused.items():
            error = _patch(client, body, status)["error"]
            assert error["param"] == param, (name, error)

        status = client.get("/v1/models/iris/deployment").json()
        assert status["production"] == "1.0.0"
        assert status["canary"] == "1.1.0"
        actions = [e["detail"] for e in status["history"]]
        assert {"add_shadow": "1.2.0"} in actions
        history = client.get("/v1/models/iris/deployment/history").json()["data"]
        assert history[0]["actor"] == "system/tests"
        assert client.get("/v1/models/nope/deployment/history").status_code == 404
        assert client.get("/v1/deployments").json()["data"][0]["model"] == "iris"
        spec = _patch(client, {"canary": None, "remove_shadow": "1.2.0"})
        assert (spec["canary"], spec["weight"], spec["shadows"]) == (None, 0.0, [])


def test_deploy_needs_the_deploy_scope(replicas: tuple[Server, Server]) -> None:
    server, _ = replicas
    key = create_key(server.home, "predict", principal="caller")
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.patch(
        f"{server.url}/v1/models/iris/deployment", json={"weight": 5}, headers=headers
    )
    assert response.status_code == 403
    assert httpx.get(f"{server.url}/v1/deployments", headers=headers).status_code == 403


def test_the_cli_sets_a_canary_and_shows_the_status(replicas: tuple[Server, Server]) -> None:
    server, _ = replicas
    env = {"MODELHOST_URL": server.url, "MODELHOST_API_KEY": server.api_key}

    def cli(*args: str) -> str:
        result = run_cli(server.home, *args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "canary 1.1.0 at 10%" in cli("deploy", "iris", "--canary", "1.1.0", "--weight", "10")
    shown = cli("deploy", "status", "iris")
    assert "production 1.0.0" in shown
    assert "canary 1.1.0 at 10%" in shown
    assert "change" in cli("deploy", "history", "iris")
    assert "no canary" in cli("deploy", "iris", "--end-canary")
    bad = run_cli(server.home, "deploy", "iris", "--weight", "5", env=env)
    assert bad.returncode == 1
    assert "there is no canary" in bad.stderr


def test_a_change_through_one_replica_is_in_force_on_the_other_within_two_seconds(
    replicas: tuple[Server, Server],
) -> None:
    first, second = replicas
    assert _versions_seen(second, 30) == {"1.0.0"}
    with first.client() as client:
        _patch(client, {"canary": "1.1.0", "weight": 100})
    changed = time.monotonic()
    deadline = changed + 10
    with second.client() as client:
        while time.monotonic() < deadline:
            answer = client.post("/v1/models/iris/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]})
            if answer.json()["version"] == "1.1.0":
                break
            time.sleep(0.05)
    took = time.monotonic() - changed
    assert took < 2.0, f"the other replica switched after {took:.2f} s"
    assert _versions_seen(second, 30) == {"1.1.0"}
    with second.client() as client:
        _patch(client, {"weight": 0})
    time.sleep(2.0)
    assert _versions_seen(first, 30) == {"1.0.0"}
    with first.client() as client:
        _patch(client, {"canary": None})


def test_promotion_through_the_gates_and_rollback_over_rest_and_cli(
    replicas: tuple[Server, Server],
) -> None:
    first, second = replicas
    rows, labels = iris_rows()
    golden = "\n".join(
        json.dumps({"input": row, "expected": label})
        for row, label in list(zip(rows, labels, strict=True))[::5]
    )
    with first.client() as client:
        for version in ("1.1.0", "1.2.0"):
            registered = client.put(
                f"/v1/models/iris/versions/{version}/golden?accuracy=0.9",
                content=golden,
                headers={"Content-Type": "application/x-ndjson"},
            )
            assert registered.status_code == 200, registered.text
            assert registered.json()["items"] == 30
        refused = client.post("/v1/models/iris/deployment/promote", json={"version": "1.2.0"})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["type"] == "gate_refused"
        assert "report" in refused.json()["error"]
    env = {"MODELHOST_URL": first.url, "MODELHOST_API_KEY": first.api_key}
    promoted = run_cli(first.home, "deploy", "promote", "iris", "1.1.0", env=env)
    assert promoted.returncode == 0, promoted.stderr
    assert "promoted 1.1.0 (was 1.0.0)" in promoted.stdout
    time.sleep(1.5)
    assert _versions_seen(second, 20) == {"1.1.0"}
    back = run_cli(first.home, "deploy", "rollback", "iris", env=env)
    assert back.returncode == 0, back.stderr
    assert "rolled back to 1.0.0 (was 1.1.0)" in back.stdout
    time.sleep(1.5)
    assert _versions_seen(second, 20) == {"1.0.0"}
    assert _versions_seen(first, 20) == {"1.0.0"}
    with first.client() as client:
        actions = [
            e["action"] for e in client.get("/v1/models/iris/deployment/history").json()["data"]
        ]
    assert "promote.refused" in actions
    assert "promote" in actions
    assert "rollback" in actions


def test_guards_count_both_replicas_and_roll_a_failing_canary_back_on_both(
    replicas: tuple[Server, Server],
) -> None:
    first, second = replicas
    guards = {"min_samples": 40, "window_s": 120}
    with first.client() as client:
        _patch(client, {"canary": "1.3.0", "weight": 50, "sticky": "session", "guards": guards})
    rows, _ = iris_rows()
    canary_answers = {first.url: 0, second.url: 0}
    for n in range(60):  # each replica alone sees fewer than min_samples canary requests
        for side, server in (("a", first), ("b", second)):
            with server.client() as client:
                response = client.post(
                    "/v1/models/iris/predict",
                    json={"inputs": [rows[n]]},
                    headers={"X-Session-ID": f"{side}-{n}"},  # the same split every run
                )
            if response.status_code != 200 or response.json()["version"] == "1.3.0":
                canary_answers[server.url] += 1
    assert all(0 < count < 40 for count in canary_answers.values()), canary_answers
    deadline = time.monotonic() + 15
    with second.client() as client:
        while time.monotonic() < deadline:
            status = client.get("/v1/models/iris/deployment").json()
            if status["state"] == "rolled_back":
                break
            time.sleep(0.2)
    assert status["state"] == "rolled_back", status
    assert status["weight"] == 0.0
    assert status["reason"]["guard"] == "errors", status["reason"]
    assert status["live"]["canary"]["requests"] >= 40
    time.sleep(1.5)
    assert _versions_seen(first, 20) == {"1.0.0"}
    assert _versions_seen(second, 20) == {"1.0.0"}


def test_a_shadow_is_reported_from_both_replicas_and_never_answers(
    replicas: tuple[Server, Server],
) -> None:
    first, second = replicas
    with first.client() as client:
        _patch(client, {"add_shadow": "1.2.0"})  # the version that answers the wrong class
    time.sleep(1.0)
    assert _versions_seen(first, 20) == {"1.0.0"}
    assert _versions_seen(second, 20) == {"1.0.0"}
    deadline = time.monotonic() + 15
    with first.client() as client:
        while time.monotonic() < deadline:
            reports = client.get("/v1/models/iris/deployment").json()["shadow_reports"]
            if reports and reports[0]["requests"] >= 40:
                break
            time.sleep(0.3)
        report = reports[0]
        assert report["version"] == "1.2.0"
        assert report["requests"] >= 40
        assert report["replicas"] == 2
        assert report["agreement"] is not None
        assert report["agreement"] < 0.1
        assert report["examples"]
        env = {"MODELHOST_URL": first.url, "MODELHOST_API_KEY": first.api_key}
        shown = run_cli(first.home, "deploy", "status", "iris", env=env)
        assert shown.returncode == 0, shown.stderr
        assert "1.2.0 disagreed" in shown.stdout
        _patch(client, {"remove_shadow": "1.2.0"})
