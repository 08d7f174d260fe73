"""Several requests at once: the job worker's way to feed queued jobs to the models as batches.

Each request goes through the same two phases as :meth:`DataPlane.infer` (``prepare``:
routing, breaker, limits, validation, guards, the response cache; ``finish``: charging,
metrics, records) on its own; one that fails
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
from modelhost.inference import InferenceRequest, InferenceResponse
from modelhost.runtimes import StreamChunk
from modelhost.serving.batching import parameters_key, split_prediction
from modelhost.serving.streaming import generate_whole

if TYPE_CHECKING:
    from modelhost.serving.dataplane import Admitted, DataPlane

OnChunk = Callable[[int, StreamChunk], Awaitable[None]]


@dataclass(slots=True)
class ManyRun:
    """One call of :meth:`DataPlane.infer_many`: what it gathered and what it answered."""

    plane: DataPlane
    requests: list[InferenceRequest]
    on_chunk: OnChunk | None = None
    started: float = field(default_factory=time.perf_counter)
    outcomes: list[Any] = field(default_factory=list)
    groups: dict[tuple[int, bytes | int], list[tuple[int, Admitted]]] = field(default_factory=dict)
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

    def _apart(self, admitted: Admitted) -> list[int] | None:
        """Where an accepted request runs apart from the groups (None: with its group)."""
        if admitted.handler is not None:
            return self.whole
        runtime = admitted.dep.runtime
        assert runtime is not None
        streams = runtime.supports_streaming and len(admitted.request.inputs) == 1
        return self.solo if self.on_chunk is not None and streams else None

    async def _admit(self, index: int, request: InferenceRequest) -> None:
        plane = self.plane
        if request.queued_s is not None:
            plane.tracer.record("queue", request.queued_s, {"modelhost.job_id": request.request_id})
        try:
            admitted = await plane.accept(request, self.started)
            apart = self._apart(admitted)
            if apart is not None:  # infer() or a stream prepares it whole (routed already)
                apart.append(index)
                return
            await plane.screen(admitted)
            if admitted.answered is not None:
                self.outcomes[index] = admitted.answered
                return
        except Exception as exc:  # this request alone fails (or falls back); counted
            await self._fail(index, request, exc)
            return
        key = parameters_key(admitted.parameters)
        group = (id(admitted.dep), key if key is not None else -index - 1)
        self.groups.setdefault(group, []).append((index, admitted))

    async def _fail(
        self, index: int, request: InferenceRequest, exc: Exception, *, judged: bool = False
    ) -> None:
        """Count ``exc`` against ``request``; answer it by a fallback when one applies."""
        try:
            self.outcomes[index] = await self.plane.recover(
                request, exc, self.started, self.plane.infer, judged=judged
            )
        except Exception as final:  # no fallback applies, or none could answer either
            self.outcomes[index] = final

    async def _run_group(self, members: list[tuple[int, Admitted]]) -> None:
        plane, head = self.plane, members[0][1]
        merged = [item for _, member in members for item in member.inputs]
        try:
            tick = time.perf_counter()
            prediction = await plane.predict(head.dep, merged, head.parameters)
            compute = time.perf_counter() - tick
            parts = split_prediction(prediction, [len(m.inputs) for _, m in members])
        except Exception as exc:  # the merged call failed: every member fails with it, once
            plane.breakers.failed(head.info, exc)
            await asyncio.gather(*(self._fail(i, m.request, exc, judged=True) for i, m in members))
            return
        for (index, member), part in zip(members, parts, strict=True):
            share = compute * len(member.inputs) / len(merged)
            try:
                self.outcomes[index] = await plane.finish(member, part, share)
            except Exception as exc:  # charging failed (a budget ran out meanwhile)
                plane.failed(member.request, member.info, exc, self.started)
                self.outcomes[index] = exc

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
