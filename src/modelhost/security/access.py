"""The data plane's security steps, in one object so every protocol gets them:

before inference — the principal's ``predict`` scope, rate limits, token quotas and budget,
prompt-injection scoring (allow / flag / block) and fencing of user content; after inference —
output guards (PII redaction, blocked content) and charging tokens and cost.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from modelhost.errors import InvalidInput
from modelhost.inference import Usage
from modelhost.registry import VersionInfo
from modelhost.runtimes import StreamChunk
from modelhost.security.guards import OutputGuard
from modelhost.security.injection import Action, InjectionDetector, InjectionScore, decide
from modelhost.security.keys import ANONYMOUS, Principal, Scope
from modelhost.security.policy import GuardsConfig
from modelhost.security.prompts import safe_messages, user_texts
from modelhost.security.ratelimit import RateLimiter


@dataclass(slots=True)
class Screening:
    """What the input guards found and did for one request."""

    inputs: list[Any]
    flags: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Compiled:
    guards: GuardsConfig
    output: OutputGuard | None


def _texts(item: Any) -> list[str]:
    if isinstance(item, str):
        return [item]
    if isinstance(item, dict):
        if isinstance(item.get("messages"), list):
            return user_texts(item["messages"])
        return [item[key] for key in ("prompt", "text", "input") if isinstance(item.get(key), str)]
    return []


class AccessControl:
    """Security steps of the request path; one per server process."""

    def __init__(
        self,
        limiter: RateLimiter,
        detector: Callable[[], InjectionDetector],
        *,
        fence_secret: bytes | None = None,
    ) -> None:
        self.limiter = limiter
        self._detector = detector
        self._secret = fence_secret or secrets.token_bytes(32)
        self._compiled: dict[str, _Compiled] = {}

    def _for(self, info: VersionInfo) -> _Compiled:
        found = self._compiled.get(info.ref)
        if found is None:
            guards = info.manifest.guards
            output = guards.output if guards.output is not None and guards.output.active else None
            found = _Compiled(guards, OutputGuard(output) if output is not None else None)
            self._compiled[info.ref] = found
        return found

    async def admit(self, principal: Principal | None, info: VersionInfo) -> Principal:
        """Check the ``predict`` scope and every limit; returns the principal counted."""
        who = principal or ANONYMOUS
        who.require(Scope.PREDICT)
        await self.limiter.admit(who, info)
        return who

    def needs_screening(self, info: VersionInfo) -> bool:
        """True when the version scores or rewrites its inputs."""
        guards = self._for(info).guards
        return guards.prompt_injection is not None or guards.fence_user_content

    def screen(self, info: VersionInfo, inputs: list[Any]) -> Screening:
        """Score LLM inputs for prompt injection and fence user content; runs in the pool.

        Raises:
            InvalidInput: the policy is ``block`` and a request scores at or over the threshold.
        """
        guards = self._for(info).guards
        screening = Screening(inputs=inputs)
        if guards.prompt_injection is not None:
            texts = [text for item in inputs for text in _texts(item)]
            score: InjectionScore = self._detector().score_request(texts)
            policy = guards.prompt_injection
            action = decide(score, policy.action, policy.threshold)
            if action is Action.BLOCK:
                raise InvalidInput(
                    "the request was refused: it looks like a prompt injection "
                    f"(score {score.score:.2f}: {', '.join(score.reasons[:3])})",
                    param="inputs",
                )
            if action is Action.FLAG:
                screening.flags["prompt_injection"] = {
                    "score": round(score.score, 3),
                    "reasons": score.reasons[:5],
                }
        if guards.fence_user_content:
            screening.inputs = [self._fenced(item) for item in inputs]
        return screening

    def _fenced(self, item: Any) -> Any:
        if not isinstance(item, dict) or not isinstance(item.get("messages"), list):
            return item
        # a boundary derived from the content and a server secret: unguessable, yet the same
        # request renders the same prompt (so a fixed seed still reproduces an answer)
        digest = hmac.new(self._secret, repr(item["messages"]).encode(), hashlib.sha256)
        return {**item, "messages": safe_messages(item["messages"], digest.hexdigest()[:16])}

    def guard_results(
        self, info: VersionInfo, results: list[Any]
    ) -> tuple[list[Any], dict[str, int]]:
        """Apply the version's output guard to the results.

        Raises:
            ContentBlocked: blocked content under a ``block`` policy.
        """
        guard = self._for(info).output
        if guard is None:
            return results, {}
        guarded = guard.enforce(results)
        return list(guarded.value), dict(guarded.redactions)

    def guard_stream(
        self, info: VersionInfo, chunks: Iterator[StreamChunk]
    ) -> tuple[Iterator[StreamChunk], Callable[[], dict[str, int]]]:
        """Wrap a runtime stream in the output guard (patterns split across chunks included);
        returns the wrapped stream and a function giving the redaction counts at the end."""
        guard = self._for(info).output
        if guard is None:
            return chunks, dict
        redactor = guard.stream()
        return redactor.wrap(chunks), lambda: dict(redactor.redactions)

    async def charge(
        self, principal: Principal, info: VersionInfo, usage: Usage, items: int
    ) -> float:
        """Count tokens and cost of a finished call; returns the cost."""
        return await self.limiter.charge(principal, info, usage, items)
