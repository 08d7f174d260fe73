"""Acting on drift: signed webhooks (``drift.alert``, ``drift.resolved``) and retraining hooks.

A webhook is signed like a job callback (``modelhost.jobs.webhooks``): the secret of the
tenant ``drift.alert_tenant``, over ``<timestamp>.<body>``, in ``X-Modelhost-Signature``; the
URL passes the same SSRF guard (``jobs.webhook_allow`` lifts it for named networks and hosts),
checked on the addresses actually connected to. Each attempt is logged and recorded on the
alert; a failed one is retried with backoff up to ``drift.alert_max_attempts``.

A retraining hook is a command (run without a shell, the evidence JSON on its standard input,
killed after ``drift.retrain_timeout_s``) or a URL POSTed the evidence as event
``drift.retrain``. Both run as tasks of the event loop: nothing here blocks it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from modelhost import __version__
from modelhost.config import Settings
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
    webhook_master_secret,
)
from modelhost.manifest import MonitoringConfig
from modelhost.monitoring.drift_store import DriftStore

log = logging.getLogger("modelhost.drift")

#: Event of a version whose live inputs crossed a threshold.
ALERT = "drift.alert"
#: Event of a version back within its thresholds after an alert.
RESOLVED = "drift.resolved"
#: Event POSTed to a ``retrain_url``.
RETRAIN = "drift.retrain"
#: Characters of a retraining command's output kept on the alert.
_TAIL = 2000


@dataclass(frozen=True, slots=True)
class AlertOptions:
    """How alerts are signed, guarded, retried, and how long hooks may run."""

    master_secret: bytes
    tenant: str = "system"
    allow: tuple[str, ...] = ()
    """Networks and hosts the SSRF guard lets through (``jobs.webhook_allow``)."""
    default_url: str | None = None
    max_attempts: int = 4
    retry_base: float = 1.0
    timeout: float = 10.0
    retrain_commands: bool = True
    retrain_timeout: float = 600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertOptions:
        """The options the ``drift`` and ``jobs`` settings ask for."""
        drift = settings.drift
        return cls(
            master_secret=webhook_master_secret(settings),
            tenant=drift.alert_tenant,
            allow=tuple(settings.jobs.webhook_allow),
            default_url=drift.alert_url,
            max_attempts=drift.alert_max_attempts,
            retry_base=drift.alert_retry_base_s,
            timeout=drift.alert_timeout_s,
            retrain_commands=drift.retrain_commands,
            retrain_timeout=drift.retrain_timeout_s,
        )


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc or type(exc).__name__}"[:500]


def envelope(event: str, evidence: dict[str, Any]) -> bytes:
    """The JSON body of a drift webhook: ``{"type", "created_at", "data"}`` like job
    callbacks; the same bytes on every attempt."""
    return orjson.dumps({"type": event, "created_at": _now(), "data": evidence})


class AlertSender:
    """Delivers drift events and runs retraining hooks, recording every attempt."""

    def __init__(self, options: AlertOptions, store: DriftStore) -> None:
        self.options = options
        self.store = store
        self.policy = CallbackPolicy(options.allow)
        self._secret = tenant_secret(options.master_secret, options.tenant)

    async def send(
        self, alert_id: str, event: str, evidence: dict[str, Any], config: MonitoringConfig
    ) -> None:
        """Deliver ``event`` to the alert URL and, for an alert, run the retraining hooks;
        at once, each on its own."""
        jobs = []
        url = config.alert_url or self.options.default_url
        if url:
            jobs.append(self._deliver(alert_id, url, event, evidence, hook=False))
        if event == ALERT and config.retrain_command:
            jobs.append(self._command(alert_id, config.retrain_command, evidence))
        if event == ALERT and config.retrain_url:
            jobs.append(self._deliver(alert_id, config.retrain_url, RETRAIN, evidence, hook=True))
        if not jobs:
            log.info(
                "%s %s for %s: no alert URL or hook configured",
                event,
                alert_id,
                evidence.get("ref"),
            )
        await asyncio.gather(*jobs)

    # -- webhooks --------------------------------------------------------------------------

    async def _deliver(
        self, alert_id: str, url: str, event: str, evidence: dict[str, Any], *, hook: bool
    ) -> None:
        body = envelope(event, evidence)
        backoff = Backoff(self.options.retry_base, 300.0)
        for number in range(1, self.options.max_attempts + 1):
            started, tick = _now(), time.perf_counter()
            code, error, final = await self._attempt(url, event, body, f"{alert_id}:{number}")
            attempt = {
                "kind": "url" if hook else "webhook",
                "event": event,
                "url": url,
                "attempt": number,
                "at": started,
                "status_code": code,
                "error": error,
                "duration_ms": round((time.perf_counter() - tick) * 1000, 1),
            }
            delivered = code is not None and 200 <= code < 300
            log.info(
                "%s %s to %s attempt %d: %s",
                event,
                alert_id,
                url,
                number,
                "delivered" if delivered else error,
            )
            if hook:
                await asyncio.to_thread(self.store.record, alert_id, hook=attempt)
            else:
                await asyncio.to_thread(self.store.record, alert_id, delivery=attempt)
            if delivered or final:
                return
            if number < self.options.max_attempts:
                await asyncio.sleep(backoff.delay(number))
        log.warning("%s %s to %s given up after %d attempts", event, alert_id, url, number)

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

    async def _attempt(
        self, url: str, event: str, body: bytes, delivery: str
    ) -> tuple[int | None, str | None, bool]:
        """One POST: (status code, error, give up now)."""
        try:
            target = self.policy.parse(url)
            addresses = await asyncio.to_thread(self.policy.addresses, target)
        except InvalidInput as exc:
            return None, f"refused by the callback policy: {exc.message}", True
        except OSError as exc:
            return None, f"the host did not resolve: {exc}", False
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
                    return None, _describe(exc), False
                code = response.status_code
                return code, None if 200 <= code < 300 else f"HTTP {code}", False
        return None, error, False

    # -- retraining command ----------------------------------------------------------------

    async def _command(self, alert_id: str, command: list[str], evidence: dict[str, Any]) -> None:
        outcome: dict[str, Any] = {"kind": "command", "command": command, "at": _now()}
        if not self.options.retrain_commands:
            outcome["error"] = "retraining commands are off (MODELHOST_DRIFT__RETRAIN_COMMANDS)"
        else:
            outcome.update(await self._run(command, evidence))
        log.info(
            "retraining command %s for %s: %s",
            command,
            alert_id,
            outcome.get("error") or f"exit {outcome.get('exit_code')}",
        )
        await asyncio.to_thread(self.store.record, alert_id, hook=outcome)

    async def _run(self, command: list[str], evidence: dict[str, Any]) -> dict[str, Any]:
        env = {
            **os.environ,
            "MODELHOST_DRIFT_MODEL": str(evidence.get("model", "")),
            "MODELHOST_DRIFT_VERSION": str(evidence.get("version", "")),
            "MODELHOST_DRIFT_ALERT_ID": str(evidence.get("alert_id", "")),
        }
        tick = time.perf_counter()
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            return {"error": f"could not start: {_describe(exc)}"}
        try:
            stdout, stderr = await asyncio.wait_for(
                process.communicate(orjson.dumps(evidence)), self.options.retrain_timeout
            )
        except TimeoutError:
            process.kill()
            await process.wait()
            return {"error": f"killed after {self.options.retrain_timeout:g}s"}
        except asyncio.CancelledError:  # shutting down: do not leave the command behind
            process.kill()
            raise
        return {
            "exit_code": process.returncode,
            "stdout": stdout.decode(errors="replace")[-_TAIL:],
            "stderr": stderr.decode(errors="replace")[-_TAIL:],
            "duration_ms": round((time.perf_counter() - tick) * 1000, 1),
            "error": None if process.returncode == 0 else f"exit code {process.returncode}",
        }
