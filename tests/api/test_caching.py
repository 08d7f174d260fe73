"""The exact response cache on the session server: X-Cache on every protocol, no-cache,
tenants kept apart, sampled generations never cached."""

from __future__ import annotations

import random
from typing import Any

import httpx

from tests.conftest import Server, create_key


def _flower() -> list[float]:
    """A flower no other test sends (so the first call is a miss)."""
    return [round(random.uniform(4.5, 7.5), 6), 3.0, round(random.uniform(1.0, 6.0), 6), 1.1]


def _predict(client: httpx.Client, row: list[float], **headers: str) -> httpx.Response:
    response = client.post("/v1/models/iris/predict", json={"inputs": [row]}, headers=headers)
    assert response.status_code == 200, response.text
    return response


def test_a_repeated_prediction_is_a_hit_with_the_same_answer(client: httpx.Client) -> None:
    row = _flower()
    first, second = _predict(client, row), _predict(client, row)
    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit"
    assert second.json()["results"] == first.json()["results"]
    assert second.json()["id"] != first.json()["id"]
    usage, original = second.json()["usage"], first.json()["usage"]
    assert usage["input_tokens"] == original["input_tokens"]
    if "cost" in original:  # priced: the hit costs nothing and says what it saved
        assert usage["cost"] == 0
        assert usage["cost_saved"] == original["cost"]
    fresh = _predict(client, row, **{"Cache-Control": "no-cache"})
    assert fresh.headers["x-cache"] == "bypass"
    assert fresh.json()["results"] == first.json()["results"]


def test_a_pinned_version_has_its_own_entries(client: httpx.Client) -> None:
    row = _flower()
    assert _predict(client, row).headers["x-cache"] == "miss"
    pinned = client.post("/v1/models/iris@1.1.0/predict", json={"inputs": [row]})
    assert pinned.headers["x-model-version"] == "1.1.0"
    assert pinned.headers["x-cache"] == "miss"


def test_tenants_never_share_an_answer(server: Server) -> None:
    row = _flower()
    keys = [create_key(server.home, "predict", tenant=t, principal="app") for t in ("ta", "tb")]
    seen = []
    for key in keys:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as c:
            seen.append(_predict(c, row).headers["x-cache"])
            seen.append(_predict(c, row).headers["x-cache"])
    assert seen == ["miss", "hit", "miss", "hit"]


def test_the_v2_and_openai_protocols_say_what_the_cache_did(client: httpx.Client) -> None:
    row = _flower()
    body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [row]}]}
    states = [client.post("/v2/models/iris/infer", json=body).headers["x-cache"] for _ in "ab"]
    assert states == ["miss", "hit"]
    text = f"cache probe {random.random()}"
    embedded = [
        client.post("/v1/embeddings", json={"model": "minilm", "input": text}) for _ in "ab"
    ]
    assert [e.headers["x-cache"] for e in embedded] == ["miss", "hit"]
    vectors = [e.json()["data"][0]["embedding"] for e in embedded]
    assert vectors[0] == vectors[1]


def _complete(client: httpx.Client, prompt: str, temperature: float) -> httpx.Response:
    body: dict[str, Any] = {
        "model": "gemma-270m",
        "prompt": prompt,
        "max_tokens": 3,
        "temperature": temperature,
    }
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response


def test_sampled_generations_are_never_cached_and_greedy_ones_are(client: httpx.Client) -> None:
    prompt = f"The capital of France is {random.randint(0, 10**6)}"
    sampled = [_complete(client, prompt, 0.7).headers["x-cache"] for _ in "ab"]
    assert sampled == ["bypass", "bypass"]
    greedy = [_complete(client, prompt, 0.0) for _ in "ab"]
    assert [g.headers["x-cache"] for g in greedy] == ["miss", "hit"]
    assert greedy[0].json()["choices"][0]["text"] == greedy[1].json()["choices"][0]["text"]


def test_cache_outcomes_are_metrics(client: httpx.Client) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    row = _flower()
    _predict(client, row)
    _predict(client, row)
    text = client.get("/metrics").text
    samples = {
        (s.labels.get("model"), s.labels.get("outcome")): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "modelhost_cache_requests"
        for s in family.samples
        if s.name == "modelhost_cache_requests_total"
    }
    assert samples[("iris", "hit")] >= 1
    assert samples[("iris", "miss")] >= 1
