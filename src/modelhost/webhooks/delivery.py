"""Delivery: the body every webhook shares, when to retry, and in-process signed delivery.

A webhook body is ``{"type", "created_at", "data"}`` (:func:`envelope`), the same bytes on
every attempt. An attempt that fails — a non-2xx answer, a network error, a timeout — is
retried after an exponential backoff with jitter, at least as long as a ``Retry-After`` asks
(up to the cap), until the attempts run out; a URL the SSRF guard refuses is given up at once
(:class:`Retries`).

Job callbacks schedule their retries through the durable queue
(:class:`~modelhost.jobs.webhooks.WebhookDeliverer`); operator alerts (drift, rollouts, feature
skew) are retried in process by :class:`SignedWebhooks`. Both send through one
:class:`~modelhost.webhooks.egress.Egress`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from modelhost.jobs.base import Backoff
from modelhost.webhooks.egress import Egress, Outcome
from modelhost.webhooks.signing import signed_headers, tenant_secret

log = logging.getLogger("modelhost.webhooks")


def now_iso() -> str:
    """The current time, ISO 8601 in UTC."""
    return datetime.now(UTC).isoformat()


def envelope(event: str, data: dict[str, Any], created_at: str | None = None) -> bytes:
    """The JSON body of a webhook: ``{"type", "created_at", "data"}``; ``created_at`` defaults
    to now. NumPy values in ``data`` are encoded as their JSON equivalents."""
    payload = {"type": event, "created_at": created_at or now_iso(), "data": data}
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass(frozen=True, slots=True)
class Retries:
    """How often and how patiently a webhook is retried."""

    max_attempts: int = 4
    """Attempts before it is given up."""
    base: float = 1.0
    """Backoff after the first failed attempt; doubles per attempt, with jitter."""
    cap: float = 300.0
    """Longest wait between two attempts."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): a random time between
        half and all of ``min(cap, base * 2**(attempt-1))``."""
        return Backoff(self.base, self.cap).delay(attempt)

    def after(self, outcome: Outcome, attempt: int) -> float | None:
        """Seconds to wait before the attempt after ``attempt``, or None to stop: it was
        delivered, the guard refused the URL, or that was the last attempt."""
        if outcome.delivered or outcome.final or attempt >= self.max_attempts:
            return None
        wait = self.delay(attempt)
        if outcome.retry_after is not None:  # the receiver asked: wait that long, up to the cap
            wait = max(wait, min(outcome.retry_after, self.cap))
        return wait


class AttemptRecorder(Protocol):
    """Keeps the outcome of one delivery attempt (a drift alert stores it on the alert)."""

    async def __call__(self, attempt: dict[str, Any]) -> None:
        """Note ``attempt`` (``event``, ``url``, ``attempt``, ``at``, ``status_code``,
        ``error``, ``duration_ms``)."""


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """Who signs in-process webhooks and how hard delivery tries."""

    master_secret: bytes
    """What tenant secrets derive from
    (:func:`~modelhost.webhooks.signing.webhook_master_secret`)."""
    tenant: str = "system"
    """Whose secret signs them."""
    max_attempts: int = 4
    retry_base: float = 1.0
    """Backoff after the first failed attempt; doubles per attempt, with jitter."""
    retry_max: float = 300.0
    timeout: float = 10.0
    """Seconds one attempt may take, from resolving the host to the response status."""

    @property
    def retries(self) -> Retries:
        """The retry part."""
        return Retries(self.max_attempts, self.retry_base, self.retry_max)


class SignedWebhooks:
    """Delivers events signed with one tenant's secret, through the egress, retrying in
    process. Delivery runs on the event loop and never raises: an event that cannot be
    delivered is logged (and counted by the egress); it must not stop its sender."""

    def __init__(self, egress: Egress, options: WebhookOptions) -> None:
        self.egress = egress
        self.options = options
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
            delivery_id: names the event; attempt ``n`` is delivery ``<delivery_id>:<n>``.
            recorder: called with every attempt's outcome.

        Returns:
            Whether a receiver accepted it.
        """
        body = envelope(event, data)
        retries = self.options.retries
        for number in range(1, retries.max_attempts + 1):
            started, tick = now_iso(), time.perf_counter()
            headers = signed_headers(self._secret, event, f"{delivery_id}:{number}", body)
            outcome = await self.egress.post(
                url, body, headers, timeout=self.options.timeout, event=event
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
            wait = retries.after(outcome, number)
            if wait is None:
                break
            await asyncio.sleep(wait)
        log.warning("%s %s given up", event, delivery_id)
        return False
