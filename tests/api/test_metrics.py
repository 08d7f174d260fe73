"""``GET /metrics`` of the real session server: the whole exposition parses with
prometheus_client's own parser, and tokens, cost, job and model-state metrics move with
traffic."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelhost.observability import Metrics

#: Every family modelhost publishes, with its type.
FAMILIES = {
    "modelhost_requests": "counter",
    "modelhost_request_duration_seconds": "histogram",
    "modelhost_inference_duration_seconds": "histogram",
    "modelhost_batch_size": "histogram",
    "modelhost_tokens": "counter",
    "modelhost_cost": "counter",
    "modelhost_job_queue_wait_seconds": "histogram",
    "modelhost_job_latency_seconds": "histogram",
    "modelhost_jobs": "gauge",
    "modelhost_model_versions": "gauge",
    "modelhost_model_state": "gauge",
    "modelhost_drift_score": "gauge",
}


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, parsed by prometheus_client, by name and labels."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def run_job(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    submitted = client.post("/v1/jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{submitted.json()['job_id']}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError("the job did not finish")


def test_the_whole_exposition_parses_and_moves_with_traffic(client: httpx.Client) -> None:
    scrape = client.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"] == Metrics.content_type
    before = parse(scrape.text)

    embedded = client.post("/v1/embeddings", json={"model": "minilm", "input": ["hello world"]})
    assert embedded.status_code == 200, embedded.text
    usage = embedded.json()["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["cost"] == pytest.approx(usage["prompt_tokens"] * 0.00002 / 1000)
    assert usage["currency"] == "USD"
    predicted = client.post("/v1/models/minilm/predict", json={"inputs": ["a short text"]})
    assert predicted.json()["usage"]["cost"] > 0
    job = run_job(client, {"model": "echo", "inputs": [{"text": "hi"}]})
    assert job["status"] == "succeeded"

    text = client.get("/metrics").text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert FAMILIES.items() <= families.items()
    after = parse(text)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    minilm = {"model": "minilm", "version": "1.0.0"}
    tokens = usage["prompt_tokens"] + predicted.json()["usage"]["input_tokens"]
    assert delta("modelhost_tokens_total", **minilm, kind="input") == tokens
    cost = delta("modelhost_cost_total", **minilm, currency="USD")
    assert cost == pytest.approx(tokens * 0.00002 / 1000)
    echo = {"model": "echo", "version": "1.0.0"}
    assert delta("modelhost_job_queue_wait_seconds_count", **echo) == 1
    assert delta("modelhost_job_latency_seconds_count", **echo, outcome="ok") == 1
    assert delta("modelhost_requests_total", **echo, protocol="jobs", outcome="ok") == 1
    # the queue depth is published for both unfinished states, read from the job store
    statuses = {dict(ls).get("status") for n, ls in after if n == "modelhost_jobs"}
    assert {"queued", "running"} <= statuses
    assert total(after, "modelhost_model_state", **minilm, state="ready") == 1
    assert total(after, "modelhost_model_state", model="broken", state="failed") == 1
