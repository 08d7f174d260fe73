"""The optional subsystems that hang off the data plane (provenance, drift, usage).

Each is a :class:`Component` the composition root builds from the collaborators it names: it
may watch inferences (observers on the data plane) and run background work between
:meth:`Component.start` and :meth:`Component.stop`, in servers and in ``modelhost worker``
processes alike. A component offers plain objects; which of them are served over HTTP, and
how, is the business of ``modelhost.api`` and the composition root that mounts its routers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from modelhost.inference import InferenceObserver

log = logging.getLogger("modelhost")


class Component:
    """A subsystem the composition root wires in; subclasses override the hooks they use
    (the base one does nothing, which is also what a switched-off subsystem returns)."""

    def observers(self) -> list[InferenceObserver]:
        """Observers to add to the data plane."""
        return []

    async def start(self) -> None:
        """Start background work; called once the server (or worker) is ready."""

    async def stop(self) -> None:
        """Finish background work (flush what is buffered); called before shutdown."""


class PeriodicComponent(Component):
    """A component whose background work is one :meth:`tick` every ``interval`` seconds; a
    tick that fails is logged and the next one runs on time."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        """One round of the background work."""

    async def start(self) -> None:
        """Start ticking."""
        if self._task is None:
            self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        """Stop ticking (a tick under way is cancelled)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception:  # a database hiccup must not stop the ticks; it is logged
                log.exception("%s: periodic work failed", type(self).__name__)


class Every(PeriodicComponent):
    """One periodic job of a component that has several (``work`` every ``interval``)."""

    def __init__(self, interval: float, work: Callable[[], Awaitable[None]]) -> None:
        super().__init__(interval)
        self.work = work

    async def tick(self) -> None:
        """Run the job once."""
        await self.work()
