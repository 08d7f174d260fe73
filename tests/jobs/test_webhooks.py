"""Webhooks: signing, the SSRF guard, and delivery over real HTTP(S) to a loopback receiver
from a real SQLite queue."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelhost.errors import InvalidInput
from modelhost.jobs import EventKind, Job, NewJob, SqlQueue
from modelhost.jobs.webhooks import (
    CallbackPolicy,
    DeliveryOptions,
    WebhookDeliverer,
    sign,
    tenant_secret,
    verify,
)
from modelhost.registry import make_engine
from tests.conftest import free_port

MASTER = b"test-master-secret"
SECRET = tenant_secret(MASTER, "acme")
LOOPBACK = CallbackPolicy(["127.0.0.0/8"])
#: Tiny backoff so retries come at once; a short timeout so a hung receiver fails fast.
FAST = DeliveryOptions(max_attempts=3, retry_base=0.01, retry_max=0.02, timeout=2.0)


# -- signing -----------------------------------------------------------------------------------


def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"type":"job.succeeded"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, "1700000000", body) == f"sha256={expected}"


def test_verify_accepts_the_right_secret_and_refuses_everything_else() -> None:
    body, now = b'{"a":1}', 1_700_000_000.0
    stamp = str(int(now))
    good = sign(SECRET, stamp, body)
    assert verify(SECRET, stamp, body, good, now=now)
    assert verify(SECRET, stamp, body, f"sha256=deadbeef, {good}", now=now)  # secret rotation
    assert not verify(tenant_secret(MASTER, "globex"), stamp, body, good, now=now)
    assert not verify(SECRET, stamp, b'{"a":2}', good, now=now)
    assert not verify(SECRET, str(int(now) + 1), body, good, now=now)
    assert not verify(SECRET, stamp, body, good, now=now + 301)  # a replay, too late
    assert not verify(SECRET, stamp, body, good, now=now - 301)  # from the future
    assert verify(SECRET, stamp, body, good, now=now + 30, tolerance_s=60)
    assert not verify(SECRET, "soon", body, good, now=now)
    assert not verify(SECRET, stamp, body, "", now=now)


def test_tenant_secrets_differ_per_tenant_and_master() -> None:
    assert SECRET.startswith("whsec_")
    assert len(SECRET) == len("whsec_") + 64
    assert tenant_secret(MASTER, "acme") == SECRET
    assert tenant_secret(MASTER, "globex") != SECRET
    assert tenant_secret(b"another-master", "acme") != SECRET


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    options = DeliveryOptions(retry_base=1.0, retry_max=300.0)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (5, 16.0), (9, 256.0), (10, 300.0), (99, 300.0)):
        for _ in range(20):
            assert ceiling / 2 <= options.delay(attempt) <= ceiling


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


# -- a real receiver ---------------------------------------------------------------------------


@dataclass
class Reply:
    """What the receiver answers to one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    """Lower-cased names."""
    body: bytes


class Receiver:
    """A real HTTP(S) server on loopback that answers with scripted replies (the last one
    repeats) and keeps every request, and the TLS server names clients asked for."""

    def __init__(self, replies: list[Reply], tls: ssl.SSLContext | None = None) -> None:
        self.replies = replies
        self.received: list[Received] = []
        self.server_names: list[str | None] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        if tls is not None:
            tls.sni_callback = self._sni
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def _sni(self, sock: Any, name: str | None, context: Any) -> None:
        self.server_names.append(name)

    def url(self, path: str = "/hook", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def _reply(self) -> Reply:
        n = len(self.received) - 1
        return self.replies[min(n, len(self.replies) - 1)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.received.append(Received(self.command, self.path, headers, body))
                reply = receiver._reply()
                time.sleep(reply.delay)
                with contextlib.suppress(ConnectionError):  # a client that gave up waiting
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(b"ok")

            do_POST = _answer  # noqa: N815 - the names http.server dispatches to
            do_GET = _answer  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


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
    queue: SqlQueue, policy: CallbackPolicy = LOOPBACK, options: DeliveryOptions = FAST
) -> WebhookDeliverer:
    return WebhookDeliverer(queue, policy, MASTER, options, worker="tests")


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


def signed_with(secret: str, request: Received) -> bool:
    """The documented check, written out: HMAC-SHA256 over '<timestamp>.<body>'."""
    stamp = request.headers["x-modelhost-timestamp"]
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + request.body, hashlib.sha256)
    fresh = abs(time.time() - int(stamp)) <= 300
    return fresh and hmac.compare_digest(
        f"sha256={mac.hexdigest()}", request.headers["x-modelhost-signature"]
    )


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


@dataclass
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    """A self-signed certificate for ``localhost`` (not for 127.0.0.1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return Tls(server, ssl.create_default_context(cadata=pem.decode()))


@pytest.mark.asyncio
async def test_https_is_pinned_to_the_address_with_the_name_in_sni(
    queue: SqlQueue, receive: Any, tls: Tls
) -> None:
    receiver = receive([Reply(200)], tls.server)
    job = finished(queue, receiver.url(host="localhost", scheme="https"))
    options = DeliveryOptions(max_attempts=1, timeout=5.0, verify=tls.client)
    settled = await settle(deliverer(queue, CallbackPolicy(["localhost"]), options), queue, job.id)

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
    options = DeliveryOptions(max_attempts=1, timeout=5.0, verify=tls.client)
    settled = await settle(deliverer(queue, LOOPBACK, options), queue, job.id)

    assert settled.webhook is not None
    assert settled.webhook["state"] == "failed"
    [attempt] = settled.webhook["attempts"]
    assert "CERTIFICATE_VERIFY_FAILED" in attempt["error"]
    assert receiver.received == []
