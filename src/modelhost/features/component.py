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
    from sqlalchemy.engine import Engine

#: Seconds between two purges of expired conversation sessions.
PURGE_INTERVAL_S = 3600.0


class FeaturesComponent(PeriodicComponent):
    """Holds the tenant controls and sessions, and the feature runner over them (the data
    plane's), and reloads the controls every ``interval`` seconds (other replicas' changes)."""

    def __init__(self, controls: TenantControls, sessions: SessionStore, interval: float) -> None:
        super().__init__(interval)
        self.controls = controls
        self.sessions = sessions
        self.runner = FeatureRunner(controls, sessions)
        """Runs feature versions for the data plane, with the tenants' pins and overrides."""
        self._since_purge = 0.0

    async def tick(self) -> None:
        """Reload the controls; purge expired sessions now and then."""
        await asyncio.to_thread(self.controls.reload)
        self._since_purge += self.interval
        if self._since_purge >= PURGE_INTERVAL_S:
            self._since_purge = 0.0
            await asyncio.to_thread(self.sessions.purge)


def build_features(engine: Engine, interval: float) -> FeaturesComponent:
    """The component over the controls and sessions in ``engine``'s database, reloaded every
    ``interval`` seconds; the composition root hands its runner and controls (the version
    pins) to the data plane."""
    return FeaturesComponent(TenantControls(engine), SessionStore(engine), interval)
