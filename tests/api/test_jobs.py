"""Async jobs over real HTTP against a real server: submit, poll, cancel, retry, restart."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelhost.protocol.jobs import poll_after
from tests.conftest import (
    Server,
    create_key,
    run_cli,
    start_server,
    stop_server,
    write_python_model,
)

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}
#: Two attempts with a short backoff, so the retry test is quick.
JOB_ENV = {"MODELHOST_JOBS__MAX_ATTEMPTS": "2", "MODELHOST_JOBS__RETRY_BASE_S": "0.1"}


@dataclass
class Setup:
    server: Server
    acme: dict[str, str]
    globex: dict[str, str]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _push_models(home: Path, models: Path) -> None:
    slow_limits = {"max_request_bytes": 2048, "max_batch_items": 4, "timeout_ms": 5000}
    for directory in (
        write_python_model(models, "echo"),
        write_python_model(models, "slow", limits=slow_limits),
    ):
        result = run_cli(home, "models", "push", str(directory), "--stage", "production")
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("jobs-home")
    _push_models(home, tmp_path_factory.mktemp("jobs-models"))
    acme = _bearer(create_key(home, "predict", "jobs", tenant="acme", principal="alice"))
    globex = _bearer(create_key(home, "predict", "jobs", tenant="globex", principal="bob"))
    server = start_server(home, home / "server.log", "--no-demo", env=JOB_ENV)
    yield Setup(server, acme, globex)
    stop_server(server)


@pytest.fixture
def http(setup: Setup) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=setup.server.url, timeout=60, headers=setup.acme) as client:
        yield client


def submit(client: httpx.Client, body: dict[str, Any], status: int = 202) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    payload: dict[str, Any] = response.json()
    return payload


def wait_for(
    client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 30
) -> dict[str, Any]:
    """Poll the job (briefly, bounded) until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        seen = response.json()
        if seen["status"] in statuses:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stayed {seen.get('status')}, not in {statuses}: {seen}")


def test_a_job_answers_what_a_synchronous_predict_answers(http: httpx.Client) -> None:
    inputs = [{"text": "hello", "n": 2}, {"text": "world"}]
    accepted = http.post("/v1/jobs", json={"model": "echo", "inputs": inputs})
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["status"] == "queued"
    job_id = body["job_id"]
    assert job_id.startswith("job_")
    assert body["links"]["self"] == f"/v1/jobs/{job_id}"
    assert accepted.headers["location"] == f"/v1/jobs/{job_id}"
    assert int(accepted.headers["retry-after"]) >= 1
    done = wait_for(http, job_id, TERMINAL)
    sync = http.post("/v1/models/echo/predict", json={"inputs": inputs})
    assert sync.status_code == 200, sync.text
    assert done["status"] == "succeeded", done
    assert done["result"]["results"] == sync.json()["results"]
    assert done["result"]["model"] == "echo"
    assert done["result"]["version"] == "1.0.0"
    assert done["attempts"] == 1
    assert done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    final = http.get(f"/v1/jobs/{job_id}")
    assert "retry-after" not in final.headers


def test_the_same_idempotency_key_returns_the_same_job(http: httpx.Client) -> None:
    body = {"model": "echo", "inputs": [{"text": "once"}], "idempotency_key": "order-17"}
    first = submit(http, body)
    again = submit(http, {**body, "inputs": [{"text": "twice"}]}, status=200)
    assert again["job_id"] == first["job_id"]
    done = wait_for(http, first["job_id"], TERMINAL)
    assert done["result"]["results"] == [{"echo": {"text": "once"}}]


def test_another_tenant_gets_404_for_a_job_it_does_not_own(
    setup: Setup, http: httpx.Client
) -> None:
    job = submit(http, {"model": "echo", "inputs": [{"text": "mine"}], "idempotency_key": "k1"})
    with httpx.Client(base_url=setup.server.url, timeout=60, headers=setup.globex) as other:
        for response in (
            other.get(f"/v1/jobs/{job['job_id']}"),
            other.delete(f"/v1/jobs/{job['job_id']}"),
        ):
            assert response.status_code == 404, response.text
            assert response.json()["error"]["type"] == "not_found_error"
        # the same idempotency key in another tenant is another job
        theirs = submit(
            other, {"model": "echo", "inputs": [{"text": "x"}], "idempotency_key": "k1"}
        )
        assert theirs["job_id"] != job["job_id"]
    missing = http.get("/v1/jobs/job_000000000000000000000000")
    assert missing.status_code == 404
    assert wait_for(http, job["job_id"], TERMINAL)["status"] == "succeeded"


def test_a_job_on_an_unknown_model_fails_at_once_with_the_error_kept(http: httpx.Client) -> None:
    job = submit(http, {"model": "no-such-model", "inputs": [{"text": "x"}]})
    done = wait_for(http, job["job_id"], TERMINAL)
    assert done["status"] == "failed"
    assert done["attempts"] == 1
    assert done["error"]["type"] == "ModelNotFound"
    assert "no-such-model" in done["error"]["message"]
    assert done["error"]["retryable"] is False
    assert done["result"] is None


def test_a_timing_out_job_is_retried_then_fails_with_the_error_kept(http: httpx.Client) -> None:
    # the echo model times out after 300 ms: every attempt fails with a service error
    job = submit(http, {"model": "echo", "inputs": [{"text": "x"}], "parameters": {"sleep": 1}})
    done = wait_for(http, job["job_id"], TERMINAL)
    assert done["status"] == "failed"
    assert done["attempts"] == 2
    assert done["max_attempts"] == 2
    assert done["error"]["type"] == "InferenceTimeout"
    assert done["error"]["retryable"] is True


def test_cancel_stops_a_running_job_and_the_worker_moves_on(http: httpx.Client) -> None:
    slow = submit(http, {"model": "slow", "inputs": [{"text": "x"}], "parameters": {"sleep": 2}})
    wait_for(http, slow["job_id"], {"running"})
    cancelled = http.delete(f"/v1/jobs/{slow['job_id']}")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert "retry-after" not in cancelled.headers
    # outlast the slow attempt: the next jobs run, the cancelled one stays cancelled
    for n in range(3):
        later = submit(
            http, {"model": "slow", "inputs": [{"text": f"{n}"}], "parameters": {"sleep": 1}}
        )
        assert wait_for(http, later["job_id"], TERMINAL)["status"] == "succeeded"
    final = http.get(f"/v1/jobs/{slow['job_id']}").json()
    assert final["status"] == "cancelled"
    assert final["result"] is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"inputs": [{"text": "x"}]}, "model"),
        ({"model": "echo", "inputs": []}, "inputs"),
        ({"model": "echo", "inputs": [1], "parameters": [1]}, "parameters"),
        ({"model": "echo", "inputs": [1], "priority": "high"}, "priority"),
        ({"model": "echo", "inputs": [1], "callback_url": "http://x.invalid"}, "callback_url"),
        ({"model": "echo", "inputs": [1], "callback_url": "http://127.0.0.1:9/"}, "callback_url"),
        ({"model": "echo", "inputs": [1], "callback_url": "http://10.0.0.7/"}, "callback_url"),
        ({"model": "echo", "inputs": [1], "callback_url": "file:///etc/passwd"}, "callback_url"),
        ({"model": "echo", "inputs": [1], "colour": "red"}, "colour"),
        ({"model": "ec\x00ho", "inputs": [1]}, "model"),
        ({"model": "echo", "inputs": [1], "idempotency_key": "k\x00"}, "idempotency_key"),
    ],
)
def test_a_wrong_submission_is_refused_with_400(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    response = http.post("/v1/jobs", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_jobs_need_the_jobs_scope_and_the_predict_scope(setup: Setup) -> None:
    home = setup.server.home
    for scope in ("predict", "jobs"):
        headers = _bearer(create_key(home, scope, tenant="acme", principal=f"only-{scope}"))
        response = httpx.post(
            f"{setup.server.url}/v1/jobs",
            json={"model": "echo", "inputs": [{"text": "x"}]},
            headers=headers,
            timeout=30,
        )
        assert response.status_code == 403, response.text


def test_queued_jobs_survive_a_restart_and_polling_advice_grows(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _push_models(home, tmp_path / "models")
    key = create_key(home, "predict", "jobs", tenant="acme")
    idle = start_server(
        home, home / "first.log", "--no-demo", env={"MODELHOST_JOBS__WORKERS": "0"}, api_key=key
    )
    try:
        with httpx.Client(base_url=idle.url, timeout=60, headers=_bearer(key)) as client:
            kept = submit(client, {"model": "echo", "inputs": [{"text": "durable"}]})
            dropped = submit(client, {"model": "echo", "inputs": [{"text": "dropped"}]})
            assert client.delete(f"/v1/jobs/{dropped['job_id']}").json()["status"] == "cancelled"
            hints = _follow_polling_advice(client, kept["job_id"])
    finally:
        stop_server(idle)
    assert hints == sorted(hints)
    assert hints[0] == 1
    assert hints[-1] >= 4
    busy = start_server(home, home / "second.log", "--no-demo", api_key=key)
    try:
        with httpx.Client(base_url=busy.url, timeout=60, headers=_bearer(key)) as client:
            done = wait_for(client, kept["job_id"], TERMINAL)
            assert done["status"] == "succeeded"
            assert done["result"]["results"] == [{"echo": {"text": "durable"}}]
            assert client.get(f"/v1/jobs/{dropped['job_id']}").json()["status"] == "cancelled"
    finally:
        stop_server(busy)


def _follow_polling_advice(client: httpx.Client, job_id: str) -> list[int]:
    """Poll a job nobody runs as the Retry-After header advises, until the advice reaches
    4 s or more (0.5 → 1 → 2 → 4 s from submission); returns the hints seen."""
    hints: list[int] = []
    for _ in range(8):
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200
        assert response.json()["status"] == "queued"
        hints.append(int(response.headers["retry-after"]))
        if hints[-1] >= 4:
            break
        time.sleep(hints[-1])
    return hints


def test_polling_advice_starts_at_half_a_second_doubles_and_caps_at_five() -> None:
    ages = (0.0, 0.4, 0.6, 1.6, 3.6, 7.6, 12.6, 100.0)
    assert [poll_after(age) for age in ages] == [0.5, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def read_events(
    client: httpx.Client, job_id: str, headers: dict[str, str] | None = None
) -> list[tuple[str, dict[str, Any], str | None]]:
    """Follow a job's event stream to its end: (event, data, id) per event."""
    events: list[tuple[str, dict[str, Any], str | None]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        name, data, seq = "message", "", None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
            elif line.startswith("id: "):
                seq = line.removeprefix("id: ")
            elif line == "" and data:
                events.append((name, json.loads(data), seq))
                name, data, seq = "message", "", None
    return events


def test_the_event_stream_replays_history_follows_changes_and_resumes(http: httpx.Client) -> None:
    job = submit(http, {"model": "echo", "inputs": [{"text": "sse"}], "parameters": {"sleep": 0.2}})
    events = read_events(http, job["job_id"])
    kinds = [name for name, _, _ in events]
    assert kinds[0] == "queued"
    assert kinds[-1] == "succeeded"
    assert "running" in kinds
    final = events[-1][1]
    assert final["job"]["result"]["results"] == [{"echo": {"text": "sse"}}]
    assert final["attempt"] == 1
    running_id = next(seq for name, _, seq in events if name == "running")
    assert running_id is not None
    resumed = read_events(http, job["job_id"], headers={"Last-Event-ID": running_id})
    assert [name for name, _, _ in resumed] == ["succeeded"]
    assert http.get("/v1/jobs/job_000000000000000000000000/events").status_code == 404
    bad = http.get(f"/v1/jobs/{job['job_id']}/events", params={"after": "x"})
    assert bad.status_code == 400


def test_a_failed_job_ends_its_event_stream_with_the_error(http: httpx.Client) -> None:
    job = submit(http, {"model": "no-such-model", "inputs": [{"text": "x"}]})
    events = read_events(http, job["job_id"])
    name, data, _ = events[-1]
    assert name == "failed"
    assert data["error"]["type"] == "ModelNotFound"
    assert data["job"]["status"] == "failed"


def test_listing_jobs_newest_first_with_filters_and_pages(setup: Setup) -> None:
    key = _bearer(create_key(setup.server.home, "predict", "jobs", tenant="lister"))
    with httpx.Client(base_url=setup.server.url, timeout=60, headers=key) as client:
        ids = [
            submit(client, {"model": "echo", "inputs": [{"text": f"{n}"}]})["job_id"]
            for n in range(3)
        ]
        failing = submit(client, {"model": "no-such-model", "inputs": [{"text": "x"}]})["job_id"]
        for job_id in [*ids, failing]:
            wait_for(client, job_id, TERMINAL)
        listed = client.get("/v1/jobs").json()
        assert [job["job_id"] for job in listed["data"]] == [failing, *reversed(ids)]
        failed = client.get("/v1/jobs", params={"status": "failed"}).json()
        assert [job["job_id"] for job in failed["data"]] == [failing]
        page = client.get("/v1/jobs", params={"limit": 2}).json()
        assert page["has_more"] is True
        rest = client.get("/v1/jobs", params={"limit": 2, "before": page["next_before"]}).json()
        assert [j["job_id"] for j in page["data"] + rest["data"]] == [failing, *reversed(ids)]
        assert client.get("/v1/jobs", params={"status": "done"}).status_code == 400
        assert client.get("/v1/jobs", params={"limit": 500}).status_code == 400
    with httpx.Client(base_url=setup.server.url, timeout=60, headers=setup.globex) as other:
        theirs = other.get("/v1/jobs").json()["data"]
        assert not {job["job_id"] for job in theirs} & {failing, *ids}


def test_predict_with_async_true_answers_202_with_a_job(setup: Setup, http: httpx.Client) -> None:
    inputs = [{"text": "later"}]
    accepted = http.post("/v1/models/echo/predict", json={"inputs": inputs, "async": True})
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert job["object"] == "job"
    done = wait_for(http, job["job_id"], TERMINAL)
    assert done["result"]["results"] == [{"echo": {"text": "later"}}]
    pinned = http.post("/v1/models/echo@1.0.0/predict", json={"inputs": inputs, "async": True})
    assert pinned.json()["version"] == "1.0.0"
    now = http.post("/v1/models/echo/predict", json={"inputs": inputs, "async": False})
    assert now.status_code == 200
    assert now.json()["results"] == [{"echo": {"text": "later"}}]
    wrong = http.post("/v1/models/echo/predict", json={"inputs": inputs, "async": "yes"})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["param"] == "async"
    only_predict = _bearer(create_key(setup.server.home, "predict", tenant="acme"))
    refused = httpx.post(
        f"{setup.server.url}/v1/models/echo/predict",
        json={"inputs": inputs, "async": True},
        headers=only_predict,
        timeout=30,
    )
    assert refused.status_code == 403, refused.text


def test_an_llm_job_streams_its_tokens_as_events(client: httpx.Client) -> None:
    body = {
        "model": "gemma-270m",
        "inputs": [{"messages": [{"role": "user", "content": "Count from one to twenty."}]}],
        "parameters": {"max_tokens": 48, "temperature": 0},
    }
    accepted = client.post("/v1/jobs", json=body)
    assert accepted.status_code == 202, accepted.text
    events = read_events(client, accepted.json()["job_id"])
    tokens = [data["text"] for name, data, _ in events if name == "token"]
    name, final, _ = events[-1]
    assert name == "succeeded", final
    text = final["job"]["result"]["results"][0]["text"]
    # tokens are live: the stream may have joined after the first few, never out of order
    assert tokens
    assert text.endswith("".join(tokens))
    sync = client.post(
        "/v1/models/gemma-270m/predict",
        json={"inputs": body["inputs"], "parameters": body["parameters"]},
    )
    assert sync.status_code == 200, sync.text
    assert sync.json()["results"][0]["text"] == text
