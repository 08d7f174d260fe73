"""Provenance: a record of every inference, queryable and replayable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelhost.components import Component

if TYPE_CHECKING:
    from modelhost.app import Services


def build_provenance(services: Services) -> Component:
    """The provenance component of a server or worker process."""
    del services
    return Component()
