"""Webhooks: signed callbacks when a job finishes, with an SSRF guard and retries.

When a job with a ``callback_url`` finishes (succeeded, failed, cancelled or expired), the queue
marks its callback *pending*. A :class:`WebhookDeliverer` claims due callbacks, POSTs a JSON
description of the job signed with the tenant's secret, and records every attempt on the job
(``job.webhook["attempts"]``). A failed attempt is retried with exponential backoff and jitter
until ``max_attempts``; then the callback is given up.

Signing follows the scheme receivers already know from Stripe and Svix: the body is signed
together with the time it was sent, so a captured request cannot be replayed later::

    X-Modelhost-Timestamp: 1718000000
    X-Modelhost-Signature: sha256=<hex HMAC-SHA256(secret, "1718000000." + body)>

Each tenant signs with its own secret, derived from the master secret
(:func:`tenant_secret`), so one tenant can neither verify nor forge another's callbacks.

:class:`CallbackPolicy` is the SSRF guard: a callback may only reach public addresses (or
networks and host names an operator allows), checked when the job is submitted and again, on
the addresses actually connected to, at every delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from modelhost import __version__
from modelhost.config import JobSettings, Settings
from modelhost.errors import ConfigError, InvalidInput
from modelhost.jobs.base import Backoff, Job, QueueBackend
from modelhost.monitoring.tracing import Tracer
from modelhost.protocol.jobs import iso, job_view

log = logging.getLogger("modelhost.jobs.webhooks")

SIGNATURE_HEADER = "X-Modelhost-Signature"
TIMESTAMP_HEADER = "X-Modelhost-Timestamp"
EVENT_HEADER = "X-Modelhost-Event"
DELIVERY_HEADER = "X-Modelhost-Delivery"
#: How the signature is computed, as the secret endpoint describes it.
ALGORITHM = "HMAC-SHA256 over '<timestamp>.<body>'"
#: Longest accepted ``callback_url``.
MAX_URL_LENGTH = 2048

_SECRET_PREFIX = "whsec_"
_DERIVATION_LABEL = b"modelhost/webhook-signing-secret/v1\x00"
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def webhook_master_secret(settings: Settings) -> bytes:
    """The master secret per-tenant signing secrets derive from: the setting, or a random one
    kept in ``home/webhook.key`` (created on first use, readable by its owner only)."""
    configured = settings.jobs.webhook_secret
    if configured is not None:
        return configured.get_secret_value().encode()
    path = settings.home / "webhook.key"
    settings.home.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # another process made it: read theirs
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    for _ in range(50):  # the other process may still be writing it
        text = path.read_text().strip()
        if text:
            return text.encode()
        time.sleep(0.02)
    raise ConfigError(f"{path} is empty; delete it or set MODELHOST_JOBS__WEBHOOK_SECRET")


# -- signing -----------------------------------------------------------------------------------


def tenant_secret(master: bytes, tenant: str) -> str:
    """The secret ``tenant``'s callbacks are signed with: ``whsec_`` and 64 hex digits.

    It is an HMAC-SHA256 of the tenant name under the master secret, so it is the same on every
    machine sharing the master secret, and knowing one tenant's secret reveals nothing about
    another's.
    """
    digest = hmac.new(master, _DERIVATION_LABEL + tenant.encode(), hashlib.sha256)
    return _SECRET_PREFIX + digest.hexdigest()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value: ``sha256=`` and the hex HMAC-SHA256, keyed with the whole
    secret string (``whsec_…`` included), of ``timestamp``, a dot, and the raw body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """Check a received callback, as a receiver should.

    Args:
        secret: the tenant's secret (``GET /v1/webhooks/secret``).
        timestamp: the ``X-Modelhost-Timestamp`` header, unix seconds.
        body: the raw request body, exactly as received.
        signature: the ``X-Modelhost-Signature`` header; several comma-separated values are
            accepted (any one matching is enough), so a secret can be rotated.
        tolerance_s: how far the timestamp may be from ``now``; older requests are replays.
        now: the current time (default: the clock).

    Returns:
        True only if the signature matches (compared in constant time) and the timestamp is
        within the tolerance.
    """
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).encode()
    candidates = [part.strip().encode() for part in signature.split(",")]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


# -- the SSRF guard ----------------------------------------------------------------------------


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(message, param="callback_url")


def _carried(address: Address) -> list[Address]:
    """The address and every IPv4 address it carries (mapped, 6to4, Teredo, NAT64), since a
    packet to it may end up at the embedded one."""
    found: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.extend(address.teredo)
        if address in _NAT64:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _public(address: Address) -> bool:
    """True for an address on the public internet: not private, loopback, link-local,
    multicast, reserved, unspecified, shared (100.64/10), documentation or site-local."""
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address in _SHARED
    )


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class CallbackTarget:
    """A parsed callback URL: where to connect and what to call the host."""

    url: httpx.URL
    host: str
    """The host as sent in DNS and TLS: lower case, IDNA-encoded, no brackets or final dot."""
    port: int
    host_header: str
    """The ``Host`` header: host, and port when not the scheme's default."""


class CallbackPolicy:
    """The SSRF guard for callback URLs.

    A URL is refused unless its scheme is http or https, it has a host and no user info, it is
    at most 2048 characters, its host resolves, and every address it resolves to is public —
    not private, loopback, link-local, multicast, reserved, unspecified or shared (100.64/10),
    also when carried inside an IPv6 address (``::ffff:10.0.0.1``, 6to4, Teredo, NAT64).
    ``allow`` lifts the address rule for networks (``"10.1.0.0/16"``, ``"127.0.0.1"``) and
    host names (``"localhost"``, matched exactly, case-insensitively).

    Resolution blocks on DNS: call :meth:`check` and :meth:`resolve` in a thread
    (``asyncio.to_thread``) from async code.
    """

    def __init__(self, allow: Sequence[str] = ()) -> None:
        networks: list[Network] = []
        hosts: set[str] = set()
        for entry in (item.strip() for item in allow):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        self.networks: tuple[Network, ...] = tuple(networks)
        self.hosts: frozenset[str] = frozenset(hosts)

    def parse(self, url: str) -> CallbackTarget:
        """Check the URL's form (scheme, host, user info, length) without resolving it.

        Raises:
            InvalidInput: the URL is malformed or of a refused form (``param="callback_url"``).
        """
        if len(url) > MAX_URL_LENGTH:
            raise _refuse(f"'callback_url' is longer than {MAX_URL_LENGTH} characters")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise _refuse(f"'callback_url' is not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https"):
            raise _refuse("'callback_url' must be an http or https URL")
        if parsed.userinfo:
            raise _refuse("'callback_url' must not carry a user name or password")
        host = parsed.raw_host.decode("ascii").lower().rstrip(".")
        if not host:
            raise _refuse("'callback_url' has no host")
        if _literal(host) is None:
            try:  # what the resolver will do with it: empty or over-long labels fail here
                host.encode("idna")
            except UnicodeError:
                raise _refuse(f"'callback_url' host {host!r} is not a valid host name") from None
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        return CallbackTarget(parsed, host, port, parsed.netloc.decode("ascii"))

    def _allowed(self, address: Address) -> bool:
        carried = _carried(address)
        if any(a in network for a in carried for network in self.networks):
            return True
        return all(_public(a) for a in carried)

    def addresses(self, target: CallbackTarget) -> list[str]:
        """The addresses ``target`` may be reached at, all checked, in resolver order.

        Raises:
            InvalidInput: the host resolves to an address the policy refuses.
            OSError: the host does not resolve (now: DNS may recover).
        """
        literal = _literal(target.host)
        if literal is not None:
            found = [literal]
        else:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            found = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        if target.host in self.hosts:
            return [str(a) for a in found]
        for address in found:
            if not self._allowed(address):
                via = "" if literal is not None else f" (its host {target.host!r} resolves to it)"
                raise _refuse(
                    f"'callback_url' reaches {address}{via}, which is not a public address; "
                    "an operator may allow it with MODELHOST_JOBS__WEBHOOK_ALLOW"
                )
        return [str(a) for a in found]

    def resolve(self, url: str) -> list[str]:
        """The addresses a delivery to ``url`` may connect to (pin the connection to one of
        them, so DNS cannot answer differently between this check and the connect).

        Raises:
            InvalidInput: the policy refuses the URL.
            OSError: the host does not resolve (now).
        """
        return self.addresses(self.parse(url))

    def check(self, url: str) -> None:
        """Accept ``url`` as a callback, or raise.

        Raises:
            InvalidInput: with ``param="callback_url"``, saying why it is refused.
        """
        target = self.parse(url)
        try:
            self.addresses(target)
        except OSError:
            raise _refuse(f"'callback_url' host {target.host!r} does not resolve") from None


# -- delivery ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """How callbacks are delivered and retried."""

    max_attempts: int = 8
    """Attempts before a callback is given up."""
    retry_base: float = 1.0
    """Backoff after the first failed attempt; doubles per attempt, with jitter."""
    retry_max: float = 300.0
    """Longest wait between two attempts."""
    timeout: float = 10.0
    """Seconds one attempt may take, from resolving the host to the response's status line."""
    concurrency: int = 8
    """Callbacks delivered at once."""
    batch: int = 32
    """Most callbacks claimed per round."""
    verify: ssl.SSLContext | None = field(default=None, compare=False)
    """Certificates of https receivers are checked against this; None: httpx's default
    (certifi's bundle)."""

    @classmethod
    def from_settings(cls, jobs: JobSettings) -> DeliveryOptions:
        """The options the ``MODELHOST_JOBS__WEBHOOK_*`` settings ask for."""
        return cls(
            max_attempts=jobs.webhook_max_attempts,
            retry_base=jobs.webhook_retry_base_s,
            retry_max=jobs.webhook_retry_max_s,
            timeout=jobs.webhook_timeout_s,
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): a random time between
        half and all of ``min(retry_max, retry_base * 2**(attempt-1))``."""
        return Backoff(self.retry_base, self.retry_max).delay(attempt)


@dataclass(slots=True)
class _Outcome:
    status_code: int | None = None
    error: str | None = None
    final: bool = False
    """Give up now: retrying cannot help (the policy refuses the URL)."""
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def event_type(job: Job) -> str:
    """``job.succeeded``, ``job.failed``, ``job.cancelled`` or ``job.expired``."""
    return f"job.{job.status.value}"


def callback_body(job: Job) -> bytes:
    """The JSON body POSTed for a finished job; the same bytes on every attempt."""
    data = job_view(job)
    data.pop("webhook", None)
    payload = {"type": event_type(job), "created_at": iso(job.finished_at), "data": data}
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


class WebhookDeliverer:
    """Delivers due callbacks: claims them from the queue, POSTs each one signed, records the
    attempt, and schedules a retry or gives up.

    Each attempt resolves the host again through the policy and connects to one of the checked
    addresses (the *pinned* address), sending the original ``Host`` header and, for https, the
    original name in TLS SNI, where the certificate is checked against it. A host that now
    resolves to a refused address is given up at once. Redirects are never followed (a 3xx is
    a failed attempt), environment proxies are not used (the connection must go to the checked
    address), and the response body is never read.

    Args:
        backend: the job queue.
        policy: the SSRF guard.
        master_secret: what tenant secrets derive from (:func:`webhook_master_secret`).
        options: retries, timeouts, concurrency.
        worker: the name leases are taken under.
        clock: seconds since the epoch (timestamps, backoff).
        tracer: records a ``webhook`` span per POST and sends its ``traceparent`` along.
    """

    def __init__(
        self,
        backend: QueueBackend,
        policy: CallbackPolicy,
        master_secret: bytes,
        options: DeliveryOptions | None = None,
        *,
        worker: str | None = None,
        clock: Callable[[], float] = time.time,
        tracer: Tracer | None = None,
    ) -> None:
        self.backend = backend
        self.tracer = tracer if tracer is not None else Tracer()
        self.policy = policy
        self.master_secret = master_secret
        self.options = options or DeliveryOptions()
        self.worker = worker or f"webhooks-{socket.gethostname()}-{secrets.token_hex(4)}"
        self.clock = clock
        self._tls = self.options.verify or httpx.create_ssl_context()
        rounds = -(-self.options.batch // max(1, self.options.concurrency))
        self._lease = self.options.timeout * rounds + 30.0

    async def run(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Deliver due callbacks until ``stop`` is set, waiting ``interval`` seconds when none
        are due. Errors are logged, never raised: the loop outlives a database hiccup."""
        while not stop.is_set():
            delivered = 0
            try:
                delivered = await self.deliver_due()
            except Exception:
                log.exception("webhook delivery round failed")
            if delivered:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def deliver_due(self) -> int:
        """Claim the callbacks due now and attempt each once. Returns how many were attempted."""
        jobs = await asyncio.to_thread(
            self.backend.claim_webhooks, self.worker, self._lease, self.options.batch
        )
        if not jobs:
            return 0
        bound = asyncio.Semaphore(max(1, self.options.concurrency))
        # no keep-alive: a connection pinned to one address and TLS name is never reused
        limits = httpx.Limits(max_keepalive_connections=0)
        timeout = httpx.Timeout(self.options.timeout)
        async with httpx.AsyncClient(
            verify=self._tls,
            timeout=timeout,
            limits=limits,
            follow_redirects=False,
            trust_env=False,
        ) as client:

            async def one(job: Job) -> None:
                async with bound:
                    await self._deliver(client, job)

            await asyncio.gather(*(one(job) for job in jobs))
        return len(jobs)

    async def _deliver(self, client: httpx.AsyncClient, job: Job) -> None:
        number = len((job.webhook or {}).get("attempts") or []) + 1
        started, tick = self.clock(), time.perf_counter()
        try:
            async with asyncio.timeout(self.options.timeout):
                outcome = await self._attempt(client, job, number)
        except TimeoutError:
            outcome = _Outcome(error=f"timed out after {self.options.timeout:g}s")
        except Exception as exc:  # one bad callback must not stop the others
            log.exception("webhook delivery of %s failed unexpectedly", job.id)
            outcome = _Outcome(error=_describe(exc))
        attempt: dict[str, Any] = {
            "attempt": number,
            "at": iso(started),
            "status_code": outcome.status_code,
            "error": outcome.error,
            "duration_ms": round((time.perf_counter() - tick) * 1000, 1),
        }
        retry_at = self._retry_at(outcome, number)
        if not outcome.delivered:
            log.info(
                "webhook %s attempt %d failed (%s); %s",
                job.id,
                number,
                outcome.error,
                "given up" if retry_at is None else f"retry in {retry_at - self.clock():.3g}s",
            )
        await asyncio.to_thread(
            self.backend.record_webhook,
            job.id,
            attempt,
            delivered=outcome.delivered,
            retry_at=retry_at,
        )

    def _retry_at(self, outcome: _Outcome, number: int) -> float | None:
        if outcome.delivered or outcome.final or number >= self.options.max_attempts:
            return None
        wait = self.options.delay(number)
        if outcome.retry_after is not None:  # the receiver asked: wait that long, up to the cap
            wait = max(wait, min(outcome.retry_after, self.options.retry_max))
        return self.clock() + wait

    def _headers(self, job: Job, body: bytes, number: int) -> dict[str, str]:
        timestamp = str(int(self.clock()))
        return {
            "Content-Type": "application/json",
            "User-Agent": f"modelhost/{__version__}",
            EVENT_HEADER: event_type(job),
            DELIVERY_HEADER: f"{job.id}:{number}",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(tenant_secret(self.master_secret, job.tenant), timestamp, body),
        }

    async def _attempt(self, client: httpx.AsyncClient, job: Job, number: int) -> _Outcome:
        try:
            target = self.policy.parse(job.callback_url or "")
            addresses = await asyncio.to_thread(self.policy.addresses, target)
        except InvalidInput as exc:
            return _Outcome(error=f"refused by the callback policy: {exc.message}", final=True)
        except OSError as exc:
            return _Outcome(error=f"the host did not resolve: {exc}")
        body = callback_body(job)
        headers = self._headers(job, body, number)
        error = "no address to connect to"
        for address in addresses:
            try:
                return await self._post(client, target, address, headers, body)
            except httpx.ConnectError as exc:  # nothing was sent: try the next address
                error = _describe(exc)
            except httpx.TimeoutException as exc:
                return _Outcome(error=f"timed out after {self.options.timeout:g}s ({exc!r})")
            except httpx.HTTPError as exc:
                return _Outcome(error=_describe(exc))
        return _Outcome(error=error)

    async def _post(
        self,
        client: httpx.AsyncClient,
        target: CallbackTarget,
        address: str,
        headers: dict[str, str],
        body: bytes,
    ) -> _Outcome:
        extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
        with self.tracer.span("webhook", {"server.address": target.host}):
            headers = {**headers, "Host": target.host_header}
            self.tracer.inject(headers)  # W3C traceparent of this delivery's span
            request = client.build_request(
                "POST",
                target.url.copy_with(host=address),
                headers=headers,
                content=body,
                extensions=extensions,
            )
            response = await client.send(request, stream=True)
            await response.aclose()  # the status is all we need; never read a receiver's body
        code = response.status_code
        if 200 <= code < 300:
            return _Outcome(status_code=code)
        error = f"redirect not followed (HTTP {code})" if 300 <= code < 400 else f"HTTP {code}"
        return _Outcome(status_code=code, error=error, retry_after=_retry_after(response))


def build_deliverer(
    settings: Settings, backend: QueueBackend, tracer: Tracer | None = None
) -> WebhookDeliverer:
    """The deliverer the ``jobs`` settings describe, over ``backend``."""
    return WebhookDeliverer(
        backend,
        CallbackPolicy(settings.jobs.webhook_allow),
        webhook_master_secret(settings),
        DeliveryOptions.from_settings(settings.jobs),
        tracer=tracer,
    )
