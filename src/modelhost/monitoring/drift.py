"""Drift detection: live inputs compared with reference statistics (PSI, KS, KL)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelhost.components import Component

if TYPE_CHECKING:
    from modelhost.app import Services


def build_drift(services: Services) -> Component:
    """The drift component of a server or worker process."""
    del services
    return Component()
