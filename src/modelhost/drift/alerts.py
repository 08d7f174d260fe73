"""Acting on drift: signed webhooks (``drift.alert``, ``drift.resolved``) and retraining hooks.

A webhook is delivered by :class:`~modelhost.webhooks.delivery.SignedWebhooks`, as rollout
alerts are: signed like a job callback with the secret of the tenant ``drift.alert_tenant``,
sent through the process's one :class:`~modelhost.webhooks.egress.Egress` (the SSRF guard that
``jobs.webhook_allow`` lifts for named networks and hosts, one deadline per attempt, no
redirects), retried with backoff up to ``drift.alert_max_attempts``. Each attempt is recorded
on the alert.

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
from typing import Any

import orjson

from modelhost.config import Settings
from modelhost.drift.store import DriftStore
from modelhost.errors import describe
from modelhost.manifest import MonitoringConfig
from modelhost.webhooks.delivery import SignedWebhooks, WebhookOptions, now_iso
from modelhost.webhooks.egress import Egress
from modelhost.webhooks.signing import webhook_master_secret

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
            default_url=drift.alert_url,
            max_attempts=drift.alert_max_attempts,
            retry_base=drift.alert_retry_base_s,
            timeout=drift.alert_timeout_s,
            retrain_commands=drift.retrain_commands,
            retrain_timeout=drift.retrain_timeout_s,
        )

    def webhook(self) -> WebhookOptions:
        """The signing, guard and retry part, for :class:`SignedWebhooks`."""
        return WebhookOptions(
            master_secret=self.master_secret,
            tenant=self.tenant,
            max_attempts=self.max_attempts,
            retry_base=self.retry_base,
            timeout=self.timeout,
        )


class AlertSender:
    """Delivers drift events and runs retraining hooks, recording every attempt."""

    def __init__(self, options: AlertOptions, store: DriftStore, egress: Egress) -> None:
        self.options = options
        self.store = store
        self.webhooks = SignedWebhooks(egress, options.webhook())

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
        kind = "url" if hook else "webhook"

        async def keep(attempt: dict[str, Any]) -> None:
            entry = {"kind": kind, **attempt}
            if hook:
                await asyncio.to_thread(self.store.record, alert_id, hook=entry)
            else:
                await asyncio.to_thread(self.store.record, alert_id, delivery=entry)

        await self.webhooks.deliver(url, event, evidence, delivery_id=alert_id, recorder=keep)

    # -- retraining command ----------------------------------------------------------------

    async def _command(self, alert_id: str, command: list[str], evidence: dict[str, Any]) -> None:
        outcome: dict[str, Any] = {"kind": "command", "command": command, "at": now_iso()}
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
            return {"error": f"could not start: {describe(exc)}"}
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
