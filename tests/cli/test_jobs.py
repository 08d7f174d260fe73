"""``modelhost jobs …`` and ``modelhost batch …``: the real command against the session server."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, run_cli, start_server, stop_server

#: The idle server runs no jobs.
IDLE = {"MODELHOST_JOBS__WORKERS": "0"}
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def remote(server: Server) -> tuple[str, ...]:
    return ("--url", server.url, "--api-key", server.api_key)


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def batch_id_in(text: str) -> str:
    found = re.search(r"batch_[0-9a-f]{24}", text)
    assert found, text
    return found.group(0)


def test_batch_submit_wait_follows_to_completion_and_results_download(
    server: Server, tmp_path: Path
) -> None:
    lines = [{"custom_id": f"row-{n}", "input": row} for n, row in enumerate(ROWS)]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    submitted = run_cli(
        server.home, "batch", "submit", str(source), "--model", "iris", "--wait", *remote(server)
    )
    assert submitted.returncode == 0, submitted.stderr
    assert "submitted batch_" in submitted.stdout
    assert "3 items on iris, priority low" in submitted.stdout
    assert "completed" in submitted.stdout
    assert "3 succeeded, 0 failed" in submitted.stdout
    batch_id = batch_id_in(submitted.stdout)

    target = tmp_path / "out.jsonl"
    written = run_cli(
        server.home, "batch", "results", batch_id, "--output", str(target), *remote(server)
    )
    assert written.returncode == 0, written.stderr
    assert f"wrote 3 results to {target}" in written.stderr
    results = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == ["row-0", "row-1", "row-2"]
    assert [r["status"] for r in results] == ["succeeded"] * 3
    assert [r["result"]["label"] for r in results] == ["setosa", "virginica", "versicolor"]
    assert not (tmp_path / "out.jsonl.part").exists()

    to_stdout = run_cli(server.home, "batch", "results", batch_id, *remote(server))
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert [json.loads(line) for line in to_stdout.stdout.splitlines()] == results

    shown = run_cli(server.home, "batch", "show", batch_id, *remote(server))
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert (view["batch_id"], view["status"]) == (batch_id, "completed")
    assert view["progress"]["completed"] == 3

    listed = run_cli(server.home, "batch", "list", "--limit", "5", *remote(server))
    assert listed.returncode == 0, listed.stderr
    assert batch_id in listed.stdout
    assert "3/3" in listed.stdout


def test_batch_submit_wait_exits_1_when_an_item_fails(server: Server, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"input": ROWS[0]}, {"input": [1.0]}])
    submitted = run_cli(
        server.home,
        "batch",
        "submit",
        str(source),
        "--model",
        "iris",
        "--priority",
        "high",
        "--wait",
        *remote(server),
    )
    assert submitted.returncode == 1, submitted.stdout
    assert "priority high" in submitted.stdout
    assert "1 succeeded, 1 failed" in submitted.stdout
    assert "modelhost batch results" in submitted.stderr


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that runs no jobs: what is submitted stays queued until cancelled."""
    home = tmp_path_factory.mktemp("cli-idle")
    started = start_server(home, home / "server.log", "--no-demo", env=IDLE)
    yield started
    stop_server(started)


def test_batch_cancel_and_jobs_cancel_stop_queued_work(idle: Server, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"input": {"text": f"c{n}"}} for n in range(3)])
    submitted = run_cli(idle.home, "batch", "submit", str(source), "--model", "echo", *remote(idle))
    assert submitted.returncode == 0, submitted.stderr
    batch_id = batch_id_in(submitted.stdout)
    cancelled = run_cli(idle.home, "batch", "cancel", batch_id, *remote(idle))
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"batch {batch_id} cancelled: 0 succeeded (kept), 3 cancelled" in cancelled.stdout

    with idle.client() as http:
        accepted = http.post("/v1/jobs", json={"model": "echo", "inputs": [{"text": "x"}]})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        stopped = run_cli(idle.home, "jobs", "cancel", job_id, *remote(idle))
        assert stopped.returncode == 0, stopped.stderr
        assert f"job {job_id}: cancelled" in stopped.stdout
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_jobs_list_show_and_cancel(
    server: Server, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted = client.post("/v1/jobs", json={"model": "echo", "inputs": [{"text": "cli"}]})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{job_id}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # the server and the key from the environment this time
    monkeypatch.setenv("MODELHOST_URL", server.url)
    monkeypatch.setenv("MODELHOST_API_KEY", server.api_key)

    listed = run_cli(server.home, "jobs", "list", "--model", "echo", "--status", "succeeded")
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout

    shown = run_cli(server.home, "jobs", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    job = json.loads(shown.stdout)
    assert job["status"] == "succeeded"
    assert job["result"]["results"] == [{"echo": {"text": "cli"}}]

    cancelled = run_cli(server.home, "jobs", "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"job {job_id}: succeeded" in cancelled.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("jobs", "show", "job_000000000000000000000000"), "404 not_found_error: no job"),
        (("batch", "show", "batch_000000000000000000000000"), "404 not_found_error: no batch"),
        (("batch", "cancel", "batch_000000000000000000000000"), "no batch"),
        (("batch", "results", "batch_000000000000000000000000"), "no batch"),
        (("jobs", "list", "--status", "sleeping"), "400 invalid_request_error: 'status'"),
        (("batch", "submit", "/nonexistent.jsonl", "--model", "iris"), "no file"),
    ],
)
def test_errors_print_the_server_message_and_exit_1(
    server: Server, args: tuple[str, ...], words: str
) -> None:
    result = run_cli(server.home, *args, *remote(server))
    assert result.returncode == 1, result.stdout
    assert words in result.stderr


def test_a_bad_key_and_an_unreachable_server_exit_1(server: Server) -> None:
    refused = run_cli(server.home, "batch", "list", "--url", server.url, "--api-key", "mhk_nope")
    assert refused.returncode == 1
    assert "401" in refused.stderr
    unreachable = run_cli(server.home, "jobs", "list", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 1
    assert "cannot reach http://127.0.0.1:9" in unreachable.stderr
