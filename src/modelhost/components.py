"""The optional subsystems that hang off the data plane (provenance, drift, usage).

Each is a :class:`Component` built by the composition root from the finished
:class:`~modelhost.app.Services`: it may watch inferences (observers on the data plane), serve
routes, and run background work between :meth:`Component.start` and :meth:`Component.stop`,
in servers and in ``modelhost worker`` processes alike.
"""

from __future__ import annotations

from fastapi import APIRouter

from modelhost.serving.observers import InferenceObserver


class Component:
    """A subsystem the composition root wires in; subclasses override the hooks they use
    (the base one does nothing, which is also what a switched-off subsystem returns)."""

    def observers(self) -> list[InferenceObserver]:
        """Observers to add to the data plane."""
        return []

    def routers(self) -> list[APIRouter]:
        """HTTP routes to serve (not mounted in worker processes)."""
        return []

    async def start(self) -> None:
        """Start background work; called once the server (or worker) is ready."""

    async def stop(self) -> None:
        """Finish background work (flush what is buffered); called before shutdown."""
