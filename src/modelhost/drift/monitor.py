"""Drift detection: live inputs compared with reference statistics (PSI, KS, KL).

How it fits together (docs/drift.md):

* :class:`LiveWindows` watches the data plane: every answered, non-replayed inference of a
  monitored version appends its inputs to that version's window (the most recent
  ``window`` inputs). That is all that happens on the request path.
* :class:`DriftMonitor` owns the rest. A version's reference statistics are computed from the
  training data its manifest names (``monitoring.reference_data``), once, the first time the
  version is seen (within a check interval of its push), and kept in ``mh_drift_reference``
  so no process computes them again; ``PUT .../drift/reference`` supplies them instead.
  Every ``check_interval_s`` a background task scores each window against its reference in a
  thread (:mod:`modelhost.drift.stats`), publishes the scores as the
  ``modelhost_drift_score`` gauge, and acts on a crossing: ``ok → drift`` sends a
  ``drift.alert`` webhook and runs the retraining hooks, ``drift → ok`` sends
  ``drift.resolved``. The crossing is recorded in ``mh_drift_state`` first, so of several
  processes only one acts on it, and a restart does not alert again.
* ``GET /v1/models/{m}/drift`` scores the window of the process it reaches, on demand.

Windows live in each process's memory: with several server or worker processes, each scores
the traffic it served.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from modelhost.components import Component
from modelhost.config import DriftSettings, Settings
from modelhost.drift.alerts import ALERT, RESOLVED, AlertOptions, AlertSender
from modelhost.drift.stats import (
    DriftReport,
    DriftStatus,
    ReferenceOptions,
    ScoreOptions,
    build_reference,
    format_of,
    read_items,
    score_window,
)
from modelhost.drift.store import (
    STATE_DRIFT,
    STATE_OK,
    DriftStore,
    StoredReference,
    new_alert_id,
)
from modelhost.errors import ConfigError, InvalidInput, ModelhostError
from modelhost.inference import InferenceEvent, InferenceObserver
from modelhost.observability.metrics import Metrics
from modelhost.registry import Registry, Stage, VersionInfo
from modelhost.serving.models import ModelManager

if TYPE_CHECKING:
    from modelhost.webhooks.egress import Egress

log = logging.getLogger("modelhost.drift")

#: The ``feature`` label of a version's worst scores in ``modelhost_drift_score``.
OVERALL = "_overall"
#: Who computed a reference from a version's own training data.
ACTOR = "modelhost-drift"
#: Seconds :meth:`DriftMonitor.stop` waits for alerts and hooks under way.
STOP_GRACE_S = 5.0


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat()


@dataclass(slots=True)
class LiveWindow:
    """The most recent live inputs of one version, with when each arrived."""

    info: VersionInfo
    items: deque[tuple[float, Any]]
    seen: int = 0
    """Inputs observed since this process started."""
    last_check: float = field(default=0.0)
    """``time.monotonic()`` of the last background check."""

    def add(self, at: float, inputs: list[Any]) -> None:
        """Append one request's inputs (the oldest fall out)."""
        self.items.extend((at, item) for item in inputs)
        self.seen += len(inputs)

    def snapshot(self) -> tuple[list[Any], float | None, float | None]:
        """The inputs, and the arrival of the oldest and the newest (on the event loop)."""
        pairs = list(self.items)
        if not pairs:
            return [], None, None
        return [item for _, item in pairs], pairs[0][0], pairs[-1][0]


class LiveWindows(InferenceObserver):
    """Keeps each monitored version's live window; the only drift code on the request path.

    A version is monitored when its manifest's ``monitoring`` is enabled and it names
    reference data, or a reference was supplied for it (``watched``).
    """

    def __init__(self, settings: DriftSettings) -> None:
        self.settings = settings
        self.windows: dict[str, LiveWindow] = {}
        self.watched: set[str] = set()

    def observe(self, event: InferenceEvent) -> None:
        """Append the inputs of an answered live inference."""
        info, request = event.info, event.request
        if event.error is not None or info is None or event.results is None:
            return
        if not request.live:
            return
        window = self.windows.get(info.ref)
        if window is None:
            config = info.manifest.monitoring
            if not config.enabled or not (config.reference_data or info.ref in self.watched):
                return
            size = config.window or self.settings.window
            window = self.windows[info.ref] = LiveWindow(info, deque(maxlen=size))
        rows = request.stored.rows if request.stored is not None else request.inputs
        window.add(event.started_at, rows)


class DriftMonitor(Component):
    """The drift component: live windows, references, periodic checks and alerts."""

    def __init__(
        self,
        settings: DriftSettings,
        registry: Registry,
        manager: ModelManager,
        metrics: Metrics,
        sender: AlertSender,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.manager = manager
        self.metrics = metrics
        self.store = sender.store
        self.sender = sender
        self.live = LiveWindows(settings)
        self._references: dict[str, StoredReference | None] = {}
        self._errors: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    # -- component hooks -------------------------------------------------------------------

    def observers(self) -> list[InferenceObserver]:
        """The live windows, when drift monitoring is on."""
        return [self.live] if self.settings.enabled else []

    async def start(self) -> None:
        """Start the periodic checks (when drift monitoring is on)."""
        if self.settings.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="modelhost-drift")

    async def stop(self) -> None:
        """Stop checking; give alerts and hooks under way a moment, then cancel them."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._pending:
            _, late = await asyncio.wait(set(self._pending), timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # -- references ------------------------------------------------------------------------

    def _options(self, info: VersionInfo) -> ReferenceOptions:
        return ReferenceOptions.of(info.manifest, self.settings.reference_sample)

    def _load_reference(self, info: VersionInfo) -> StoredReference | None:
        """The stored reference, computed from the version's training data first when it has
        none or an outdated one (blocking)."""
        config = info.manifest.monitoring
        stored = self.store.reference(info.model, info.version)
        if stored is not None and (
            stored.reference.source == "supplied" or not config.reference_data
        ):
            return stored
        if not config.reference_data:
            return None
        rel = info.manifest.artifacts.get(config.reference_data, config.reference_data)
        digest = info.files.get(rel)
        if digest is None:
            raise ConfigError(
                f"{info.ref}: 'monitoring.reference_data' names {rel!r}, which is not a file of "
                "this version; put the training data in the version directory",
                param="monitoring.reference_data",
            )
        options = self._options(info)
        fingerprint = options.fingerprint()
        if stored and stored.content_sha256 == digest and stored.options_sha256 == fingerprint:
            return stored
        path = self.registry.store.materialize(info.model, info.version, {rel: digest}) / rel
        with path.open(encoding="utf-8", newline="") as handle:
            items = read_items(
                handle,
                format_of(rel),
                limit=self.settings.max_reference_rows,
                source=f"{info.ref}: {rel}",
            )
        reference = build_reference(items, options, source=f"artifact:{rel}", sha256=digest)
        log.info("%s: reference statistics computed from %s (%d rows)", info.ref, rel, len(items))
        return self.store.save_reference(info.model, info.version, reference, fingerprint, ACTOR)

    async def reference(self, info: VersionInfo) -> StoredReference | None:
        """A version's reference, computed (in a thread) the first time it is asked for; a
        failure is remembered (see :meth:`reference_error`) and not retried."""
        key = info.ref
        if key in self._references:
            return self._references[key]
        async with self._lock:
            if key in self._references:
                return self._references[key]
            found: StoredReference | None = None
            try:
                found = await asyncio.to_thread(self._load_reference, info)
            except ModelhostError as exc:
                self._errors[key] = exc.message
                log.warning("%s: no drift reference: %s", key, exc.message)
            except (OSError, UnicodeDecodeError) as exc:
                self._errors[key] = f"{info.ref}: the reference data cannot be read: {exc}"
                log.warning("%s: no drift reference: %s", key, exc)
            self._references[key] = found
            return found

    def reference_error(self, info: VersionInfo) -> str | None:
        """Why a version has no reference, when computing it failed."""
        return self._errors.get(info.ref)

    def _supply_sync(
        self, info: VersionInfo, body: bytes, content_type: str | None, actor: str
    ) -> StoredReference:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("the reference data is not UTF-8 text", param="body") from None
        items = read_items(
            io.StringIO(text, newline=""),
            format_of("", content_type),
            limit=self.settings.max_reference_rows,
            source="reference data",
        )
        options = self._options(info)
        digest = hashlib.sha256(body).hexdigest()
        reference = build_reference(items, options, source="supplied", sha256=digest)
        return self.store.save_reference(
            info.model, info.version, reference, options.fingerprint(), actor
        )

    async def supply(
        self, info: VersionInfo, body: bytes, content_type: str | None, *, actor: str
    ) -> StoredReference:
        """Compute and store a version's reference from data sent by a caller; it replaces
        any other and is never recomputed from the manifest's training data.

        Raises:
            InvalidInput: the data cannot be parsed or has no usable feature.
        """
        stored = await asyncio.to_thread(self._supply_sync, info, body, content_type, actor)
        self._references[info.ref] = stored
        self._errors.pop(info.ref, None)
        self.live.watched.add(info.ref)
        log.info("%s: reference statistics supplied by %s", info.ref, actor)
        return stored

    # -- scoring ---------------------------------------------------------------------------

    def _score_options(self, info: VersionInfo, *, histograms: bool = False) -> ScoreOptions:
        config = info.manifest.monitoring
        names = tuple(str(n) for n in info.manifest.options.get("feature_names") or ())
        return ScoreOptions(
            thresholds=config.thresholds,
            min_samples=config.min_samples or self.settings.min_samples,
            feature_names=names,
            histograms=histograms,
        )

    async def evaluate(
        self, info: VersionInfo, *, histograms: bool = False
    ) -> tuple[DriftReport, dict[str, Any]]:
        """Score a version's live window now; the report and the common part of the drift
        API's answer and of alert evidence."""
        stored = await self.reference(info)
        window = self.live.windows.get(info.ref)
        items, since, until = window.snapshot() if window else ([], None, None)
        options = self._score_options(info, histograms=histograms)
        report = await asyncio.to_thread(
            score_window, stored.reference if stored else None, items, options
        )
        config = info.manifest.monitoring
        view: dict[str, Any] = {
            "model": info.model,
            "version": info.version,
            "status": report.status.value,
            "checked_at": _iso(time.time()),
            "window": {
                "size": report.samples,
                "capacity": window.items.maxlen
                if window
                else (config.window or self.settings.window),
                "min_samples": options.min_samples,
                "since": _iso(since),
                "until": _iso(until),
                "seen": window.seen if window else 0,
            },
            "overall": report.overall(),
            "features": {name: score.as_dict() for name, score in report.features.items()},
            "thresholds": config.thresholds.model_dump(),
            "reference": stored.describe() if stored else None,
        }
        if stored is None:
            view["reference_error"] = self.reference_error(info) or (
                "no reference: name the training data in 'monitoring.reference_data' or supply "
                f"it with PUT /v1/models/{info.model}/versions/{info.version}/drift/reference"
            )
        return report, view

    async def describe(self, info: VersionInfo, *, histograms: bool = False) -> dict[str, Any]:
        """The body of ``GET /v1/models/{m}/drift``: scores now, alert state, recent alerts."""
        _, view = await self.evaluate(info, histograms=histograms)
        state, since = await asyncio.to_thread(self.store.state, info.model, info.version)
        alerts = await asyncio.to_thread(self.store.alerts, info.model, info.version)
        return {
            "object": "drift",
            **view,
            "alerting": {"state": state, "since": since.isoformat() if since else None},
            "alerts": alerts,
        }

    # -- the periodic check ----------------------------------------------------------------

    def _publish(self, info: VersionInfo, report: DriftReport) -> None:
        scored = {
            name: {"psi": s.psi, "ks": s.ks_statistic, "kl": s.kl}
            for name, s in report.features.items()
        }
        overall = report.overall()
        scored[OVERALL] = {"psi": overall["psi"], "ks": overall["ks"], "kl": overall["kl"]}
        for feature, methods in scored.items():
            for method, value in methods.items():
                if value is not None:
                    self.metrics.drift(info.model, info.version, feature, method, value)

    async def check(self, info: VersionInfo) -> str | None:
        """Score one version, publish the scores, and act on a crossing.

        Returns:
            The event sent (``drift.alert`` or ``drift.resolved``), or None.
        """
        report, view = await self.evaluate(info)
        if report.status not in (DriftStatus.OK, DriftStatus.DRIFT):
            return None
        self._publish(info, report)
        drifting = report.status is DriftStatus.DRIFT
        state = STATE_DRIFT if drifting else STATE_OK
        changed = await asyncio.to_thread(self.store.transition, info.model, info.version, state)
        if not changed:
            return None
        event = ALERT if drifting else RESOLVED
        alert_id = new_alert_id()
        evidence = {"alert_id": alert_id, "event": event, "ref": info.ref, **view}
        await asyncio.to_thread(self.store.add_alert, alert_id, event, evidence)
        if drifting:
            log.warning(
                "%s: input drift in %s (PSI %.3f); alert %s",
                info.ref,
                ", ".join(report.drifted),
                view["overall"]["psi"] or 0.0,
                alert_id,
            )
        else:
            log.info("%s: input drift resolved; %s", info.ref, alert_id)
        task = asyncio.create_task(
            self.sender.send(alert_id, event, evidence, info.manifest.monitoring)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return event

    async def _sync_references(self) -> None:
        """Learn of references supplied through other processes, and compute those of live
        versions that name training data (so they are ready before traffic comes)."""
        stored = await asyncio.to_thread(self.store.stored)
        for ref, digest in stored.items():
            self.live.watched.add(ref)
            cached = self._references.get(ref)
            if ref in self._references and (cached is None or cached.content_sha256 != digest):
                self._references.pop(ref)  # supplied or recomputed elsewhere: read it again
        for model in self.manager.models():
            for info in model.versions:
                config = info.manifest.monitoring
                if info.stage is Stage.ARCHIVED or not config.enabled:
                    continue
                if config.reference_data and info.ref not in self._references:
                    await self.reference(info)

    def _interval(self, window: LiveWindow) -> float:
        return window.info.manifest.monitoring.check_interval_s or self.settings.check_interval_s

    async def tick(self) -> None:
        """One round: references first, then every window whose interval has passed."""
        await self._sync_references()
        now = time.monotonic()
        for window in list(self.live.windows.values()):
            if now - window.last_check < self._interval(window):
                continue
            window.last_check = now
            try:
                await self.check(window.info)
            except Exception:  # one version's failure must not stop the others' checks
                log.exception("drift check of %s failed", window.info.ref)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a database hiccup must not stop monitoring; it is logged
                log.exception("drift round failed")
            intervals = [self._interval(w) for w in self.live.windows.values()]
            await asyncio.sleep(min([self.settings.check_interval_s, *intervals]))


def build_drift(
    settings: Settings,
    registry: Registry,
    manager: ModelManager,
    metrics: Metrics,
    egress: Egress,
) -> DriftMonitor:
    """The drift component of a server or worker process (the whole ``settings``: alerts are
    signed and retried as the ``jobs`` settings say); alerts go out through ``egress``."""
    store = DriftStore(registry.engine)
    sender = AlertSender(AlertOptions.from_settings(settings), store, egress)
    return DriftMonitor(settings.drift, registry, manager, metrics, sender)
