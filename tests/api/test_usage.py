"""``GET /v1/usage`` and ``usage.cost`` in responses, on a real server with keys of two tenants
and a priced model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import (
    Server,
    create_key,
    run_cli,
    start_server,
    stop_server,
    write_python_model,
)

PRICING = {"input": 1.0, "unit": "1k_tokens", "per_request": 0.01, "currency": "EUR"}
ONE = {"inputs": [{"text": "hi"}]}


@dataclass
class Tenants:
    """The server and a client per principal: ann and bob of acme, cy of beta, and the
    system admin."""

    server: Server
    keys: dict[str, str]

    def client(self, who: str) -> httpx.Client:
        key = self.server.api_key if who == "admin" else self.keys[who]
        return httpx.Client(
            base_url=self.server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def usage(self, who: str, **params: Any) -> httpx.Response:
        with self.client(who) as client:
            return client.get("/v1/usage", params=params)


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    home = tmp_path_factory.mktemp("usage")
    for directory in (
        write_python_model(home / "src", "priced", pricing=PRICING),
        write_python_model(home / "src", "free"),
    ):
        result = run_cli(home, "models", "push", str(directory), "--stage", "production")
        assert result.returncode == 0, result.stderr
    keys = {
        "ann": create_key(home, "predict", "jobs", tenant="acme", principal="ann"),
        "bob": create_key(home, "predict", tenant="acme", principal="bob"),
        "cy": create_key(home, "predict", tenant="beta", principal="cy"),
    }
    env = {"MODELHOST_USAGE__FLUSH_INTERVAL_S": "60"}  # a report flushes first anyway
    server = start_server(home, home / "server.log", "--no-demo", env=env)
    found = Tenants(server, keys)
    traffic(found)
    yield found
    stop_server(server)


def traffic(tenants: Tenants) -> None:
    """ann: 2 priced calls (one of 2 inputs) and a free one; bob: 1 priced call and 1 invalid;
    cy: 1 priced call; and a job of ann's."""
    with tenants.client("ann") as ann:
        assert ann.post("/v1/models/priced/predict", json=ONE).status_code == 200
        two = {"inputs": [{"text": "a"}, {"text": "b"}]}
        assert ann.post("/v1/models/priced/predict", json=two).status_code == 200
        assert ann.post("/v1/models/free/predict", json=ONE).status_code == 200
        job = ann.post("/v1/jobs", json={"model": "priced", **ONE}).json()
        deadline = time.monotonic() + 60
        while ann.get(f"/v1/jobs/{job['job_id']}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    with tenants.client("bob") as bob:
        assert bob.post("/v1/models/priced/predict", json=ONE).status_code == 200
        bad = bob.post("/v1/models/priced/predict", json={"inputs": [{"text": 1}]})
        assert bad.status_code == 400
    with tenants.client("cy") as cy:
        assert cy.post("/v1/models/priced/predict", json=ONE).status_code == 200


def lines_by(body: dict[str, Any], *keys: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {tuple(line[k] for k in keys): line for line in body["data"]}


def test_a_priced_answer_carries_its_cost(tenants: Tenants) -> None:
    with tenants.client("cy") as cy:
        priced = cy.post("/v1/models/priced/predict", json=ONE).json()
        free = cy.post("/v1/models/free/predict", json=ONE).json()
    assert priced["usage"] == {
        "input_tokens": 1,
        "output_tokens": 0,
        "total_tokens": 1,
        "cost": pytest.approx(1.0 / 1000 + 0.01),
        "currency": "EUR",
    }
    assert "cost" not in free["usage"]


def test_a_caller_sees_its_own_tenant_by_principal(tenants: Tenants) -> None:
    answer = tenants.usage("bob", group_by="principal,model")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["tenant"] == "acme"
    assert body["group_by"] == ["principal", "model"]
    lines = lines_by(body, "principal", "model", "currency")
    ann = lines[("ann", "priced", "EUR")]
    assert (ann["requests"], ann["errors"], ann["input_tokens"]) == (3, 0, 4)
    assert ann["cost"] == pytest.approx(3 * 0.01 + 4 / 1000)
    assert ann["compute_seconds"] > 0
    assert lines[("ann", "free", None)]["cost"] == 0
    bob_ok = lines[("bob", "priced", "EUR")]
    assert (bob_ok["requests"], bob_ok["cost"]) == (1, pytest.approx(0.011))
    bob_failed = lines[("bob", "priced", None)]
    assert (bob_failed["requests"], bob_failed["errors"]) == (1, 1)
    assert all(principal != "cy" for principal, _, _ in lines)
    (eur,) = [t for t in body["totals"] if t["currency"] == "EUR"]
    assert eur["requests"] == 4
    assert eur["cost"] == pytest.approx(4 * 0.01 + 5 / 1000)


def test_another_tenant_is_refused_and_bad_queries_are_400(tenants: Tenants) -> None:
    refused = tenants.usage("ann", tenant="beta")
    assert refused.status_code == 403
    assert refused.json()["error"]["param"] == "tenant"
    assert tenants.usage("ann", tenant="acme").status_code == 200
    for params, param in (
        ({"group_by": "color"}, "group_by"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"}, "since"),
    ):
        answer = tenants.usage("ann", **params)
        assert answer.status_code == 400, params
        assert answer.json()["error"]["param"] == param


def test_a_system_admin_sees_every_tenant_and_may_pick_one(tenants: Tenants) -> None:
    every = tenants.usage("admin", group_by="tenant").json()
    assert every["tenant"] is None
    by_tenant = lines_by(every, "tenant", "currency")
    assert by_tenant[("acme", "EUR")]["requests"] == 4
    assert by_tenant[("beta", "EUR")]["requests"] >= 1
    beta = tenants.usage("admin", tenant="beta", group_by="version").json()
    assert {(line["model"], line["version"]) for line in beta["data"]} <= {
        ("priced", "1.0.0"),
        ("free", "1.0.0"),
    }
    assert beta["tenant"] == "beta"


def test_the_window_and_filters_narrow_the_report(tenants: Tenants) -> None:
    later = tenants.usage("ann", since=time.time() + 7200, until=time.time() + 9000).json()
    assert later["data"] == []
    assert later["totals"] == []
    only = tenants.usage("ann", model="free", principal="ann", group_by="principal").json()
    ((line),) = only["data"]
    assert (line["principal"], line["requests"]) == ("ann", 1)
    iso = tenants.usage("ann", since="2000-01-01T00:00:00", until="2000-01-02").json()
    assert (iso["since"], iso["until"]) == ("2000-01-01T00:00:00Z", "2000-01-02T00:00:00Z")


@pytest.mark.llm
def test_the_openai_sdk_sees_the_cost_of_a_chat_and_of_a_stream(server: Server) -> None:
    """On the session server: gemma-270m is priced per 1k input and output tokens."""
    from openai import OpenAI

    with OpenAI(
        base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120
    ) as sdk:
        hello: Any = [{"role": "user", "content": "Name a colour."}]
        reply = sdk.chat.completions.create(model="gemma-270m", messages=hello, max_tokens=3)
        assert reply.usage is not None
        expected = reply.usage.prompt_tokens * 0.0001 + reply.usage.completion_tokens * 0.0002
        assert reply.usage.model_extra == {
            "cost": pytest.approx(expected / 1000),
            "currency": "USD",
        }
        stream = sdk.chat.completions.create(
            model="gemma-270m",
            messages=hello,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    (last,) = usage
    assert last.model_extra is not None
    assert last.model_extra["cost"] == pytest.approx(
        (last.prompt_tokens * 0.0001 + last.completion_tokens * 0.0002) / 1000
    )
