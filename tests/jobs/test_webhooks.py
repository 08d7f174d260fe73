"""Job callbacks: delivery over real HTTP(S) to a loopback receiver from a real SQLite queue.

Signing and the SSRF guard themselves are tested in ``tests/webhooks``."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelhost.jobs import EventKind, Job, NewJob, SqlQueue
from modelhost.jobs.webhooks import (
    CallbackPolicy,
    DeliveryOptions,
    WebhookDeliverer,
    tenant_secret,
    verify,
)
from modelhost.registry import make_engine
from modelhost.webhooks.egress import Egress
from tests.conftest import free_port
from tests.receiver import Receiver as Receiver  # re-exported: other tests import them here
from tests.receiver import Reply as Reply
from tests.receiver import Tls, make_tls, signed_with

MASTER = b"test-master-secret"
SECRET = tenant_secret(MASTER, "acme")
LOOPBACK = CallbackPolicy(["127.0.0.0/8"])
#: Tiny backoff so retries come at once; a short timeout so a hung receiver fails fast.
FAST = DeliveryOptions(max_attempts=3, retry_base=0.01, retry_max=0.02, timeout=2.0)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    options = DeliveryOptions(retry_base=1.0, retry_max=300.0)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (5, 16.0), (9, 256.0), (10, 300.0), (99, 300.0)):
        for _ in range(20):
            assert ceiling / 2 <= options.delay(attempt) <= ceiling


# -- a real receiver ---------------------------------------------------------------------------


@pytest.fixture
def receive() -> Iterator[Any]:
    """Start receivers with ``receive(replies, tls=None)``; all are stopped after the test."""
    started: list[Receiver] = []

    def start(replies: list[Reply], tls: ssl.SSLContext | None = None) -> Receiver:
        started.append(Receiver(replies, tls))
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[SqlQueue]:
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    yield SqlQueue(engine)
    engine.dispose()


def finished(queue: SqlQueue, url: str, outcome: str = "succeeded") -> Job:
    """A job of tenant acme with ``url`` as its callback, run by a worker to ``outcome``."""
    job, _ = queue.enqueue(
        NewJob(tenant="acme", model="echo", inputs=[{"text": "hi"}], callback_url=url)
    )
    if outcome == "cancelled":
        assert queue.cancel("acme", job.id) is not None
        return job
    claimed = queue.claim("w1", 30)
    assert claimed is not None
    assert claimed.id == job.id
    if outcome == "failed":
        error = {"type": "RuntimeFailure", "message": "boom", "param": None, "retryable": False}
        assert queue.fail(job.id, "w1", error) is not None
    else:
        assert queue.complete(job.id, "w1", {"results": [{"echo": {"text": "hi"}}]})
    return job


def deliverer(
    queue: SqlQueue,
    policy: CallbackPolicy = LOOPBACK,
    options: DeliveryOptions = FAST,
    tls: Tls | None = None,
) -> WebhookDeliverer:
    egress = Egress(policy, verify=tls.client if tls is not None else None)
    return WebhookDeliverer(queue, egress, MASTER, options, worker="tests")


async def settle(hooks: WebhookDeliverer, queue: SqlQueue, job_id: str, limit: float = 15) -> Job:
    """Run delivery rounds until the job's callback is delivered or given up."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        await hooks.deliver_due()
        job = await asyncio.to_thread(queue.get, "acme", job_id)
        assert job is not None
        assert job.webhook is not None
        if job.webhook["state"] in ("delivered", "failed"):
            return job
        await asyncio.sleep(0.01)
    raise AssertionError(f"the callback of {job_id} did not settle in {limit}s")


# -- delivery ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_failed_attempt_is_retried_and_then_delivered(
    queue: SqlQueue, receive: Any
) -> None:
    receiver = receive([Reply(500), Reply(200)])
    job = finished(queue, receiver.url())
    settled = await settle(deliverer(queue), queue, job.id)

    assert settled.webhook is not None
    assert settled.webhook["state"] == "delivered"
    attempts = settled.webhook["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert [a["status_code"] for a in attempts] == [500, 200]
    assert attempts[0]["error"] == "HTTP 500"
    assert attempts[1]["error"] is None
    assert all(a["duration_ms"] >= 0 and datetime.fromisoformat(a["at"]) for a in attempts)

    first, second = receiver.received
    assert first.body == second.body  # the same bytes on every attempt
    for n, request in enumerate(receiver.received, 1):
        assert request.method == "POST"
        assert request.path == "/hook"
        assert signed_with(SECRET, request)
        assert not signed_with(tenant_secret(MASTER, "globex"), request)
        stamp, signature = (request.headers[f"x-modelhost-{h}"] for h in ("timestamp", "signature"))
        assert verify(SECRET, stamp, request.body, signature)
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"].startswith("modelhost/")
        assert request.headers["x-modelhost-event"] == "job.succeeded"
        assert request.headers["x-modelhost-delivery"] == f"{job.id}:{n}"
        assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    body = orjson.loads(first.body)
    assert body["type"] == "job.succeeded"
    assert body["created_at"] == body["data"]["finished_at"]
    assert body["data"]["job_id"] == job.id
    assert body["data"]["status"] == "succeeded"
    assert body["data"]["result"] == {"results": [{"echo": {"text": "hi"}}]}
    assert "webhook" not in body["data"]

    events = await asyncio.to_thread(queue.events, "acme", job.id)
    hooks = [e for e in events if e.kind is EventKind.WEBHOOK]
    assert [e.detail["state"] for e in hooks] == ["pending", "delivered"]


@pytest.mark.asyncio
async def test_a_callback_that_always_fails_is_given_up_after_max_attempts(
    queue: SqlQueue, receive: Any
) -> None:
    receiver = receive([Reply(500)])
    job = finished(queue, receiver.url(), "failed")
    settled = await settle(deliverer(queue), queue, job.id)

    assert settled.webhook is not None
    assert settled.webhook["state"] == "failed"
    assert [a["status_code"] for a in settled.webhook["attempts"]] == [500, 500, 500]
    assert len(receiver.received) == FAST.max_attempts
    assert receiver.received[0].headers["x-modelhost-event"] == "job.failed"
    assert orjson.loads(receiver.received[0].body)["data"]["error"]["message"] == "boom"
    assert await deliverer(queue).deliver_due() == 0  # nothing is due any more


@pytest.mark.asyncio
async def test_a_receiver_that_is_down_is_an_attempt_with_an_error(queue: SqlQueue) -> None:
    job = finished(queue, f"http://127.0.0.1:{free_port()}/hook", "cancelled")
    settled = await settle(deliverer(queue), queue, job.id)

    assert settled.webhook is not None
    assert settled.webhook["state"] == "failed"
    attempts = settled.webhook["attempts"]
    assert len(attempts) == FAST.max_attempts
    assert all(a["status_code"] is None and "ConnectError" in a["error"] for a in attempts)


@pytest.mark.asyncio
async def test_a_redirect_is_not_followed(queue: SqlQueue, receive: Any) -> None:
    receiver = receive([Reply(302, {"Location": "/elsewhere"})])
    job = finished(queue, receiver.url())
    once = DeliveryOptions(max_attempts=1, retry_base=0.01, timeout=2.0)
    settled = await settle(deliverer(queue, options=once), queue, job.id)

    assert settled.webhook is not None
    assert settled.webhook["state"] == "failed"
    [attempt] = settled.webhook["attempts"]
    assert attempt["status_code"] == 302
    assert "redirect not followed" in attempt["error"]
    assert [r.path for r in receiver.received] == ["/hook"]


@pytest.mark.asyncio
async def test_a_slow_receiver_times_out(queue: SqlQueue, receive: Any) -> None:
    receiver = receive([Reply(200, delay=1.0)])
    job = finished(queue, receiver.url())
    once = DeliveryOptions(max_attempts=1, timeout=0.3)
    settled = await settle(deliverer(queue, options=once), queue, job.id)

    assert settled.webhook is not None
    assert settled.webhook["state"] == "failed"
    [attempt] = settled.webhook["attempts"]
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("timed out after 0.3s")
    assert attempt["duration_ms"] < 1000


@pytest.mark.asyncio
async def test_retry_after_from_the_receiver_is_respected(queue: SqlQueue, receive: Any) -> None:
    receiver = receive([Reply(503, {"Retry-After": "1"}), Reply(204)])
    job = finished(queue, receiver.url())
    hooks = deliverer(queue, options=DeliveryOptions(retry_base=0.01, retry_max=5.0))
    assert await hooks.deliver_due() == 1
    await asyncio.sleep(0.2)  # the backoff alone (at most 0.02 s) would be over by now
    assert await hooks.deliver_due() == 0
    settled = await settle(hooks, queue, job.id)
    assert settled.webhook is not None
    assert settled.webhook["state"] == "delivered"
    assert [a["status_code"] for a in settled.webhook["attempts"]] == [503, 204]


@pytest.mark.asyncio
async def test_a_url_the_policy_now_refuses_is_given_up_at_once(
    queue: SqlQueue, receive: Any
) -> None:
    receiver = receive([Reply(200)])
    job = finished(queue, receiver.url())  # stored as if it had passed another policy
    settled = await settle(deliverer(queue, policy=CallbackPolicy([])), queue, job.id)

    assert settled.webhook is not None
    assert settled.webhook["state"] == "failed"
    [attempt] = settled.webhook["attempts"]
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("refused by the callback policy")
    assert receiver.received == []


@pytest.mark.asyncio
async def test_run_delivers_until_stopped(queue: SqlQueue, receive: Any) -> None:
    receiver = receive([Reply(200)])
    jobs = [finished(queue, receiver.url(f"/hook/{n}")) for n in range(3)]
    stop = asyncio.Event()
    task = asyncio.create_task(deliverer(queue).run(stop, 0.02))
    deadline = time.monotonic() + 10
    while len(receiver.received) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    for job in jobs:
        stored = await asyncio.to_thread(queue.get, "acme", job.id)
        assert stored is not None
        assert stored.webhook is not None
        assert stored.webhook["state"] == "delivered"
    assert sorted(r.path for r in receiver.received) == ["/hook/0", "/hook/1", "/hook/2"]


# -- https: the connection is pinned to the checked address, the name still verified -----------


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    """A self-signed certificate for ``localhost`` (not for 127.0.0.1)."""
    return make_tls(tmp_path)


@pytest.mark.asyncio
async def test_https_is_pinned_to_the_address_with_the_name_in_sni(
    queue: SqlQueue, receive: Any, tls: Tls
) -> None:
    receiver = receive([Reply(200)], tls.server)
    job = finished(queue, receiver.url(host="localhost", scheme="https"))
    options = DeliveryOptions(max_attempts=1, timeout=5.0)
    hooks = deliverer(queue, CallbackPolicy(["localhost"]), options, tls)
    settled = await settle(hooks, queue, job.id)

    assert settled.webhook is not None
    assert settled.webhook["state"] == "delivered"
    assert receiver.server_names == ["localhost"]
    [request] = receiver.received
    assert request.headers["host"] == f"localhost:{receiver.port}"
    assert signed_with(SECRET, request)


@pytest.mark.asyncio
async def test_https_still_checks_the_certificate_against_the_url_host(
    queue: SqlQueue, receive: Any, tls: Tls
) -> None:
    receiver = receive([Reply(200)], tls.server)
    job = finished(queue, receiver.url(host="127.0.0.1", scheme="https"))  # cert is for localhost
    options = DeliveryOptions(max_attempts=1, timeout=5.0)
    settled = await settle(deliverer(queue, LOOPBACK, options, tls), queue, job.id)

    assert settled.webhook is not None
    assert settled.webhook["state"] == "failed"
    [attempt] = settled.webhook["attempts"]
    assert "CERTIFICATE_VERIFY_FAILED" in attempt["error"]
    assert receiver.received == []
