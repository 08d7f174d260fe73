"""``modelhost usage``: the real command against the session server."""

from __future__ import annotations

import json
from datetime import datetime

import httpx

from modelhost.cli.usage import when
from tests.conftest import Server, run_cli


def test_relative_times_become_iso_and_others_pass_through() -> None:
    now = datetime.fromisoformat("2025-06-08T12:00:00+00:00").timestamp()
    assert when("7d", now) == "2025-06-01T12:00:00Z"
    assert when("90m", now) == "2025-06-08T10:30:00Z"
    assert when("2025-01-01", now) == "2025-01-01"
    assert when("1700000000", now) == "1700000000"
    assert when(None, now) is None


def test_usage_prints_a_table_per_model_and_the_json(server: Server, client: httpx.Client) -> None:
    response = client.post("/v1/models/minilm/predict", json={"inputs": ["usage from the cli"]})
    assert response.status_code == 200, response.text
    remote = ("--url", server.url, "--api-key", server.api_key)
    shown = run_cli(server.home, "usage", "--since", "1h", "--group-by", "tenant,model", *remote)
    assert shown.returncode == 0, shown.stderr
    rows = [line.split() for line in shown.stdout.splitlines() if "minilm" in line]
    # other tests may have called minilm too (failed calls have no currency): find ours
    assert any("system" in row and "USD" in row for row in rows), shown.stdout
    assert "total" in shown.stdout
    raw = run_cli(server.home, "usage", "--model", "minilm", "--json", *remote)
    assert raw.returncode == 0, raw.stderr
    body = json.loads(raw.stdout)
    (line,) = [line for line in body["data"] if line["currency"] == "USD"]
    assert line["model"] == "minilm"
    assert line["cost"] > 0
    assert line["input_tokens"] > 0


def test_an_empty_window_and_a_bad_key_fail_with_a_message(server: Server) -> None:
    remote = ("--url", server.url, "--api-key", server.api_key)
    empty = run_cli(server.home, "usage", "--since", "2000-01-01", "--until", "2000-01-02", *remote)
    assert empty.returncode == 1
    assert "no usage from 2000-01-01T00:00:00Z" in empty.stderr
    refused = run_cli(server.home, "usage", "--url", server.url, "--api-key", "mhk_x_y")
    assert refused.returncode == 1
    assert "401" in refused.stderr
