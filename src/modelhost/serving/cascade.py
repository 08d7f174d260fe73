"""Cascades: a route of stages where a cheap model answers first and only the items it is
unsure of go on to a bigger one.

A ``runtime: cascade`` version (its ``cascade.stages`` in the manifest) is pushed, promoted
and called like any model, so every protocol reaches it. The data plane hands its requests to
the :class:`CascadeHandler` (a :class:`~modelhost.serving.handlers.Handler`), which runs
each stage as a child request through the whole request path
(auth, limits, validation and charging apply per stage, with the caller's principal). After a
stage, the items its escalation rule flags (score under ``min_score``, a label in
``escalate_labels``, input text matching ``escalate_pattern``) go on to the next stage; the
others keep that stage's answer. The last stage answers whatever is left. Results come back in
input order, with a ``cascade`` decision (in the response body and the provenance record)
saying which stage answered each item and what was saved.

``cost_saved`` estimates what the last stage would have cost for the items an earlier stage
answered, under the last stage's pricing: per item or per request exactly, per token by the
first stage's input tokens for those items. Each stage's own cost is counted by usage under
that stage's model; the cascade version's record carries no cost of its own, so nothing is
counted twice.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelhost.inference import InferenceRequest, InferenceResponse, Usage
from modelhost.manifest import CascadeConfig, CascadeStage, RuntimeKind
from modelhost.registry import VersionInfo
from modelhost.security.ratelimit import price_of
from modelhost.serving.fallback import child_request
from modelhost.serving.handlers import Composed, Handler

if TYPE_CHECKING:
    from modelhost.serving.dataplane import Admitted, DataPlane

log = logging.getLogger("modelhost.cascade")


def _text_of(item: Any, stage: CascadeStage) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        value = item.get(stage.text_field)
        return value if isinstance(value, str) else None
    return None


def escalates(stage: CascadeStage, item: Any, result: Any) -> bool:
    """True when ``stage``'s answer ``result`` to ``item`` must go on to the next stage."""
    fields = result if isinstance(result, dict) else {}
    if stage.min_score is not None:
        score = fields.get(stage.score_field)
        if not isinstance(score, int | float) or score < stage.min_score:
            return True
    if stage.escalate_labels and fields.get(stage.label_field) in stage.escalate_labels:
        return True
    if stage.escalate_pattern is not None:
        text = _text_of(item, stage)
        if text is not None and re.search(stage.escalate_pattern, text):
            return True
    return False


@dataclass(slots=True)
class _Run:
    """What one cascade request has gathered so far."""

    size: int
    results: list[Any] = field(default_factory=list)
    answered_by: list[int] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    first_tokens: int = 0

    def __post_init__(self) -> None:
        self.results = [None] * self.size
        self.answered_by = [-1] * self.size

    def take(self, number: int, response: InferenceResponse, answered: list[int]) -> None:
        """Keep stage ``number``'s answers for the items ``answered`` (input positions)."""
        self.usage.add(response.usage)
        if number == 0:
            self.first_tokens = response.usage.input_tokens
        self.stages.append(
            {
                "model": response.model,
                "version": response.version,
                "items": len(response.results),
                "answered": len(answered),
                "cost": response.usage.cost,
            }
        )


async def _stage(
    plane: DataPlane,
    request: InferenceRequest,
    info: VersionInfo,
    number: int,
    stage: CascadeStage,
    pending: list[int],
) -> InferenceResponse:
    child = child_request(request, stage.model, ("cascade", {"route": info.ref, "stage": number}))
    child.inputs = [request.inputs[i] for i in pending]
    child.body_bytes = 0  # the cascade's own limit was checked; a stage sees a share of it
    return await plane.infer(child)


async def _saved(plane: DataPlane, config: CascadeConfig, run: _Run) -> dict[str, Any]:
    """``cost_saved`` and its currency under the last stage's pricing."""
    early = sum(1 for n in run.answered_by if n < len(config.stages) - 1)
    name, _, version = config.stages[-1].model.partition("@")
    try:
        pricing = (await plane.manager.resolve(name, version or None)).manifest.pricing
    except Exception:  # the last stage went away meanwhile: nothing to price against
        log.debug("cascade: cannot price the last stage %s", config.stages[-1].model)
        pricing = None
    if pricing is None or early == 0:
        return {"cost_saved": 0.0}
    tokens = round(run.first_tokens * early / run.size)
    saved = price_of(pricing, Usage(input_tokens=tokens), early)
    if len(run.stages) == len(config.stages):  # the last stage was called: its fee was paid
        saved -= pricing.per_request + (pricing.input if pricing.unit == "request" else 0.0)
    return {"cost_saved": round(max(0.0, saved), 12), "currency": pricing.currency}


class CascadeHandler(Handler):
    """Answers ``runtime: cascade`` versions stage by stage."""

    kind = RuntimeKind.CASCADE

    async def answer(self, plane: DataPlane, admitted: Admitted) -> Composed:
        """Run the stages; the items a stage is unsure of go on to the next.

        Raises:
            ModelhostError: a stage's error, as the caller would get it from that stage.
        """
        request, info = admitted.request, admitted.info
        config = info.manifest.cascade
        assert config is not None  # the manifest refuses runtime cascade without it
        run = _Run(len(request.inputs))
        pending = list(range(run.size))
        last = len(config.stages) - 1
        for number, stage in enumerate(config.stages):
            response = await _stage(plane, request, info, number, stage, pending)
            escalated, answered = [], []
            for index, result in zip(pending, response.results, strict=True):
                if number < last and escalates(stage, request.inputs[index], result):
                    escalated.append(index)
                    continue
                run.results[index], run.answered_by[index] = result, number
                answered.append(index)
            run.take(number, response, answered)
            pending = escalated
            if not pending:
                break
        decision = {
            "stages": run.stages,
            "answered_by": run.answered_by,
            "escalated": sum(1 for n in run.answered_by if n > 0),
            **(await _saved(plane, config, run)),
        }
        run.usage.saved = decision["cost_saved"]
        # the stages' own records carry their cost: this one carries only what was saved
        currency = decision.get("currency")
        own = Usage(cost=0.0 if currency else None, currency=currency, saved=decision["cost_saved"])
        return Composed(run.results, run.usage, ("cascade", decision), recorded=own)
