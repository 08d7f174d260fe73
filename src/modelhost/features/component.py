"""The features component: tenant pins and overrides, conversation sessions, and keeping
every replica's view of them fresh."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from modelhost.components import PeriodicComponent
from modelhost.features.runner import FeatureRunner
from modelhost.features.sessions import SessionStore
from modelhost.features.tenants import TenantControls

if TYPE_CHECKING:
    from modelhost.app import Services

#: Seconds between two purges of expired conversation sessions.
PURGE_INTERVAL_S = 3600.0


class FeaturesComponent(PeriodicComponent):
    """Holds the tenant controls and sessions the data plane's feature runner uses, and
    reloads the controls every ``interval`` seconds (other replicas' changes)."""

    def __init__(self, controls: TenantControls, sessions: SessionStore, interval: float) -> None:
        super().__init__(interval)
        self.controls = controls
        self.sessions = sessions
        self._since_purge = 0.0

    async def tick(self) -> None:
        """Reload the controls; purge expired sessions now and then."""
        await asyncio.to_thread(self.controls.reload)
        self._since_purge += self.interval
        if self._since_purge >= PURGE_INTERVAL_S:
            self._since_purge = 0.0
            await asyncio.to_thread(self.sessions.purge)


def build_features(services: Services) -> FeaturesComponent:
    """Build the component and hand its parts to the data plane and its router."""
    engine = services.registry.engine
    component = FeaturesComponent(
        TenantControls(engine),
        SessionStore(engine),
        services.settings.inference.refresh_interval_s,
    )
    services.plane.features = FeatureRunner(component.controls, component.sessions)
    services.plane.router.pins = component.controls
    return component
