"""Usage and cost accounting per principal, tenant and model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelhost.components import Component

if TYPE_CHECKING:
    from modelhost.app import Services


def build_usage(services: Services) -> Component:
    """The usage component of a server or worker process."""
    del services
    return Component()
