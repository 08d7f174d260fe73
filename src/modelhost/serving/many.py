"""Several requests at once: the job worker's way to feed queued jobs to the models as batches.

Each request passes the same checks as :meth:`DataPlane.infer` (routing, breaker, limits,
validation, guards, the response cache, charging, metrics, records) on its own; one that fails
gets its own exception and the others go on. The admitted requests that share a model version
and parameters are merged into one runtime call. With ``on_chunk``, a one-input request to a
streaming model is generated chunk by chunk instead (``on_chunk(index, chunk)``), its result
assembled to match ``infer``'s (``{"text", "finish_reason"}``). A composite version (a cascade
or an LLM feature, whose work is other requests) goes through ``infer`` whole. A model's
failure (timeout, runtime error, breaker open) is answered by its fallbacks, as in ``infer``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelhost.errors import RuntimeFailure
from modelhost.manifest import RuntimeKind
from modelhost.registry import VersionInfo
from modelhost.runtimes import StreamChunk
from modelhost.security.keys import Principal
from modelhost.serving.batching import parameters_key, split_prediction
from modelhost.serving.caching import CacheLookup
from modelhost.serving.fallback import fall_back, may_fall_back
from modelhost.serving.models import Deployment
from modelhost.serving.router import Route
from modelhost.serving.streaming import generate_whole

if TYPE_CHECKING:
    from modelhost.serving.dataplane import DataPlane, InferenceRequest, InferenceResponse

#: Runtimes whose work is other requests: run through ``DataPlane.infer`` whole.
COMPOSITE = frozenset({RuntimeKind.CASCADE, RuntimeKind.FEATURE})
OnChunk = Callable[[int, StreamChunk], Awaitable[None]]


@dataclass(slots=True)
class _Admitted:
    """A request that passed its checks, waiting to run with its group."""

    index: int
    request: InferenceRequest
    dep: Deployment
    parameters: dict[str, Any]
    principal: Principal | None
    inputs: list[Any]
    guards: dict[str, Any]
    route: Route
    lookup: CacheLookup | None


@dataclass(slots=True)
class ManyRun:
    """One call of :meth:`DataPlane.infer_many`: what it gathered and what it answered."""

    plane: DataPlane
    requests: list[InferenceRequest]
    on_chunk: OnChunk | None = None
    started: float = field(default_factory=time.perf_counter)
    outcomes: list[Any] = field(default_factory=list)
    groups: dict[tuple[int, bytes | int], list[_Admitted]] = field(default_factory=dict)
    solo: list[int] = field(default_factory=list)
    whole: list[int] = field(default_factory=list)

    async def run(self) -> list[InferenceResponse | Exception]:
        """Admit every request, then run the groups, solos and wholes concurrently.

        Returns:
            One outcome per request, in order: its response or its exception.
        """
        self.outcomes = [None] * len(self.requests)
        await asyncio.gather(*(self._admit(i, r) for i, r in enumerate(self.requests)))
        await asyncio.gather(
            *(self._run_group(members) for members in self.groups.values()),
            *(self._run_solo(index) for index in self.solo),
            *(self._run_whole(index) for index in self.whole),
        )
        return [
            outcome if outcome is not None else RuntimeFailure("the request was not run")
            for outcome in self.outcomes
        ]

    def _lane(self, dep: Deployment, request: InferenceRequest) -> list[int] | None:
        """Where an admitted request runs apart from the groups (None: with its group)."""
        if dep.info.manifest.runtime in COMPOSITE:
            return self.whole
        runtime = dep.runtime
        assert runtime is not None
        if self.on_chunk is not None and runtime.supports_streaming and len(request.inputs) == 1:
            return self.solo
        return None

    async def _admit(self, index: int, request: InferenceRequest) -> None:
        plane = self.plane
        info: VersionInfo | None = None
        if request.queued_s is not None:
            plane.tracer.record("queue", request.queued_s, {"modelhost.job_id": request.request_id})
        try:
            route = await plane.route(request)
            info = route.info
            plane.breakers.admit(info)
            dep, parameters = plane.admit(info, request)
            lane = self._lane(dep, request)
            if lane is not None:
                lane.append(index)
                return
            principal, inputs, guards = await plane.secure(request, info)
            inputs = await plane.enrich(request, info, inputs)
            lookup = await plane.lookup(request, info, inputs, parameters, principal)
            if lookup is not None and lookup.results is not None:
                self.outcomes[index] = await plane.answer_cached(
                    request, dep, lookup, principal, self.started, route
                )
                return
        except Exception as exc:  # this request alone fails (or falls back); counted
            await self._fail(index, request, info, exc)
            return
        key = parameters_key(parameters)
        member = _Admitted(
            index, request, dep, parameters, principal, inputs, guards, route, lookup
        )
        self.groups.setdefault((id(dep), key if key is not None else -index - 1), []).append(member)

    async def _fail(
        self, index: int, request: InferenceRequest, info: VersionInfo | None, exc: Exception
    ) -> None:
        """Count ``exc`` against ``request``; answer it by a fallback when one applies."""
        self.plane.failed(request, info, exc, self.started)
        if info is None or not may_fall_back(request, info, exc):
            self.outcomes[index] = exc
            return
        try:
            self.outcomes[index] = await fall_back(self.plane.infer, request, info, exc)
        except Exception as final:  # no fallback could answer either
            self.outcomes[index] = final

    async def _run_group(self, members: list[_Admitted]) -> None:
        plane, head = self.plane, members[0]
        info = head.dep.info
        merged = [item for member in members for item in member.inputs]
        try:
            tick = time.perf_counter()
            prediction = await plane.predict(head.dep, merged, head.parameters)
            compute = time.perf_counter() - tick
            parts = split_prediction(prediction, [len(m.inputs) for m in members])
        except Exception as exc:  # the merged call failed: every member fails with it
            plane.breakers.failed(info, exc)
            await asyncio.gather(*(self._fail(m.index, m.request, info, exc) for m in members))
            return
        plane.breakers.succeeded(info)
        for member, part in zip(members, parts, strict=True):
            share = compute * len(member.inputs) / len(merged)
            try:
                response = await plane.respond(
                    member.request,
                    member.dep,
                    part,
                    member.principal,
                    member.guards,
                    self.started,
                    share,
                    member.route,
                )
                await plane.keep(member.lookup, response)
            except Exception as exc:  # charging failed (a budget ran out meanwhile)
                plane.failed(member.request, info, exc, self.started)
                self.outcomes[member.index] = exc
                continue
            self.outcomes[member.index] = response
            plane.offer_shadow(
                member.route,
                member.request,
                member.inputs,
                member.parameters,
                response.results,
                share,
            )

    async def _run_solo(self, index: int) -> None:
        on_chunk = self.on_chunk
        assert on_chunk is not None
        try:
            self.outcomes[index] = await generate_whole(
                self.plane, self.requests[index], lambda chunk: on_chunk(index, chunk)
            )
        except Exception as exc:  # counted by the stream; this request alone fails
            self.outcomes[index] = exc

    async def _run_whole(self, index: int) -> None:
        try:
            self.outcomes[index] = await self.plane.infer(self.requests[index])
        except Exception as exc:  # counted by infer(); this request alone fails
            self.outcomes[index] = exc
