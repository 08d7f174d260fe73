"""Which version answers a request: pins, the production/canary split, shadows.

The router runs in the :class:`~modelhost.serving.dataplane.DataPlane` for every protocol and
for jobs. An explicit version (``X-Model-Version``, ``model@1.2.0``, a stage or an alias)
bypasses the split. Otherwise the model's :class:`~modelhost.registry.DeploymentSpec` decides:
a canary takes ``weight`` percent of callers, chosen by a stable hash of the model and the
caller's sticky key (the principal, or the ``X-Session-ID`` header), so a caller stays on one
side while the weight holds, and one already on the canary stays there as a ramp raises it.
A caller with no identity at all (no key, no session) is split per request.

A switch is atomic on each replica and loses nothing: a version the split names but which is
not loaded *here* yet (a new canary, a just-promoted production) starts loading, and requests
keep going to the version that was serving (the former production) until it is ready.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from modelhost.errors import VersionNotFound
from modelhost.registry import DeploymentSpec, ModelInfo, Sticky, VersionInfo, resolve_in
from modelhost.serving.models import ModelState

if TYPE_CHECKING:
    from modelhost.inference import InferenceRequest
    from modelhost.serving.models import ModelManager

#: The header a caller names its session with (``Sticky.SESSION``).
SESSION_HEADER = "x-session-id"
#: Buckets of the split: weights are honoured to 0.01 percent.
BUCKETS = 10_000


class Arm:
    """Which side of a deployment a request went to (the ``route`` decision)."""

    PINNED = "pinned"  #: the caller named a version, stage or alias
    PRODUCTION = "production"  #: the production version, by the split or alone
    CANARY = "canary"  #: the canary, by the split
    FALLBACK = "fallback"  #: the former production: the split's choice is not loaded here yet
    TENANT = "tenant"  #: the caller's tenant pinned the model (a feature) to this version


class TenantPins(Protocol):
    """Versions tenants pinned their models to (read from memory on every request)."""

    def pinned(self, tenant: str, model: str) -> str | None:
        """The version ``tenant`` pinned ``model`` to, if any."""
        ...


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes."""

    info: VersionInfo
    arm: str
    shadows: tuple[VersionInfo, ...] = ()
    """Versions that get a copy of the request off the hot path."""

    def decision(self) -> dict[str, Any]:
        """The ``route`` entry of the request's provenance record."""
        return {"arm": self.arm, "version": self.info.version}


class ShadowSink(ABC):
    """Takes copies of answered requests for the route's shadow versions."""

    @abstractmethod
    def offer(
        self,
        route: Route,
        request: InferenceRequest,
        inputs: list[Any],
        parameters: dict[str, Any],
        results: list[Any],
        seconds: float,
    ) -> None:
        """Note a copy of an answered request (``results`` as the caller got them,
        ``seconds`` its runtime call); called on the event loop, so it must only enqueue
        (dropping when full), never wait."""


def bucket(model: str, key: str) -> int:
    """The caller's place in ``[0, BUCKETS)`` for ``model``: the same for the same key."""
    digest = hashlib.blake2b(f"{model}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def sticky_key(spec: DeploymentSpec, request: InferenceRequest) -> str:
    """What keeps this caller on one side: session, principal, or (anonymous) the request."""
    if spec.sticky is Sticky.SESSION and request.session:
        return f"s:{request.session}"
    who = request.principal
    if who is not None and who.subject != "anonymous":
        return f"p:{who.tenant}:{who.subject}"
    if request.session:
        return f"s:{request.session}"
    return f"r:{request.request_id}"


class Router:
    """Chooses the version of each request from the deployments the manager holds."""

    def __init__(self, manager: ModelManager, pins: TenantPins | None = None) -> None:
        self.manager = manager
        self.pins = pins
        """Tenant pins (the features component's); a version named by the caller wins."""

    async def route(self, request: InferenceRequest) -> Route:
        """The version ``request`` goes to, and the shadows that get a copy.

        Raises:
            ModelNotFound, VersionNotFound: as :meth:`ModelManager.resolve` (which re-reads
                the registry once on a miss, as this does).
        """
        try:
            return await self._route(request)
        except VersionNotFound:
            if not await self.manager.refresh():
                raise
            return await self._route(request)

    async def _route(self, request: InferenceRequest) -> Route:
        model = await self.manager.model(request.model)
        if request.version is not None:
            return Route(resolve_in(model, request.version), Arm.PINNED)
        if self.pins is not None and request.principal is not None:
            pinned = self.pins.pinned(request.principal.tenant, request.model)
            if pinned is not None:
                return await self._tenant_route(model, pinned)
        spec = self.manager.spec(request.model)
        production = resolve_in(model, None)
        chosen, arm = production, Arm.PRODUCTION
        if spec.splitting and bucket(request.model, sticky_key(spec, request)) < round(
            spec.weight * BUCKETS / 100
        ):
            canary = self._version(model.versions, spec.canary)
            if canary is not None:
                chosen, arm = canary, Arm.CANARY
        if not self._ready(chosen):
            chosen, arm = self._fallback(model.versions, spec, chosen, arm, production)
        shadows = tuple(
            v
            for name in spec.shadows
            if name != chosen.version and (v := self._version(model.versions, name)) is not None
        )
        return Route(chosen, arm, shadows)

    async def _tenant_route(self, model: ModelInfo, pinned: str) -> Route:
        """The version a tenant pinned, loaded here first if it is not (a feature version
        loads in milliseconds: it holds no model of its own)."""
        info = resolve_in(model, pinned)
        if not self._ready(info):
            await self.manager.load(info)
        return Route(info, Arm.TENANT)

    @staticmethod
    def _version(versions: list[VersionInfo], name: str | None) -> VersionInfo | None:
        return next((v for v in versions if v.version == name), None)

    def _ready(self, info: VersionInfo) -> bool:
        dep = self.manager.deployment(info.ref)
        return dep is not None and dep.state is ModelState.READY

    def _fallback(
        self,
        versions: list[VersionInfo],
        spec: DeploymentSpec,
        chosen: VersionInfo,
        arm: str,
        production: VersionInfo,
    ) -> tuple[VersionInfo, str]:
        """A ready stand-in for a version not loaded here yet (which starts loading now):
        production for a canary, else the newest former production that is loaded."""
        dep = self.manager.deployment(chosen.ref)
        if dep is None or dep.state is ModelState.UNLOADED:  # a failed load is not retried here
            self.manager.start_loading(chosen)
        if arm == Arm.CANARY and self._ready(production):
            return production, Arm.PRODUCTION
        for name in spec.previous:
            former = self._version(versions, name)
            if former is not None and self._ready(former):
                return former, Arm.FALLBACK
        return chosen, arm  # nothing better: the caller gets the loading version's 503
