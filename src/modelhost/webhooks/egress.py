"""Egress: the one way modelhost makes an HTTP request to a URL a user (or a manifest) named.

Job callbacks, drift alerts and retraining URLs, rollout alerts and feature-skew alerts all
leave through :class:`Egress`, so they share one set of protections:

* the SSRF guard (:class:`CallbackPolicy`): the host is resolved and every address it resolves
  to must be public, unless the operator allows its network or name
  (``MODELHOST_JOBS__WEBHOOK_ALLOW``);
* the connection is *pinned* to an address just checked — modelhost connects to that IP itself,
  sending the original ``Host`` header and, for https, the original name in SNI, where the
  certificate is verified against it — so DNS rebinding cannot steer it elsewhere;
* one deadline covers the whole attempt, from resolving the host to the response status line
  (a receiver trickling bytes cannot hold it longer);
* redirects are never followed, environment proxies are never used, keep-alive is off (a
  pinned connection is never reused for another name) and the receiver's body is never read;
* every attempt is a ``webhook`` span whose ``traceparent`` is sent along, is counted in
  ``modelhost_webhook_attempts_total{event,outcome}``, and is logged when it fails.

An attempt never raises: it returns an :class:`Outcome`. Retrying is the caller's choice
(:class:`~modelhost.webhooks.delivery.Retries` decides when), since job callbacks retry through
the durable queue and alerts in process.

Model upstreams an operator configures (``openai-upstream``'s ``base_url``) do not go through
here: they are the operator's own infrastructure, typically on a private network the guard
would refuse, and they are read, streamed and kept alive, which a webhook never is.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from modelhost.config import Settings
from modelhost.errors import InvalidInput, describe
from modelhost.observability.tracing import Tracer

if TYPE_CHECKING:
    from modelhost.observability.metrics import Metrics

log = logging.getLogger("modelhost.webhooks")

#: Longest accepted URL.
MAX_URL_LENGTH = 2048

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    """A parsed URL: where to connect and what to call the host."""

    url: httpx.URL
    host: str
    """The host as sent in DNS and TLS: lower case, IDNA-encoded, no brackets or final dot."""
    port: int
    host_header: str
    """The ``Host`` header: host, and port when not the scheme's default."""


class CallbackPolicy:
    """The SSRF guard for every URL modelhost POSTs to.

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
        """The addresses a POST to ``url`` may connect to (pin the connection to one of them,
        so DNS cannot answer differently between this check and the connect).

        Raises:
            InvalidInput: the policy refuses the URL.
            OSError: the host does not resolve (now).
        """
        return self.addresses(self.parse(url))

    def check(self, url: str) -> None:
        """Accept ``url``, or raise.

        Raises:
            InvalidInput: with ``param="callback_url"``, saying why it is refused.
        """
        target = self.parse(url)
        try:
            self.addresses(target)
        except OSError:
            raise _refuse(f"'callback_url' host {target.host!r} does not resolve") from None


# -- one attempt -------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """What one POST came to."""

    kind: str
    """``delivered``, ``http_error`` (a non-2xx answer), ``redirect`` (a 3xx, not followed),
    ``timeout``, ``network`` (no answer: refused, reset, TLS), ``unresolved`` (DNS) or
    ``refused`` (by the SSRF guard); the ``outcome`` label of the attempts metric."""
    status_code: int | None = None
    error: str | None = None
    final: bool = False
    """Give up now: retrying cannot help (the guard refuses the URL)."""
    retry_after: float | None = None
    """Seconds the receiver asked to wait (``Retry-After``)."""

    @property
    def delivered(self) -> bool:
        """Whether the receiver answered 2xx."""
        return self.status_code is not None and 200 <= self.status_code < 300


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _answered(response: httpx.Response) -> Outcome:
    code = response.status_code
    if 200 <= code < 300:
        return Outcome("delivered", code)
    if 300 <= code < 400:
        return Outcome("redirect", code, f"redirect not followed (HTTP {code})")
    return Outcome("http_error", code, f"HTTP {code}", retry_after=_retry_after(response))


class Egress:
    """Sends POSTs to user-named URLs through the SSRF guard, pinned, bounded and observed.

    Args:
        policy: the SSRF guard.
        verify: certificates of https receivers are checked against this; None: httpx's
            default (certifi's bundle).
        tracer: records a ``webhook`` span per POST and sends its ``traceparent`` along.
        metrics: counts every attempt by event and outcome; None: not counted.
    """

    def __init__(
        self,
        policy: CallbackPolicy,
        *,
        verify: ssl.SSLContext | None = None,
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.policy = policy
        self.tracer = tracer if tracer is not None else Tracer()
        self.metrics = metrics
        self._tls = verify if verify is not None else httpx.create_ssl_context()

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float, event: str
    ) -> Outcome:
        """POST ``body`` to ``url`` once; never raises (but for cancellation).

        Args:
            url: the receiver; checked by the guard now, on the addresses connected to.
            body: the request body.
            headers: sent as they are, with ``Host`` and ``traceparent`` added.
            timeout: seconds the whole attempt may take, DNS to response status.
            event: what is sent (``job.succeeded``, ``drift.alert``…), for metrics and logs.
        """
        tick = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                outcome = await self._attempt(url, body, headers, timeout)
        except TimeoutError:
            outcome = Outcome("timeout", error=f"timed out after {timeout:g}s")
        except Exception as exc:  # one bad receiver must never stop its sender
            log.exception("%s POST failed unexpectedly", event)
            outcome = Outcome("network", error=describe(exc))
        if self.metrics is not None:
            self.metrics.webhook_attempts.labels(event, outcome.kind).inc()
        if not outcome.delivered:
            log.info(
                "%s POST to %s failed after %.0f ms: %s",
                event,
                _host_of(url),
                (time.perf_counter() - tick) * 1000,
                outcome.error,
            )
        return outcome

    async def _attempt(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> Outcome:
        try:
            target = self.policy.parse(url)
            addresses = await asyncio.to_thread(self.policy.addresses, target)
        except InvalidInput as exc:
            error = f"refused by the callback policy: {exc.message}"
            return Outcome("refused", error=error, final=True)
        except OSError as exc:
            return Outcome("unresolved", error=f"the host did not resolve: {exc}")
        async with httpx.AsyncClient(
            verify=self._tls,
            timeout=httpx.Timeout(timeout),
            # no keep-alive: a connection pinned to one address and TLS name is never reused
            limits=httpx.Limits(max_keepalive_connections=0),
            follow_redirects=False,
            trust_env=False,  # no environment proxy: the connection goes to the checked address
        ) as client:
            error = "no address to connect to"
            for address in addresses:  # connect to a checked address, never re-resolve
                try:
                    return await self._send(client, target, address, headers, body)
                except httpx.ConnectError as exc:  # nothing was sent: try the next address
                    error = describe(exc)
                except httpx.TimeoutException as exc:
                    return Outcome("timeout", error=f"timed out after {timeout:g}s ({exc!r})")
                except httpx.HTTPError as exc:
                    return Outcome("network", error=describe(exc))
        return Outcome("network", error=error)

    async def _send(
        self,
        client: httpx.AsyncClient,
        target: CallbackTarget,
        address: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Outcome:
        extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
        with self.tracer.span("webhook", {"server.address": target.host}):
            sent = {**headers, "Host": target.host_header}
            self.tracer.inject(sent)  # W3C traceparent of this POST's span
            request = client.build_request(
                "POST",
                target.url.copy_with(host=address),
                headers=sent,
                content=body,
                extensions=extensions,
            )
            response = await client.send(request, stream=True)
            await response.aclose()  # the status is all we need; never read a receiver's body
        return _answered(response)


def _host_of(url: str) -> str:
    """The host of ``url`` for a log line (never its path or query, which may carry tokens)."""
    try:
        return httpx.URL(url).host or "?"
    except (httpx.InvalidURL, TypeError):
        return "?"


def build_egress(
    settings: Settings, tracer: Tracer | None = None, metrics: Metrics | None = None
) -> Egress:
    """The egress of one process: the guard ``jobs.webhook_allow`` describes."""
    return Egress(CallbackPolicy(settings.jobs.webhook_allow), tracer=tracer, metrics=metrics)
