"""Signed operator alerts: one webhook event POSTed to one URL, guarded and retried.

Drift alerts (``drift.alert``, ``drift.resolved``) and rollout alerts (``rollout.rollback``)
are delivered the same way, by :class:`SignedWebhooks`:

* the body is ``{"type", "created_at", "data"}`` (:func:`envelope`), like a job callback, and
  the same bytes on every attempt;
* it is signed like a job callback (:mod:`modelhost.jobs.webhooks`): the secret of one tenant
  (``alert_tenant``), over ``<timestamp>.<body>``, in ``X-Modelhost-Signature``, so a
  receiver verifies it with that tenant's ``GET /v1/webhooks/secret``;
* the URL passes the job callbacks' SSRF guard (``jobs.webhook_allow`` lifts it for named
  networks and hosts), checked on the addresses actually connected to, which the connection
  is pinned to; redirects are not followed and the receiver's body is never read;
* a failed attempt is retried with backoff up to ``max_attempts``; a URL the guard refuses is
  given up at once. Every attempt is handed to the caller's recorder, if any.

Delivery runs on the event loop (DNS in a thread) and never raises: an alert that cannot be
delivered is logged, it must not stop the monitor that sent it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import orjson

from modelhost import __version__
from modelhost.errors import InvalidInput
from modelhost.jobs.base import Backoff
from modelhost.jobs.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CallbackPolicy,
    sign,
    tenant_secret,
)

log = logging.getLogger("modelhost.alerts")


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """Who signs alerts, where they may go, and how hard delivery tries."""

    master_secret: bytes
    """What tenant secrets derive from (:func:`~modelhost.jobs.webhooks.webhook_master_secret`)."""
    tenant: str = "system"
    """Whose secret signs the alerts."""
    allow: tuple[str, ...] = ()
    """Networks and hosts the SSRF guard lets through (``jobs.webhook_allow``)."""
    max_attempts: int = 4
    retry_base: float = 1.0
    """Backoff after the first failed attempt; doubles per attempt, with jitter."""
    retry_max: float = 300.0
    timeout: float = 10.0
    """Seconds one attempt may take."""


class AttemptRecorder(Protocol):
    """Keeps the outcome of one delivery attempt (a drift alert stores it on the alert)."""

    async def __call__(self, attempt: dict[str, Any]) -> None:
        """Note ``attempt`` (``event``, ``url``, ``attempt``, ``at``, ``status_code``,
        ``error``, ``duration_ms``)."""


def now_iso() -> str:
    """The current time, ISO 8601 in UTC."""
    return datetime.now(UTC).isoformat()


def envelope(event: str, data: dict[str, Any]) -> bytes:
    """The JSON body of an alert: ``{"type", "created_at", "data"}`` like job callbacks."""
    return orjson.dumps({"type": event, "created_at": now_iso(), "data": data})


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc or type(exc).__name__}"[:500]


@dataclass(frozen=True, slots=True)
class _Outcome:
    status_code: int | None
    error: str | None
    final: bool
    """Give up now: retrying cannot help (the guard refuses the URL)."""

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class SignedWebhooks:
    """Delivers alert events signed with one tenant's secret, through the SSRF guard."""

    def __init__(self, options: WebhookOptions) -> None:
        self.options = options
        self.policy = CallbackPolicy(options.allow)
        self._secret = tenant_secret(options.master_secret, options.tenant)

    async def deliver(
        self,
        url: str,
        event: str,
        data: dict[str, Any],
        *,
        delivery_id: str,
        recorder: AttemptRecorder | None = None,
    ) -> bool:
        """POST ``event`` with ``data`` to ``url`` until a 2xx answer or the attempts run out.

        Args:
            url: the receiver.
            event: the ``X-Modelhost-Event`` header and the body's ``type``.
            data: the body's ``data``.
            delivery_id: names the alert; attempt ``n`` is delivery ``<delivery_id>:<n>``.
            recorder: called with every attempt's outcome.

        Returns:
            Whether a receiver accepted it.
        """
        body = envelope(event, data)
        backoff = Backoff(self.options.retry_base, self.options.retry_max)
        for number in range(1, self.options.max_attempts + 1):
            started, tick = now_iso(), time.perf_counter()
            outcome = await self._attempt(url, event, body, f"{delivery_id}:{number}")
            log.info(
                "%s %s to %s attempt %d: %s",
                event,
                delivery_id,
                url,
                number,
                "delivered" if outcome.delivered else outcome.error,
            )
            if recorder is not None:
                await recorder(
                    {
                        "event": event,
                        "url": url,
                        "attempt": number,
                        "at": started,
                        "status_code": outcome.status_code,
                        "error": outcome.error,
                        "duration_ms": round((time.perf_counter() - tick) * 1000, 1),
                    }
                )
            if outcome.delivered:
                return True
            if outcome.final:
                break
            if number < self.options.max_attempts:
                await asyncio.sleep(backoff.delay(number))
        log.warning("%s %s to %s given up", event, delivery_id, url)
        return False

    def _headers(self, event: str, body: bytes, delivery: str) -> dict[str, str]:
        timestamp = str(int(time.time()))
        return {
            "Content-Type": "application/json",
            "User-Agent": f"modelhost/{__version__}",
            EVENT_HEADER: event,
            DELIVERY_HEADER: delivery,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }

    async def _attempt(self, url: str, event: str, body: bytes, delivery: str) -> _Outcome:
        """One POST, to the first checked address that accepts a connection."""
        try:
            target = self.policy.parse(url)
            addresses = await asyncio.to_thread(self.policy.addresses, target)
        except InvalidInput as exc:
            return _Outcome(None, f"refused by the callback policy: {exc.message}", True)
        except OSError as exc:
            return _Outcome(None, f"the host did not resolve: {exc}", False)
        headers = {**self._headers(event, body, delivery), "Host": target.host_header}
        extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
        error = "no address to connect to"
        async with httpx.AsyncClient(
            timeout=self.options.timeout, follow_redirects=False, trust_env=False
        ) as client:
            for address in addresses:  # connect to a checked address, never re-resolve
                request = client.build_request(
                    "POST",
                    target.url.copy_with(host=address),
                    headers=headers,
                    content=body,
                    extensions=extensions,
                )
                try:
                    response = await client.send(request, stream=True)
                    await response.aclose()  # never read a receiver's body
                except httpx.ConnectError as exc:  # nothing was sent: try the next address
                    error = _describe(exc)
                    continue
                except httpx.HTTPError as exc:
                    return _Outcome(None, _describe(exc), False)
                code = response.status_code
                return _Outcome(code, None if 200 <= code < 300 else f"HTTP {code}", False)
        return _Outcome(None, error, False)
