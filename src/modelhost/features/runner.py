"""Running a feature version: render, call the model, enforce the output schema.

The data plane hands a request to a ``runtime: feature`` version to the
:class:`FeatureRunner` (its :class:`~modelhost.serving.handlers.Handler`) after its ``prepare``
phase: routing (a tenant pin is a route), readiness, limits, input validation, the feature's
scope, limits, budget and input guards (as for any model), and the response cache (greedy
features without a conversation, keyed by the spec's digest with the tenant's override:
:meth:`FeatureRunner.cache_parameters`). For each input:

1. the tenant's override (:mod:`modelhost.features.tenants`), if any, replaces template,
   instructions, parameters or examples;
2. the sandboxed template is rendered with every caller value fenced as data
   (:mod:`modelhost.features.template`); a conversation adds its fitted history
   (:mod:`modelhost.features.context`);
3. the model is called through the whole request path as a child request (its own auth,
   limits, guards, charging and provenance, with ``decisions.feature``), with
   ``response_format`` so a runtime that can constrains decoding to the output schema; an
   answer that still does not validate is sent back with the error, at most
   ``repair_retries`` times (:mod:`modelhost.features.structured`).

The response holds the validated outputs and a ``feature`` decision (name, version, model and
version that answered, template and spec digests, attempts, override, session), also in the
provenance record of the feature call. The model calls carry the tokens and cost; the
feature's own record carries only its own pricing, so nothing is counted twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from modelhost.cache.exact import greedy
from modelhost.errors import ModelNotReady, RuntimeFailure
from modelhost.features.context import ContextWindow, ConversationState, Turn
from modelhost.features.structured import generate_valid, output_validator
from modelhost.features.template import FeatureTemplate
from modelhost.inference import Usage
from modelhost.manifest import FeatureConfig, RuntimeKind
from modelhost.registry import VersionInfo
from modelhost.security.keys import ANONYMOUS, Principal
from modelhost.security.prompts import fence
from modelhost.serving.fallback import child_request
from modelhost.serving.handlers import Composed, Handler

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

    from modelhost.features.sessions import SessionStore
    from modelhost.features.tenants import TenantControls
    from modelhost.inference import InferenceRequest, InferenceResponse
    from modelhost.serving.dataplane import Admitted, DataPlane

log = logging.getLogger("modelhost.features")
#: Templates and validators kept compiled (by digest / version).
_COMPILED = 256
#: Most an answer cut at ``max_tokens`` may grow the next attempt's budget (times the spec's).
_MAX_GROWTH = 4
SUMMARY_INSTRUCTIONS = (
    "Summarise the conversation in the data below in a few short sentences: the facts, "
    "names, numbers and requests a later reply needs. Answer with the summary only."
)


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` as budgets count them: about four characters per token."""
    return max(1, (len(text) + 3) // 4)


@dataclass(slots=True)
class _Call:
    """What the model calls of one input gathered."""

    usage: Usage = field(default_factory=Usage)
    model: str = ""
    version: str = ""

    def add(self, response: InferenceResponse) -> None:
        self.usage.add(response.usage)
        self.model, self.version = response.model, response.version


@dataclass(slots=True)
class _Invocation:
    """One request to a feature version, as the runner sees it."""

    plane: DataPlane
    request: InferenceRequest
    info: VersionInfo
    config: FeatureConfig
    principal: Principal | None
    override: bool
    session: str | None
    calls: list[_Call] = field(default_factory=list)


class FeatureRunner(Handler):
    """Runs feature versions for the data plane (given to it by the composition root)."""

    kind = RuntimeKind.FEATURE
    screens = True

    def __init__(
        self, controls: TenantControls | None = None, sessions: SessionStore | None = None
    ) -> None:
        self.controls = controls
        self.sessions = sessions
        self._templates: dict[str, FeatureTemplate] = {}
        self._validators: dict[str, Validator] = {}

    def config_for(self, info: VersionInfo, tenant: str) -> tuple[FeatureConfig, bool]:
        """The version's feature config with ``tenant``'s override applied, and whether one
        was."""
        config = info.manifest.feature
        if config is None:
            raise RuntimeFailure(f"{info.ref} is not a feature")
        override = self.controls.override(tenant, info.model) if self.controls else None
        if override is None:
            return config, False
        return override.apply(config), True

    def template(self, config: FeatureConfig) -> FeatureTemplate:
        """The compiled template of ``config`` (kept by digest)."""
        digest = config.template_digest()
        found = self._templates.get(digest)
        if found is None:
            if len(self._templates) >= _COMPILED:
                self._templates.clear()
            found = self._templates[digest] = FeatureTemplate(config.template)
        return found

    def validator(self, info: VersionInfo) -> Validator:
        """The output schema's validator of a version (kept by version)."""
        found = self._validators.get(info.ref)
        if found is None:
            if len(self._validators) >= _COMPILED:
                self._validators.clear()
            found = output_validator(info.manifest.output_schema)
            self._validators[info.ref] = found
        return found

    def cache_parameters(self, admitted: Admitted) -> dict[str, Any] | None:
        """The spec's digest with the tenant's override, for a greedy feature without a
        conversation (None otherwise: a sampled or conversational answer is not reused)."""
        config, _ = self.config_for(admitted.info, (admitted.principal or ANONYMOUS).tenant)
        if _session(admitted.request, config) is not None:
            return None
        if not greedy(config.model_parameters()):
            return None
        return {"feature": config.digest()}

    async def answer(self, plane: DataPlane, admitted: Admitted) -> Composed:
        """Answer an admitted request to a feature version, input by input.

        Raises:
            ModelhostError: the caller's error (input, limits), the model's failure, or
                :class:`RuntimeFailure` when no answer matched the output schema.
        """
        request, info, principal = admitted.request, admitted.info, admitted.principal
        config, override = self.config_for(info, (principal or ANONYMOUS).tenant)
        session = _session(request, config)
        job = _Invocation(plane, request, info, config, principal, override, session)
        results = [await self._one(job, item) for item in admitted.inputs]
        return self._composed(job, results, admitted.started)

    async def _one(self, job: _Invocation, item: Any) -> Any:
        config = job.config
        rendered = self.template(config).render(
            item, examples=[(e.input, e.output) for e in config.examples]
        )
        messages = rendered.messages(config.instructions or None)
        state: ConversationState | None = None
        window: ContextWindow | None = None
        if job.session is not None and self.sessions is not None:
            window = _window(config)
            stored = await self.sessions.load(_tenant(job), job.info.model, job.session)
            history, state = await window.fit(
                stored, _text(item), lambda summary, turns: self._summarise(job, summary, turns)
            )
            messages = _with_history(messages, history, rendered.boundary)
        call = _Call()
        job.calls.append(call)

        budget = _Budget(config.model_parameters().get("max_tokens"))

        async def model_call(chat: list[dict[str, str]], extra: dict[str, Any]) -> str:
            response = await self._call(job, chat, {**extra, **budget.parameters()}, call)
            result = response.results[0]
            budget.saw(result.get("finish_reason"))
            return str(result.get("text", ""))

        outcome = await generate_valid(
            model_call,
            messages,
            schema=job.info.manifest.output_schema,
            validator=self.validator(job.info),
            retries=config.repair_retries,
            constrained=config.constrained,
            name=job.info.model.replace(".", "_").replace("-", "_"),
        )
        if window is not None and state is not None and self.sessions is not None:
            state = window.append(state, "user", _text(item))
            state = window.append(state, "assistant", _text(outcome.value))
            await self.sessions.save(
                _tenant(job), job.info.model, job.session or "", state, config.conversation.ttl_s
            )
        return {"value": outcome.value, "attempts": outcome.attempts}

    async def _call(
        self, job: _Invocation, chat: list[dict[str, str]], extra: dict[str, Any], call: _Call
    ) -> InferenceResponse:
        decision = {"name": job.info.ref, "override": job.override}
        child = child_request(job.request, job.config.model, ("feature", decision))
        child.inputs = [{"messages": chat}]
        child.parameters = {**job.config.model_parameters(), **extra}
        child.body_bytes = 0
        child.no_cache = True  # each render has its own fence id: nothing to find
        try:
            response = await job.plane.infer(child)
        except ModelNotReady:
            if not await _loaded_here(job.plane, child):
                raise
            response = await job.plane.infer(child)
        call.add(response)
        return response

    async def _summarise(self, job: _Invocation, summary: str, turns: Sequence[Turn]) -> str:
        """Fold older turns into the running summary with the feature's own model."""
        lines = [f"{turn.role}: {turn.content}" for turn in turns]
        data = (f"Earlier summary: {summary}\n" if summary else "") + "\n".join(lines)
        from modelhost.security.prompts import data_preamble, new_boundary

        boundary = new_boundary()
        chat = [
            {"role": "system", "content": f"{data_preamble(boundary)}\n\n{SUMMARY_INSTRUCTIONS}"},
            {"role": "user", "content": fence(data, boundary, "conversation")},
        ]
        budget = job.config.conversation.summary_tokens
        response = await self._call(job, chat, {"max_tokens": budget}, _Call())
        return str(response.results[0].get("text", "")).strip()

    def _composed(self, job: _Invocation, results: list[Any], started: float) -> Composed:
        plane, info = job.plane, job.info
        usage = Usage()
        for call in job.calls:
            usage.add(call.usage)
        last = job.calls[-1] if job.calls else _Call()
        decision: dict[str, Any] = {
            "name": info.model,
            "version": info.version,
            "model": last.model,
            "model_version": last.version,
            "template_digest": job.config.template_digest(),
            "spec_digest": job.config.digest(),
            "attempts": [r["attempts"] for r in results],
            "override": job.override,
        }
        if job.session is not None:
            decision["session"] = job.session
        own = Usage()
        plane.price(info, own, len(results), time.perf_counter() - started)
        usage.add(own)
        outputs = [r["value"] for r in results]
        return Composed(outputs, usage, ("feature", decision), recorded=own, prefix="feat")


def _text(value: Any) -> str:
    """A turn as stored: compact JSON of the input or the validated answer."""
    return orjson.dumps(value).decode()


class _Budget:
    """``max_tokens`` of a feature's attempts: an answer cut short at ``max_tokens`` is never
    valid JSON, and a repair with the same budget would be cut the same way, so the next
    attempt gets twice the budget (at most ``_MAX_GROWTH`` times the spec's)."""

    def __init__(self, declared: Any) -> None:
        self.declared = declared if isinstance(declared, int) and declared > 0 else None
        self.current = self.declared

    def parameters(self) -> dict[str, Any]:
        """What the next call overrides (nothing until an answer was cut)."""
        if self.current is None or self.current == self.declared:
            return {}
        return {"max_tokens": self.current}

    def saw(self, finish_reason: Any) -> None:
        """Note how the last answer ended."""
        if finish_reason == "length" and self.current is not None and self.declared is not None:
            self.current = min(self.current * 2, self.declared * _MAX_GROWTH)


def _tenant(job: _Invocation) -> str:
    return (job.principal or job.request.principal or ANONYMOUS).tenant


def _session(request: InferenceRequest, config: FeatureConfig) -> str | None:
    """The conversation this call belongs to (``parameters.session`` or ``X-Session-ID``);
    None for a feature without conversations."""
    if not config.conversation.enabled:
        return None
    named = request.parameters.get("session")
    return str(named) if named else request.session


def _window(config: FeatureConfig) -> ContextWindow:
    conversation = config.conversation
    return ContextWindow(
        conversation.budget_tokens,
        keep_recent=conversation.keep_recent,
        summary_budget=min(conversation.summary_tokens, conversation.budget_tokens - 1),
        count=estimate_tokens,
    )


def _with_history(
    messages: list[dict[str, str]], history: list[dict[str, str]], boundary: str
) -> list[dict[str, str]]:
    """The feature's chat with a conversation's history before the new user message: the
    summary joins the system message and user turns are fenced with this render's boundary
    (both came from users);
    user and assistant turns alternate, as strict chat templates require."""
    system, *rest = messages
    content = system["content"]
    turns = []
    for message in history:
        if message["role"] == "system":  # the summary of older turns, written from user text
            content += "\n\n" + fence(message["content"], boundary, "earlier-conversation")
        elif message["role"] == "user":
            turns.append({"role": "user", "content": fence(message["content"], boundary)})
        else:
            turns.append(message)
    *shots, current = rest
    return [{"role": "system", "content": content}, *shots, *turns, current]


async def _loaded_here(plane: DataPlane, child: InferenceRequest) -> bool:
    """Wait for the answering model when this process is loading it; True once it is ready.

    A process that loads versions on demand (the promotion gates run by ``modelhost features
    push --stage production`` or ``modelhost models promote`` load only the candidate) starts
    loading the feature's model on its first call: the call waits for that load once, within
    its own timeout, instead of failing every golden case with "is loading"."""
    from modelhost.serving.models import ModelState

    route = await plane.route(child)
    dep = plane.manager.deployment(route.info.ref)
    if dep is None or dep.state is not ModelState.LOADING:
        return False
    await dep.loaded.wait()
    return dep.runtime is not None  # set by a load that succeeded, None after a failure
