"""A real HTTP(S) webhook receiver on loopback for tests, and a self-signed TLS pair.

``Receiver(replies)`` answers each request with the next scripted :class:`Reply` (the last one
repeats) and keeps what it received; ``make_tls(directory)`` makes a certificate for
``localhost`` (not for 127.0.0.1) with the client context that trusts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Reply:
    """What the receiver answers to one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    trickle: float = 0.0
    """Seconds between single bytes of the status line and headers: each read of the client
    gets data well within a per-read timeout, only a deadline on the whole exchange ends it."""


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    """Lower-cased names."""
    body: bytes


def _raw(reply: Reply) -> bytes:
    lines = [f"HTTP/1.1 {reply.status} Scripted"]
    lines += [f"{name}: {value}" for name, value in reply.headers.items()]
    lines += ["Content-Length: 2", "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + b"ok"


class Receiver:
    """A real HTTP(S) server on loopback that answers with scripted replies (the last one
    repeats) and keeps every request, and the TLS server names clients asked for."""

    def __init__(self, replies: list[Reply], tls: ssl.SSLContext | None = None) -> None:
        self.replies = replies
        self.received: list[Received] = []
        self.server_names: list[str | None] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
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
                with contextlib.suppress(ConnectionError, ssl.SSLError):  # a client gave up
                    if reply.trickle:
                        for byte in _raw(reply):
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(reply.trickle)
                        return
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


def signed_with(secret: str, request: Received) -> bool:
    """The documented check, written out: HMAC-SHA256 over '<timestamp>.<body>'."""
    stamp = request.headers["x-modelhost-timestamp"]
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + request.body, hashlib.sha256)
    fresh = abs(time.time() - int(stamp)) <= 300
    return fresh and hmac.compare_digest(
        f"sha256={mac.hexdigest()}", request.headers["x-modelhost-signature"]
    )


@dataclass
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


def make_tls(directory: Path) -> Tls:
    """A self-signed certificate for ``localhost`` (not for 127.0.0.1), kept in ``directory``."""
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
    (directory / "cert.pem").write_bytes(pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return Tls(server, ssl.create_default_context(cadata=pem.decode()))
