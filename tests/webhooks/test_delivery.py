"""Delivery: the retry rule and in-process signed delivery (what drift, rollout and skew alerts
use) over real HTTP to loopback receivers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import pytest

from modelhost.observability.metrics import Metrics
from modelhost.webhooks.delivery import Retries, SignedWebhooks, WebhookOptions, envelope
from modelhost.webhooks.egress import CallbackPolicy, Egress, Outcome
from modelhost.webhooks.signing import tenant_secret
from tests.conftest import free_port
from tests.receiver import Receiver, Reply, signed_with

MASTER = b"test-master-secret"
#: Tiny backoff so retries come at once.
FAST = WebhookOptions(MASTER, tenant="ops", max_attempts=3, retry_base=0.01, retry_max=0.02)


@pytest.fixture
def receive() -> Iterator[Any]:
    """Start receivers with ``receive(replies)``; all are stopped after the test."""
    started: list[Receiver] = []

    def start(replies: list[Reply]) -> Receiver:
        started.append(Receiver(replies))
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()


class Attempts:
    """An attempt recorder that keeps them in a list."""

    def __init__(self) -> None:
        self.kept: list[dict[str, Any]] = []

    async def __call__(self, attempt: dict[str, Any]) -> None:
        self.kept.append(attempt)


def sender(
    policy: CallbackPolicy | None = None,
    options: WebhookOptions = FAST,
    metrics: Metrics | None = None,
) -> SignedWebhooks:
    allowed = policy if policy is not None else CallbackPolicy(["127.0.0.0/8"])
    return SignedWebhooks(Egress(allowed, metrics=metrics), options)


# -- the retry rule ----------------------------------------------------------------------------


def test_retries_back_off_honour_retry_after_and_stop() -> None:
    retries = Retries(max_attempts=4, base=1.0, cap=10.0)
    failed = Outcome("http_error", 500, "HTTP 500")
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0)):
        wait = retries.after(failed, attempt)
        assert wait is not None
        assert ceiling / 2 <= wait <= ceiling
    assert retries.after(failed, 4) is None  # the last attempt
    assert retries.after(Outcome("delivered", 200), 1) is None
    assert retries.after(Outcome("refused", error="no", final=True), 1) is None
    asked = Outcome("http_error", 503, "HTTP 503", retry_after=5.0)
    wait = retries.after(asked, 1)
    assert wait is not None
    assert wait >= 5.0
    assert retries.after(Outcome("http_error", 429, retry_after=99.0), 1) == 10.0  # capped
    assert retries.after(Outcome("network", error="reset"), 1) is not None


def test_the_envelope_is_type_created_at_data() -> None:
    body = orjson.loads(envelope("drift.alert", {"a": 1}, "2024-06-10T06:00:00+00:00"))
    assert body == {
        "type": "drift.alert",
        "created_at": "2024-06-10T06:00:00+00:00",
        "data": {"a": 1},
    }
    assert datetime.fromisoformat(orjson.loads(envelope("x", {}))["created_at"]).tzinfo


# -- alerts ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_alert_is_retried_after_5xx_and_delivered_signed(receive: Any) -> None:
    receiver = receive([Reply(500), Reply(502), Reply(200)])
    metrics = Metrics()
    kept = Attempts()
    delivered = await sender(metrics=metrics).deliver(
        receiver.url(), "rollout.rollback", {"model": "m"}, delivery_id="rb_1", recorder=kept
    )

    assert delivered
    assert [a["status_code"] for a in kept.kept] == [500, 502, 200]
    assert [a["error"] for a in kept.kept] == ["HTTP 500", "HTTP 502", None]
    assert [a["attempt"] for a in kept.kept] == [1, 2, 3]
    assert all(a["event"] == "rollout.rollback" and a["url"] == receiver.url() for a in kept.kept)
    assert len({r.body for r in receiver.received}) == 1  # the same bytes on every attempt
    secret = tenant_secret(MASTER, "ops")
    for n, request in enumerate(receiver.received, 1):
        assert signed_with(secret, request)
        assert request.headers["x-modelhost-delivery"] == f"rb_1:{n}"
        assert request.headers["x-modelhost-event"] == "rollout.rollback"
    labels = {"event": "rollout.rollback", "outcome": "http_error"}
    assert metrics.registry.get_sample_value("modelhost_webhook_attempts_total", labels) == 2


@pytest.mark.asyncio
async def test_an_alert_is_retried_after_connection_errors_then_given_up() -> None:
    kept = Attempts()
    url = f"http://127.0.0.1:{free_port()}/hook"
    delivered = await sender().deliver(url, "drift.alert", {}, delivery_id="d", recorder=kept)
    assert not delivered
    assert len(kept.kept) == FAST.max_attempts
    assert all(a["status_code"] is None and "ConnectError" in a["error"] for a in kept.kept)


@pytest.mark.asyncio
async def test_an_alert_waits_as_long_as_retry_after_asks(receive: Any) -> None:
    receiver = receive([Reply(503, {"Retry-After": "0.4"}), Reply(200)])
    kept = Attempts()
    patient = WebhookOptions(MASTER, max_attempts=2, retry_base=0.01, retry_max=5.0)
    assert await sender(options=patient).deliver(
        receiver.url(), "drift.alert", {}, delivery_id="d", recorder=kept
    )
    first, second = (datetime.fromisoformat(a["at"]) for a in kept.kept)
    assert (second - first).total_seconds() >= 0.4  # the backoff alone is at most 0.02 s


@pytest.mark.asyncio
async def test_an_alert_to_a_private_address_is_refused_like_a_job_callback(
    receive: Any,
) -> None:
    receiver = receive([Reply(200)])
    kept = Attempts()
    metrics = Metrics()
    strict = CallbackPolicy([])  # the default: no MODELHOST_JOBS__WEBHOOK_ALLOW
    delivered = await sender(strict, metrics=metrics).deliver(
        receiver.url(), "drift.alert", {}, delivery_id="d", recorder=kept
    )
    assert not delivered
    [attempt] = kept.kept  # given up at once: retrying cannot help
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("refused by the callback policy")
    assert "127.0.0.1" in attempt["error"]
    assert receiver.received == []
    labels = {"event": "drift.alert", "outcome": "refused"}
    assert metrics.registry.get_sample_value("modelhost_webhook_attempts_total", labels) == 1


@pytest.mark.asyncio
async def test_an_alert_does_not_follow_redirects(receive: Any) -> None:
    elsewhere = receive([Reply(200)])
    receiver = receive([Reply(302, {"Location": elsewhere.url("/stolen")})])
    kept = Attempts()
    once = WebhookOptions(MASTER, max_attempts=1)
    assert not await sender(options=once).deliver(
        receiver.url(), "drift.alert", {}, delivery_id="d", recorder=kept
    )
    [attempt] = kept.kept
    assert attempt["status_code"] == 302
    assert attempt["error"] == "redirect not followed (HTTP 302)"
    assert len(receiver.received) == 1
    assert elsewhere.received == []


@pytest.mark.asyncio
async def test_an_alert_times_out(receive: Any) -> None:
    receiver = receive([Reply(200, trickle=0.05)])  # would take seconds, byte by byte
    kept = Attempts()
    once = WebhookOptions(MASTER, max_attempts=1, timeout=0.4)
    started = time.monotonic()
    assert not await sender(options=once).deliver(
        receiver.url(), "drift.alert", {}, delivery_id="d", recorder=kept
    )
    assert time.monotonic() - started < 1.5
    [attempt] = kept.kept
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("timed out after 0.4s")
    assert attempt["duration_ms"] < 1500
