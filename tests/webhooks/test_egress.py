"""Egress: the SSRF guard, and single POSTs over real HTTP to loopback receivers (pinned
connections, no redirects, one deadline per attempt, metrics)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from modelhost.errors import InvalidInput
from modelhost.observability.metrics import Metrics
from modelhost.webhooks.egress import CallbackPolicy, Egress
from tests.conftest import free_port
from tests.receiver import Receiver, Reply

LOOPBACK = CallbackPolicy(["127.0.0.0/8"])
BODY = b'{"type":"test.event"}'
HEADERS = {"Content-Type": "application/json", "X-Modelhost-Event": "test.event"}


# -- the SSRF guard ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.20/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://240.0.0.1/hook",
        "http://[fe80::1]/hook",
        "http://[fc00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://[2002:a00:1::]/hook",  # 6to4 of 10.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of 169.254.169.254
        "http://localhost/hook",
        "http://LOCALHOST./hook",
        "http://2130706433/hook",  # 127.0.0.1 as one number, which resolvers accept
        "ftp://93.184.216.34/hook",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://user:pass@93.184.216.34/hook",
        "http://:secret@93.184.216.34/hook",
        "http:///hook",
        "http://no-such-host.invalid/hook",
        "http://a..b/hook",
        "http://" + "a" * 64 + ".example.com/hook",
        "http://[fe80::1%25eth0]/hook",
        "http://127.1/hook",
        "http://93.184.216.34/" + "a" * 2048,
    ],
)
def test_the_policy_refuses(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        CallbackPolicy([]).check(url)
    assert caught.value.param == "callback_url"


def test_a_public_literal_address_passes_without_dns() -> None:
    policy = CallbackPolicy([])
    policy.check("https://93.184.216.34/hooks/modelhost?x=1")
    assert policy.resolve("http://93.184.216.34:8080/") == ["93.184.216.34"]
    assert policy.resolve("http://[2606:2800:220:1:248:1893:25c8:1946]/") == [
        "2606:2800:220:1:248:1893:25c8:1946"
    ]


def test_the_allow_list_admits_networks_and_host_names() -> None:
    by_network = CallbackPolicy(["127.0.0.0/8", " ", "10.9.0.0/16"])
    by_network.check("http://127.0.0.1:9000/hook")
    by_network.check("http://localhost:9000/hook")  # resolves into the allowed network
    by_network.check("http://[::ffff:127.0.0.2]/hook")
    by_network.check("http://10.9.8.7/hook")
    with pytest.raises(InvalidInput):
        by_network.check("http://10.8.0.1/hook")
    by_name = CallbackPolicy(["LocalHost"])
    by_name.check("http://localhost:9000/hook")
    assert by_name.resolve("http://localhost/") == ["127.0.0.1"]
    with pytest.raises(InvalidInput):
        by_name.check("http://127.0.0.1/hook")  # the name is allowed, not its address


def test_resolve_tells_a_refusal_from_a_name_that_does_not_resolve() -> None:
    with pytest.raises(InvalidInput):
        CallbackPolicy([]).resolve("http://10.0.0.1/")
    with pytest.raises(socket.gaierror):
        CallbackPolicy([]).resolve("http://no-such-host.invalid/")


# -- one POST ----------------------------------------------------------------------------------


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


def attempts(metrics: Metrics, outcome: str, event: str = "test.event") -> float:
    labels = {"event": event, "outcome": outcome}
    return metrics.registry.get_sample_value("modelhost_webhook_attempts_total", labels) or 0.0


@pytest.mark.asyncio
async def test_a_post_is_pinned_to_a_checked_address_and_keeps_its_host(receive: Any) -> None:
    receiver = receive([Reply(204)])
    metrics = Metrics()
    egress = Egress(LOOPBACK, metrics=metrics)
    url = receiver.url("/in?x=1", host="localhost")  # resolves into the allowed network
    outcome = await egress.post(url, BODY, HEADERS, timeout=5, event="test.event")

    assert outcome.delivered
    assert (outcome.kind, outcome.status_code, outcome.error) == ("delivered", 204, None)
    [request] = receiver.received
    assert request.path == "/in?x=1"
    assert request.body == BODY
    assert request.headers["host"] == f"localhost:{receiver.port}"
    assert request.headers["x-modelhost-event"] == "test.event"
    assert attempts(metrics, "delivered") == 1


@pytest.mark.asyncio
async def test_a_private_address_is_refused_before_any_connection(receive: Any) -> None:
    receiver = receive([Reply(200)])
    metrics = Metrics()
    egress = Egress(CallbackPolicy([]), metrics=metrics)
    for host in ("127.0.0.1", "localhost"):
        outcome = await egress.post(
            receiver.url(host=host), BODY, HEADERS, timeout=5, event="test.event"
        )
        assert outcome.kind == "refused"
        assert outcome.final
        assert outcome.status_code is None
        assert outcome.error is not None
        assert outcome.error.startswith("refused by the callback policy")
        assert "not a public address" in outcome.error
    assert receiver.received == []
    assert attempts(metrics, "refused") == 2


@pytest.mark.asyncio
async def test_a_redirect_is_not_followed(receive: Any) -> None:
    target = receive([Reply(200)])
    receiver = receive([Reply(307, {"Location": target.url("/elsewhere")})])
    metrics = Metrics()
    outcome = await Egress(LOOPBACK, metrics=metrics).post(
        receiver.url(), BODY, HEADERS, timeout=5, event="test.event"
    )
    assert (outcome.kind, outcome.status_code) == ("redirect", 307)
    assert outcome.error == "redirect not followed (HTTP 307)"
    assert not outcome.final  # a misconfigured receiver may be fixed: retried
    assert target.received == []
    assert attempts(metrics, "redirect") == 1


@pytest.mark.asyncio
async def test_one_deadline_covers_a_receiver_that_trickles_its_answer(receive: Any) -> None:
    receiver = receive([Reply(200, trickle=0.05)])  # every read gets a byte within 0.05 s
    metrics = Metrics()
    started = time.monotonic()
    outcome = await Egress(LOOPBACK, metrics=metrics).post(
        receiver.url(), BODY, HEADERS, timeout=0.5, event="test.event"
    )
    assert time.monotonic() - started < 1.5
    assert outcome.kind == "timeout"
    assert outcome.status_code is None
    assert outcome.error is not None
    assert outcome.error.startswith("timed out after 0.5s")
    assert attempts(metrics, "timeout") == 1


@pytest.mark.asyncio
async def test_an_error_answer_carries_retry_after(receive: Any) -> None:
    receiver = receive([Reply(503, {"Retry-After": "7"})])
    outcome = await Egress(LOOPBACK).post(
        receiver.url(), BODY, HEADERS, timeout=5, event="test.event"
    )
    assert (outcome.kind, outcome.status_code, outcome.error) == ("http_error", 503, "HTTP 503")
    assert outcome.retry_after == 7.0
    assert not outcome.final


@pytest.mark.asyncio
async def test_a_closed_port_is_a_network_failure() -> None:
    metrics = Metrics()
    outcome = await Egress(LOOPBACK, metrics=metrics).post(
        f"http://127.0.0.1:{free_port()}/hook", BODY, HEADERS, timeout=5, event="test.event"
    )
    assert outcome.kind == "network"
    assert outcome.error is not None
    assert "ConnectError" in outcome.error
    assert attempts(metrics, "network") == 1
