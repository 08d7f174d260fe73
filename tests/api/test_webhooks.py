"""Webhooks over a real server: the secret endpoint, and a job's signed callback delivered by
the server's worker to a real receiver on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from modelhost.jobs.webhooks import tenant_secret, verify
from tests.conftest import Server, create_key, run_cli, start_server, stop_server
from tests.conftest import write_python_model as python_model
from tests.jobs.test_webhooks import Receiver, Reply

MASTER = "api-test-master-secret"
WEBHOOK_ENV = {
    "MODELHOST_JOBS__WEBHOOK_SECRET": MASTER,
    "MODELHOST_JOBS__WEBHOOK_ALLOW": json.dumps(["127.0.0.0/8"]),
    "MODELHOST_JOBS__WEBHOOK_RETRY_BASE_S": "0.05",
}


@dataclass
class Setup:
    server: Server
    acme: dict[str, str]
    globex: dict[str, str]
    predict_only: dict[str, str]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("webhooks-home")
    echo = python_model(tmp_path_factory.mktemp("webhooks-models"), "echo")
    pushed = run_cli(home, "models", "push", str(echo), "--stage", "production")
    assert pushed.returncode == 0, pushed.stderr
    acme = _bearer(create_key(home, "predict", "jobs", tenant="acme", principal="alice"))
    globex = _bearer(create_key(home, "predict", "jobs", tenant="globex", principal="bob"))
    predict_only = _bearer(create_key(home, "predict", tenant="acme", principal="carol"))
    server = start_server(home, home / "server.log", "--no-demo", env=WEBHOOK_ENV)
    yield Setup(server, acme, globex, predict_only)
    stop_server(server)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver([Reply(500), Reply(200)])
    yield started
    started.close()


def secret_of(setup: Setup, headers: dict[str, str]) -> dict[str, Any]:
    response = httpx.get(f"{setup.server.url}/v1/webhooks/secret", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def test_each_tenant_reads_its_own_signing_secret(setup: Setup) -> None:
    acme = secret_of(setup, setup.acme)
    assert acme == {
        "object": "webhook_secret",
        "tenant": "acme",
        "secret": tenant_secret(MASTER.encode(), "acme"),
        "signature_header": "X-Modelhost-Signature",
        "timestamp_header": "X-Modelhost-Timestamp",
        "algorithm": "HMAC-SHA256 over '<timestamp>.<body>'",
    }
    globex = secret_of(setup, setup.globex)
    assert globex["tenant"] == "globex"
    assert globex["secret"] == tenant_secret(MASTER.encode(), "globex")
    assert globex["secret"] != acme["secret"]
    assert secret_of(setup, setup.server.headers)["tenant"] == "system"  # the admin key


def test_the_secret_needs_a_key_with_the_jobs_scope(setup: Setup) -> None:
    url = f"{setup.server.url}/v1/webhooks/secret"
    anonymous = httpx.get(url, timeout=30)
    assert anonymous.status_code == 401, anonymous.text
    forbidden = httpx.get(url, headers=setup.predict_only, timeout=30)
    assert forbidden.status_code == 403, forbidden.text
    assert forbidden.json()["error"]["param"] == "scope"


def test_a_job_calls_back_signed_and_retried(setup: Setup, receiver: Receiver) -> None:
    with httpx.Client(base_url=setup.server.url, headers=setup.acme, timeout=60) as client:
        body = {"model": "echo", "inputs": [{"text": "hi"}], "callback_url": receiver.url()}
        accepted = client.post("/v1/jobs", json=body)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        deadline, job = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if (job.get("webhook") or {}).get("state") in ("delivered", "failed"):
                break
            time.sleep(0.1)
    assert job["status"] == "succeeded", job
    assert job["callback_url"] == receiver.url()
    assert job["webhook"]["state"] == "delivered", job
    assert [a["status_code"] for a in job["webhook"]["attempts"]] == [500, 200]

    secret = secret_of(setup, setup.acme)["secret"]
    for request in receiver.received:
        stamp = request.headers["x-modelhost-timestamp"]
        assert verify(secret, stamp, request.body, request.headers["x-modelhost-signature"])
    delivered = json.loads(receiver.received[-1].body)
    assert delivered["type"] == "job.succeeded"
    assert delivered["data"]["job_id"] == job_id
    assert delivered["data"]["result"]["results"] == [{"echo": {"text": "hi"}}]


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/hook", "http://169.254.169.254/", "ftp://93.184.216.34/"]
)
def test_a_callback_the_policy_refuses_is_a_400_at_submit(setup: Setup, url: str) -> None:
    body = {"model": "echo", "inputs": [{"text": "hi"}], "callback_url": url}
    response = httpx.post(f"{setup.server.url}/v1/jobs", json=body, headers=setup.acme, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "callback_url"
