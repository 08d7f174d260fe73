"""Batch jobs over real HTTP against the session server: submit (JSON and JSONL), progress,
results paging and download, cancel, priorities, idempotency, errors, tenant isolation."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Server, create_key, start_server, stop_server

OVER = {"completed", "cancelled"}
JSONL = {"Content-Type": "application/x-ndjson"}


def submit(client: httpx.Client, body: dict[str, Any], status: int = 202) -> dict[str, Any]:
    response = client.post("/v1/batch/predict", json=body)
    assert response.status_code == status, response.text
    payload: dict[str, Any] = response.json()
    return payload


def upload(
    client: httpx.Client, lines: list[dict[str, Any]], status: int = 202, **params: str
) -> dict[str, Any]:
    content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    response = client.post("/v1/batch/predict", content=content, params=params, headers=JSONL)
    assert response.status_code == status, response.text
    payload: dict[str, Any] = response.json()
    return payload


def view(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/batch/{batch_id}")
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    return payload


def wait_batch(client: httpx.Client, batch_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll the batch (briefly, bounded) until it is over."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        seen = view(client, batch_id)
        if seen["status"] in OVER:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish: {seen}")


def all_results(client: httpx.Client, batch_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """Every item, following ``next_offset``."""
    items: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        response = client.get(
            f"/v1/batch/{batch_id}/results", params={"offset": offset, "limit": limit}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["data"])
        offset = page["next_offset"]
    return items


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["message"]
    return error


def slow_echo(count: int, sleep: float = 0.1) -> dict[str, Any]:
    """A batch of ``count`` echo items that take ``sleep`` seconds each (under echo's 300 ms
    timeout)."""
    return {
        "model": "echo",
        "inputs": [{"text": f"slow-{n}"} for n in range(count)],
        "parameters": {"sleep": sleep},
    }


def test_an_inline_batch_answers_what_a_synchronous_predict_answers(
    client: httpx.Client, iris_data: tuple[Any, Any], expected_labels: list[str]
) -> None:
    rows = iris_data[0][::30].tolist()
    accepted = client.post("/v1/batch/predict", json={"model": "iris", "inputs": rows})
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    batch_id = body["batch_id"]
    assert batch_id.startswith("batch_")
    assert body["object"] == "batch"
    assert body["status"] in ("queued", "in_progress")
    assert body["priority"] == "low"
    assert (body["model"], body["version"]) == ("iris", None)
    assert body["progress"]["total"] == len(rows)
    assert accepted.headers["location"] == f"/v1/batch/{batch_id}"
    assert int(accepted.headers["retry-after"]) >= 1
    assert body["links"] == {
        "self": f"/v1/batch/{batch_id}",
        "results": f"/v1/batch/{batch_id}/results",
        "cancel": f"/v1/batch/{batch_id}",
    }

    done = wait_batch(client, batch_id)
    assert done["status"] == "completed"
    progress = done["progress"]
    assert (progress["completed"], progress["failed"]) == (len(rows), 0)
    assert (progress["running"], progress["queued"]) == (0, 0)
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    assert done["estimated_completion_at"] is None
    assert "retry-after" not in client.get(f"/v1/batch/{batch_id}").headers

    sync = client.post("/v1/models/iris/predict", json={"inputs": rows})
    assert sync.status_code == 200, sync.text
    items = all_results(client, batch_id)
    assert [item["item"] for item in items] == list(range(len(rows)))
    assert {item["status"] for item in items} == {"succeeded"}
    expected = sync.json()["results"]
    assert [item["result"]["label"] for item in items] == [r["label"] for r in expected]
    assert [item["result"]["label"] for item in items] == expected_labels[::30]
    for item, one in zip(items, expected, strict=True):
        assert item["result"]["probabilities"] == pytest.approx(one["probabilities"])
    assert {item["version"] for item in items} == {sync.json()["version"]}
    assert all(item["error"] is None and item["custom_id"] is None for item in items)


def test_a_jsonl_upload_keeps_custom_ids_and_per_line_parameters(client: httpx.Client) -> None:
    lines: list[dict[str, Any]] = [
        {"custom_id": "first", "input": {"text": "a"}},
        {"custom_id": "second", "input": {"text": "b"}, "parameters": {"sleep": 0}},
        {"input": {"text": "c"}},
    ]
    body = upload(client, lines, model="echo@1.0.0", priority="normal")
    assert body["priority"] == "normal"
    assert (body["model"], body["version"]) == ("echo", "1.0.0")
    wait_batch(client, body["batch_id"])
    items = all_results(client, body["batch_id"])
    assert [item["custom_id"] for item in items] == ["first", "second", None]
    assert [item["result"] for item in items] == [{"echo": line["input"]} for line in lines]
    # the other JSONL type, with a blank line and a trailing line without newline
    content = b'{"input": {"text": "x"}}\n\n{"input": {"text": "y"}}'
    response = client.post(
        "/v1/batch/predict",
        content=content,
        params={"model": "echo"},
        headers={"Content-Type": "application/jsonl"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["progress"]["total"] == 2


def test_a_bad_item_fails_alone(client: httpx.Client) -> None:
    rows: list[Any] = [[5.1, 3.5, 1.4, 0.2], [1.0, 2.0], [6.7, 3.0, 5.2, 2.3]]
    batch = submit(client, {"model": "iris", "inputs": rows, "priority": "high"})
    done = wait_batch(client, batch["batch_id"])
    assert done["status"] == "completed"
    assert done["progress"]["completed"] == 2
    assert done["progress"]["failed"] == 1
    items = all_results(client, batch["batch_id"])
    assert [item["status"] for item in items] == ["succeeded", "failed", "succeeded"]
    bad = items[1]
    assert bad["result"] is None
    assert bad["error"]["type"] == "InvalidInput"
    assert bad["error"]["retryable"] is False
    assert all(item["result"] is not None for item in (items[0], items[2]))


def test_results_page_with_offsets_and_download_as_jsonl(client: httpx.Client) -> None:
    inputs = [{"text": f"t{n}"} for n in range(7)]
    batch_id = submit(client, {"model": "echo", "inputs": inputs})["batch_id"]
    wait_batch(client, batch_id)
    pages = []
    offset: int | None = 0
    while offset is not None:
        response = client.get(f"/v1/batch/{batch_id}/results?offset={offset}&limit=3")
        page = response.json()
        assert (page["object"], page["batch_id"], page["total"]) == ("list", batch_id, 7)
        assert (page["offset"], page["limit"]) == (offset, 3)
        pages.append(page)
        offset = page["next_offset"]
    assert [p["next_offset"] for p in pages] == [3, 6, None]
    paged = [item for page in pages for item in page["data"]]
    assert [item["result"] for item in paged] == [{"echo": i} for i in inputs]

    by_header = client.get(
        f"/v1/batch/{batch_id}/results", headers={"Accept": "application/x-ndjson"}
    )
    by_query = client.get(f"/v1/batch/{batch_id}/results?format=jsonl&limit=1")
    for response in (by_header, by_query):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert batch_id in response.headers["content-disposition"]
        lines = [orjson.loads(line) for line in response.text.splitlines()]
        assert lines == paged
    past_the_end = client.get(f"/v1/batch/{batch_id}/results?offset=50").json()
    assert (past_the_end["data"], past_the_end["next_offset"]) == ([], None)


def test_cancel_stops_the_rest_and_keeps_finished_items(client: httpx.Client) -> None:
    batch_id = submit(client, slow_echo(40))["batch_id"]
    try:
        deadline = time.monotonic() + 30
        seen = view(client, batch_id)
        while seen["progress"]["completed"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
            seen = view(client, batch_id)
        assert seen["status"] == "in_progress", seen
        eta = seen["estimated_completion_at"]
        assert eta is not None
        assert datetime.fromisoformat(eta) >= datetime.fromisoformat(seen["started_at"])
        cancelled = client.delete(f"/v1/batch/{batch_id}")
    finally:
        client.delete(f"/v1/batch/{batch_id}")
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["status"] == "cancelled"
    assert body["cancelled_at"] is not None
    assert body["estimated_completion_at"] is None
    progress = body["progress"]
    assert progress["completed"] >= 1
    assert progress["cancelled"] >= 1
    assert progress["completed"] + progress["failed"] == 40
    assert "retry-after" not in cancelled.headers
    time.sleep(0.3)  # attempts running at cancel time end, and must not count
    items = all_results(client, batch_id)
    assert view(client, batch_id)["progress"] == progress
    assert {item["status"] for item in items} == {"succeeded", "cancelled"}
    for item in items:
        assert (item["result"] is not None) == (item["status"] == "succeeded")


def test_a_low_priority_batch_yields_to_a_job_submitted_after_it(client: httpx.Client) -> None:
    # workers claim up to 8 jobs of a model at once: 64 items keep the batch busy for rounds
    batch_id = submit(client, slow_echo(64))["batch_id"]
    try:
        deadline = time.monotonic() + 30
        while view(client, batch_id)["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.02)
        job = client.post("/v1/jobs", json={"model": "echo", "inputs": [{"text": "urgent"}]})
        assert job.status_code == 202, job.text
        job_id = job.json()["job_id"]
        while time.monotonic() < deadline:
            polled = client.get(f"/v1/jobs/{job_id}").json()
            if polled["status"] not in ("queued", "running"):
                break
            time.sleep(0.02)
        assert polled["status"] == "succeeded", polled
        done = wait_batch(client, batch_id)
    finally:
        client.delete(f"/v1/batch/{batch_id}")
    assert done["status"] == "completed"
    assert polled["finished_at"] < done["finished_at"]


def test_the_same_idempotency_key_returns_the_same_batch(client: httpx.Client) -> None:
    key = f"nightly-{uuid.uuid4().hex}"
    first = submit(client, {"model": "echo", "inputs": [{"text": "a"}], "idempotency_key": key})
    again = submit(
        client,
        {"model": "echo", "inputs": [{"text": "b"}, {"text": "c"}], "idempotency_key": key},
        status=200,
    )
    assert again["batch_id"] == first["batch_id"]
    assert again["progress"]["total"] == 1
    as_file = upload(client, [{"input": {"text": "d"}}], 200, model="echo", idempotency_key=key)
    assert as_file["batch_id"] == first["batch_id"]
    assert wait_batch(client, first["batch_id"])["status"] == "completed"
    # cancelling a batch that is over changes nothing
    late = client.delete(f"/v1/batch/{first['batch_id']}")
    assert late.status_code == 200, late.text
    assert (late.json()["status"], late.json()["cancelled_at"]) == ("completed", None)


def test_metadata_is_kept_and_batches_are_listed_newest_first(client: httpx.Client) -> None:
    ids = [
        submit(client, {"model": "echo", "inputs": [{"text": "l"}], "metadata": {"n": n}})[
            "batch_id"
        ]
        for n in range(3)
    ]
    first = client.get("/v1/batch?limit=2").json()
    assert first["object"] == "list"
    assert [b["batch_id"] for b in first["data"]] == [ids[2], ids[1]]
    assert first["data"][0]["metadata"] == {"n": 2}
    assert first["has_more"] is True
    second = client.get("/v1/batch", params={"limit": 1, "before": first["next_before"]}).json()
    assert [b["batch_id"] for b in second["data"]] == [ids[0]]
    error_of(client.get("/v1/batch?limit=101"), 400)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": "iris", "inputs": []}, "no items"),
        ({"model": "iris"}, "'inputs'"),
        ({"inputs": [[1, 2, 3, 4]]}, "'model'"),
        ({"model": "iris", "inputs": [[1]], "priority": "urgent"}, "'priority'"),
        ({"model": "iris", "inputs": [[1]], "priority": 5}, "'priority'"),
        ({"model": "iris", "inputs": [[1]], "metadata": [1]}, "'metadata'"),
        ({"model": "iris", "inputs": [[1]], "parameters": 3}, "'parameters'"),
        ({"model": "iris", "inputs": [[1]], "callback_url": "http://x"}, "'callback_url'"),
        ({"model": "iris", "inputs": [[1]], "idempotency_key": ""}, "'idempotency_key'"),
    ],
)
def test_a_wrong_inline_batch_is_refused_with_400(
    client: httpx.Client, body: dict[str, Any], words: str
) -> None:
    error = error_of(client.post("/v1/batch/predict", json=body), 400)
    assert words in error["message"]


@pytest.mark.parametrize(
    ("content", "params", "words"),
    [
        (b'{"input": [1]}\n{"input": [2]\n', {"model": "iris"}, "line 2: not valid JSON"),
        (b'{"input": [1]}\n\n[1, 2]\n', {"model": "iris"}, "line 3: each line must be"),
        (b'{"inputs": [1]}\n', {"model": "iris"}, "line 1: unknown field 'inputs'"),
        (b'{"custom_id": "x"}\n', {"model": "iris"}, "line 1: 'input' is required"),
        (
            b'{"custom_id": "x", "input": 1}\n{"custom_id": "x", "input": 2}\n',
            {"model": "iris"},
            "line 2: custom_id 'x' is used twice",
        ),
        (b'{"input": 1, "parameters": []}\n', {"model": "iris"}, "line 1: 'parameters'"),
        (b"\n  \n", {"model": "iris"}, "no items"),
        (b'{"input": [1]}\n', {}, "'model' is required"),
        (b'{"input": [1]}\n', {"model": "iris", "colour": "red"}, "unknown option 'colour'"),
    ],
)
def test_a_wrong_jsonl_upload_is_refused_with_400_naming_the_line(
    client: httpx.Client, content: bytes, params: dict[str, str], words: str
) -> None:
    response = client.post("/v1/batch/predict", content=content, params=params, headers=JSONL)
    assert words in error_of(response, 400)["message"]


def test_bodies_the_route_does_not_read_are_refused_with_415(client: httpx.Client) -> None:
    plain = client.post(
        "/v1/batch/predict", content=b"hello", headers={"Content-Type": "text/plain"}
    )
    assert "application/x-ndjson" in error_of(plain, 415)["message"]
    form = client.post(
        "/v1/batch/predict", files={"file": ("in.jsonl", b'{"input": 1}\n')}, data={"model": "x"}
    )
    assert "multipart" in error_of(form, 415)["message"]


def test_unknown_batches_answer_404(client: httpx.Client) -> None:
    missing = "batch_000000000000000000000000"
    for response in (
        client.get(f"/v1/batch/{missing}"),
        client.get(f"/v1/batch/{missing}/results"),
        client.get(f"/v1/batch/{missing}/results?format=jsonl"),
        client.delete(f"/v1/batch/{missing}"),
    ):
        assert missing in error_of(response, 404)["message"]


def test_another_tenant_cannot_see_or_cancel_a_batch(server: Server, client: httpx.Client) -> None:
    idempotency_key = f"shared-{uuid.uuid4().hex}"
    body = {"model": "echo", "inputs": [{"text": "mine"}], "idempotency_key": idempotency_key}
    batch_id = submit(client, body)["batch_id"]
    key = create_key(server.home, "predict", "jobs", tenant="batch-rival", principal="eve")
    with httpx.Client(
        base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {key}"}
    ) as rival:
        for response in (
            rival.get(f"/v1/batch/{batch_id}"),
            rival.get(f"/v1/batch/{batch_id}/results"),
            rival.delete(f"/v1/batch/{batch_id}"),
        ):
            assert error_of(response, 404)["type"] == "not_found_error"
        listed = rival.get("/v1/batch").json()["data"]
        assert batch_id not in {b["batch_id"] for b in listed}
        # the same idempotency key in another tenant is another batch
        assert submit(rival, body)["batch_id"] != batch_id
    assert wait_batch(client, batch_id)["status"] == "completed"


def test_submitting_needs_the_predict_scope_and_reading_the_jobs_scope(
    server: Server,
) -> None:
    jobs_only = create_key(server.home, "jobs", tenant="batch-scopes")
    predict_only = create_key(server.home, "predict", tenant="batch-scopes")
    body = {"model": "echo", "inputs": [{"text": "x"}]}
    for key in (jobs_only, predict_only):
        response = httpx.post(
            f"{server.url}/v1/batch/predict",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        )
        assert error_of(response, 403)["type"] == "permission_error"
    listed = httpx.get(f"{server.url}/v1/batch", headers={"Authorization": f"Bearer {jobs_only}"})
    assert listed.status_code == 200, listed.text


# -- limits, on a server of its own with small ones ----------------------------------------------

LIMITS = {
    "MODELHOST_JOBS__BATCH_MAX_ITEMS": "5",
    "MODELHOST_JOBS__BATCH_MAX_BYTES": "2000",
    "MODELHOST_JOBS__WORKERS": "0",
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("batch-limits")
    started = start_server(home, home / "server.log", "--no-demo", env=LIMITS)
    yield started
    stop_server(started)


def test_a_batch_over_the_item_limit_is_refused_naming_the_count(limited: Server) -> None:
    with limited.client() as http:
        inline = http.post("/v1/batch/predict", json={"model": "m", "inputs": [1] * 6})
        assert "has 6 items" in error_of(inline, 400)["message"]
        content = b"".join(b'{"input": %d}\n' % n for n in range(7))
        jsonl = http.post(
            "/v1/batch/predict", content=content, params={"model": "m"}, headers=JSONL
        )
        assert "has 7 items" in error_of(jsonl, 400)["message"]
        assert (
            http.post("/v1/batch/predict", json={"model": "m", "inputs": [1] * 5}).status_code
            == 202
        )


def test_a_batch_over_the_byte_limit_is_refused_with_413(limited: Server) -> None:
    line = b'{"input": "%s"}\n' % (b"x" * 90)
    with limited.client() as http:
        declared = http.post(
            "/v1/batch/predict", content=line * 30, params={"model": "m"}, headers=JSONL
        )
        assert "2000 bytes" in error_of(declared, 413)["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
            for _ in range(30):
                yield line

        streamed = http.post(
            "/v1/batch/predict", content=chunks(), params={"model": "m"}, headers=JSONL
        )
        assert "2000 bytes" in error_of(streamed, 413)["message"]


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(
    limited: Server,
) -> None:
    head = (
        "POST /v1/batch/predict?model=m HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{limited.port}\r\n"
        f"Authorization: Bearer {limited.api_key}\r\n"
        "Content-Type: application/x-ndjson\r\n"
        "Content-Length: 1000000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line, answer
    body = orjson.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["type"] == "payload_too_large"
