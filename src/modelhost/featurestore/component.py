"""The feature-store component of a server: online reads, schedules, skew checks, alerts.

* It gives the data plane its :class:`~modelhost.featurestore.online.OnlineFeatures`.
* With ``feature_store.materialize_interval_s`` set it materializes (offline → online) the
  repositories of the loaded models on that schedule; ``modelhost featurestore materialize``
  and ``POST /v1/models/{m}/feature-store/materialize`` do it on demand.
* A skew check (:meth:`FeatureStoreComponent.skew`, on demand or every
  ``feature_store.skew_interval_s``) reads the served rows of a version from provenance,
  recomputes them offline and sets ``modelhost_feature_skew_ratio``; a feature over the
  manifest's ``skew_threshold`` sends a signed ``featurestore.skew`` webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from modelhost.components import Component, Every
from modelhost.errors import InvalidInput
from modelhost.featurestore.offline import FeatureSkew, ServedRow, compare
from modelhost.featurestore.online import OnlineFeatures
from modelhost.featurestore.repo import FeatureStores, materialize
from modelhost.provenance.store import ProvenanceStore, Query
from modelhost.registry import VersionInfo
from modelhost.webhooks.delivery import SignedWebhooks, now_iso

if TYPE_CHECKING:
    from modelhost.config import FeatureStoreSettings, Settings
    from modelhost.observability.metrics import Metrics
    from modelhost.provenance import ProvenanceComponent
    from modelhost.serving.models import ModelManager
    from modelhost.webhooks.egress import Egress

log = logging.getLogger("modelhost.featurestore")

#: Event of a version whose served features differ from their offline recomputation.
SKEW_ALERT = "featurestore.skew"
#: Provenance records read per page by a skew check.
_PAGE = 500


@dataclass(slots=True)
class SkewReport:
    """A skew check of one version."""

    model: str
    version: str
    since: float
    threshold: float
    rows: int = 0
    """Served rows read from provenance."""
    recomputed: int = 0
    """Of those, rows the offline store gave back (the rest are not compared)."""
    records: int = 0
    skipped: int = 0
    """Records that kept no inputs (capture ``hash``/``redacted``) or no served values."""
    features: dict[str, FeatureSkew] = field(default_factory=dict)
    checked_at: float = field(default_factory=time.time)

    @property
    def over(self) -> list[str]:
        """Features whose mismatch rate is over the threshold."""
        return [n for n, s in self.features.items() if s.compared and s.rate > self.threshold]

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of the API and the alert."""
        return {
            "object": "feature_skew",
            "model": self.model,
            "version": self.version,
            "since": datetime.fromtimestamp(self.since, UTC).isoformat(),
            "checked_at": datetime.fromtimestamp(self.checked_at, UTC).isoformat(),
            "threshold": self.threshold,
            "rows": self.rows,
            "recomputed": self.recomputed,
            "records": self.records,
            "skipped_records": self.skipped,
            "status": "skew" if self.over else "ok",
            "over_threshold": self.over,
            "features": {
                name: {
                    "compared": s.compared,
                    "mismatched": s.mismatched,
                    "mismatch_rate": round(s.rate, 6),
                    "examples": s.examples,
                }
                for name, s in self.features.items()
            },
        }


def served_rows(
    store: ProvenanceStore,
    info: VersionInfo,
    since: float,
    sample: int,
    tenant: str | None = None,
) -> tuple[list[ServedRow], int, int]:
    """Up to ``sample`` rows ``info`` served since ``since`` (newest first; only ``tenant``'s
    when given), with the number of records read and of records skipped (no inputs or no
    served values kept)."""
    rows: list[ServedRow] = []
    records = skipped = 0
    before: str | None = None
    while len(rows) < sample:
        page = store.list(
            Query(
                model=info.model,
                version=info.version,
                status="ok",
                since=since,
                tenant=tenant,
                limit=_PAGE,
                before=before,
            )
        )
        for record in page:
            records += 1
            stored = record.decisions.get("feature_store")
            if not isinstance(stored, dict):
                stored = {}
            values = stored.get("values")
            if not record.replayable or not isinstance(values, list) or not record.inputs:
                skipped += 1
                continue
            at = float(stored.get("at", record.started_at))
            for row, served in zip(record.inputs, values, strict=False):
                if isinstance(row, dict) and isinstance(served, dict):
                    rows.append(ServedRow(row, served, at, record.request_id))
        if len(page) < _PAGE:
            break
        before = page[-1].id
    return rows[:sample], records, skipped


class FeatureStoreComponent(Component):
    """Online reads for the data plane, schedules, skew checks and their alerts."""

    def __init__(
        self,
        settings: FeatureStoreSettings,
        stores: FeatureStores,
        manager: ModelManager,
        metrics: Metrics,
        provenance: ProvenanceStore | None,
        webhooks: SignedWebhooks,
        alert_url: str | None,
        flush: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.manager = manager
        self.metrics = metrics
        self.provenance = provenance
        self.webhooks = webhooks
        self.alert_url = alert_url
        self.flush = flush
        """Writes buffered provenance records (a skew check reads them)."""
        self.online = OnlineFeatures(stores, metrics)
        self._alerts: set[asyncio.Task[bool]] = set()
        self._warming: asyncio.Task[None] | None = None
        self._schedules = [
            Every(interval, work)
            for interval, work in (
                (settings.materialize_interval_s, self._materialize_all),
                (settings.skew_interval_s, self._skew_all),
            )
            if interval > 0
        ]

    def served_versions(self) -> list[VersionInfo]:
        """Loaded versions that read stored features."""
        return [
            dep.info
            for dep in self.manager.deployments()
            if dep.info.manifest.feature_store is not None
        ]

    async def materialize(self, repo: str, end: datetime | None = None) -> datetime:
        """Materialize one repository (in a thread: Feast blocks, and opening a store the
        first time takes seconds)."""
        until = await asyncio.to_thread(lambda: materialize(self.stores.get(repo), end))
        self.metrics.feature_materialized.labels(repo).set(until.timestamp())
        return until

    async def skew(
        self, info: VersionInfo, since: float, sample: int, tenant: str | None = None
    ) -> SkewReport:
        """Recompute up to ``sample`` rows ``info`` served since ``since`` and compare; only
        ``tenant``'s requests when given (the report's examples hold served values).

        Raises:
            InvalidInput: the version reads no stored features, or provenance is off.
        """
        config = info.manifest.feature_store
        if config is None:
            raise InvalidInput(f"{info.ref} reads no stored features", param="model")
        if self.provenance is None:
            raise InvalidInput(
                "the skew check reads provenance records, and provenance is off here",
                param="model",
            )
        report = SkewReport(info.model, info.version, since, config.skew_threshold)
        if self.flush is not None:
            await self.flush()
        found, report.records, report.skipped = await asyncio.to_thread(
            served_rows, self.provenance, info, since, sample, tenant
        )
        report.rows = len(found)
        chosen = await asyncio.to_thread(self.online.selection, info)
        store = await asyncio.to_thread(self.stores.get, config.repo)
        report.features, report.recomputed = await asyncio.to_thread(
            compare, store, config, chosen, found
        )
        if tenant is not None:  # one tenant's share: not the model's gauge, nor an alert
            return report
        for name, skew in report.features.items():
            self.metrics.feature_skew.labels(info.model, info.version, name).set(skew.rate)
        if report.over:
            self._alert(info, report)
        return report

    def _alert(self, info: VersionInfo, report: SkewReport) -> None:
        config = info.manifest.feature_store
        url = (
            (config.alert_url if config is not None else None)
            or info.manifest.monitoring.alert_url
            or self.alert_url
        )
        log.warning(
            "feature skew of %s: %s over %.3g",
            info.ref,
            ", ".join(f"{n} {report.features[n].rate:.3f}" for n in report.over),
            report.threshold,
        )
        if url is None:
            return
        delivery = f"skew_{secrets.token_hex(8)}"
        data = {**report.as_dict(), "detected_at": now_iso()}
        task = asyncio.create_task(
            self.webhooks.deliver(url, SKEW_ALERT, data, delivery_id=delivery)
        )
        self._alerts.add(task)
        task.add_done_callback(self._alerts.discard)

    async def start(self) -> None:
        """Open the stores of the loaded versions in the background (Feast takes seconds to
        import), and start the materialization and skew schedules that are set."""
        self._warming = asyncio.create_task(self._warm())
        for schedule in self._schedules:
            await schedule.start()

    async def stop(self) -> None:
        """Stop the schedules; give alerts under way a moment."""
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warming
            self._warming = None
        for schedule in self._schedules:
            await schedule.stop()
        if self._alerts:
            await asyncio.wait(set(self._alerts), timeout=2.0)

    async def _warm(self) -> None:
        await self.manager.wait_loaded()
        for info in self.served_versions():
            try:
                await asyncio.to_thread(self.online.selection, info)
            except Exception:  # the first request will say what is wrong; log it now too
                log.exception("feature store of %s could not be opened", info.ref)

    async def _materialize_all(self) -> None:
        configs = [info.manifest.feature_store for info in self.served_versions()]
        for repo in sorted({c.repo for c in configs if c is not None}):
            await self.materialize(repo)

    async def _skew_all(self) -> None:
        since = time.time() - self.settings.skew_window_s
        for info in self.served_versions():
            await self.skew(info, since, self.settings.skew_sample)


def build_feature_store(
    settings: Settings,
    manager: ModelManager,
    metrics: Metrics,
    egress: Egress,
    provenance: ProvenanceComponent,
) -> FeatureStoreComponent:
    """The feature-store component (the whole ``settings``: its alerts are signed and sent as
    drift alerts are); its :attr:`~FeatureStoreComponent.online` reads are the data plane's
    stored features. Skew checks read ``provenance``'s records."""
    from modelhost.drift.alerts import AlertOptions

    options = AlertOptions.from_settings(settings)
    return FeatureStoreComponent(
        settings.feature_store,
        FeatureStores(settings.feature_store, settings.redis_url),
        manager,
        metrics,
        provenance.store,
        SignedWebhooks(egress, options.webhook()),
        options.default_url,
        provenance.recorder.flush if provenance.recorder is not None else None,
    )
