"""Job callbacks: a signed POST when a job finishes, retried with backoff through the queue.

When a job with a ``callback_url`` finishes (succeeded, failed, cancelled or expired), the queue
marks its callback *pending*. A :class:`WebhookDeliverer` claims due callbacks, POSTs a JSON
description of the job signed with the tenant's secret, and records every attempt on the job
(``job.webhook["attempts"]``). A failed attempt is retried with exponential backoff and jitter
until ``max_attempts``; then the callback is given up. Retries are scheduled in the queue, so
they survive a worker's restart and any worker may make them.

Signing (:mod:`modelhost.webhooks.signing`), the SSRF guard and the HTTP request itself
(:mod:`modelhost.webhooks.egress`) and the retry rule (:class:`~modelhost.webhooks.delivery.
Retries`) are the ones every webhook of modelhost shares. The callback URL is checked by the
guard when the job is submitted and again, on the addresses actually connected to, at every
delivery. The names re-exported here (``verify``, ``CallbackPolicy``…) keep their documented
import path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelhost.config import JobSettings, Settings
from modelhost.errors import describe
from modelhost.jobs.base import Job, QueueBackend
from modelhost.protocol.jobs import iso, job_view
from modelhost.webhooks.delivery import Retries, envelope
from modelhost.webhooks.egress import MAX_URL_LENGTH, CallbackPolicy, Egress, Outcome
from modelhost.webhooks.signing import (
    ALGORITHM,
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    signed_headers,
    tenant_secret,
    verify,
    webhook_master_secret,
)

__all__ = [
    "ALGORITHM",
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "MAX_URL_LENGTH",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "CallbackPolicy",
    "DeliveryOptions",
    "WebhookDeliverer",
    "build_deliverer",
    "callback_body",
    "event_type",
    "sign",
    "tenant_secret",
    "verify",
    "webhook_master_secret",
]

log = logging.getLogger("modelhost.jobs.webhooks")


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

    @classmethod
    def from_settings(cls, jobs: JobSettings) -> DeliveryOptions:
        """The options the ``MODELHOST_JOBS__WEBHOOK_*`` settings ask for."""
        return cls(
            max_attempts=jobs.webhook_max_attempts,
            retry_base=jobs.webhook_retry_base_s,
            retry_max=jobs.webhook_retry_max_s,
            timeout=jobs.webhook_timeout_s,
        )

    @property
    def retries(self) -> Retries:
        """The retry part."""
        return Retries(self.max_attempts, self.retry_base, self.retry_max)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): a random time between
        half and all of ``min(retry_max, retry_base * 2**(attempt-1))``."""
        return self.retries.delay(attempt)


def event_type(job: Job) -> str:
    """``job.succeeded``, ``job.failed``, ``job.cancelled`` or ``job.expired``."""
    return f"job.{job.status.value}"


def callback_body(job: Job) -> bytes:
    """The JSON body POSTed for a finished job; the same bytes on every attempt."""
    data = job_view(job)
    data.pop("webhook", None)
    return envelope(event_type(job), data, iso(job.finished_at))


class WebhookDeliverer:
    """Delivers due callbacks: claims them from the queue, POSTs each one signed through the
    egress, records the attempt, and schedules a retry or gives up.

    Each attempt resolves the host again through the egress's guard and connects to a checked
    address; a host that now resolves to a refused address is given up at once. A 3xx is a
    failed attempt (redirects are never followed).

    Args:
        backend: the job queue.
        egress: sends every POST (the SSRF guard, timeouts, tracing, metrics).
        master_secret: what tenant secrets derive from (:func:`webhook_master_secret`).
        options: retries, timeouts, concurrency.
        worker: the name leases are taken under.
        clock: seconds since the epoch (timestamps, backoff).
    """

    def __init__(
        self,
        backend: QueueBackend,
        egress: Egress,
        master_secret: bytes,
        options: DeliveryOptions | None = None,
        *,
        worker: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.egress = egress
        self.master_secret = master_secret
        self.options = options or DeliveryOptions()
        self.worker = worker or f"webhooks-{socket.gethostname()}-{secrets.token_hex(4)}"
        self.clock = clock
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

        async def one(job: Job) -> None:
            async with bound:
                await self._deliver(job)

        await asyncio.gather(*(one(job) for job in jobs))
        return len(jobs)

    async def _deliver(self, job: Job) -> None:
        number = len((job.webhook or {}).get("attempts") or []) + 1
        started, tick = self.clock(), time.perf_counter()
        outcome = await self._attempt(job, number)
        attempt: dict[str, Any] = {
            "attempt": number,
            "at": iso(started),
            "status_code": outcome.status_code,
            "error": outcome.error,
            "duration_ms": round((time.perf_counter() - tick) * 1000, 1),
        }
        wait = self.options.retries.after(outcome, number)
        retry_at = None if wait is None else self.clock() + wait
        if not outcome.delivered:
            log.info(
                "webhook %s attempt %d failed (%s); %s",
                job.id,
                number,
                outcome.error,
                "given up" if wait is None else f"retry in {wait:.3g}s",
            )
        await asyncio.to_thread(
            self.backend.record_webhook,
            job.id,
            attempt,
            delivered=outcome.delivered,
            retry_at=retry_at,
        )

    async def _attempt(self, job: Job, number: int) -> Outcome:
        event = event_type(job)
        try:
            body = callback_body(job)
        except Exception as exc:  # one bad job must not stop the others' callbacks
            log.exception("the callback body of %s could not be made", job.id)
            return Outcome("error", error=describe(exc), final=True)
        secret = tenant_secret(self.master_secret, job.tenant)
        headers = signed_headers(secret, event, f"{job.id}:{number}", body, self.clock())
        return await self.egress.post(
            job.callback_url or "", body, headers, timeout=self.options.timeout, event=event
        )


def build_deliverer(settings: Settings, backend: QueueBackend, egress: Egress) -> WebhookDeliverer:
    """The deliverer the ``jobs`` settings describe, over ``backend``, sending through
    ``egress``."""
    return WebhookDeliverer(
        backend,
        egress,
        webhook_master_secret(settings),
        DeliveryOptions.from_settings(settings.jobs),
    )
