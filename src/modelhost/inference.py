"""The types every layer shares: what a call to a model is, what it answers, what it costs,
and what observers are told when it ends.

A leaf module: it imports nothing of modelhost at run time (the names under
``TYPE_CHECKING`` are only for annotations), so transports, the data plane, runtimes and the
subsystems that watch inferences (provenance, drift, usage) can all use it without importing
each other.
"""

from __future__ import annotations

import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelhost.featurestore.online import Served
    from modelhost.registry import VersionInfo
    from modelhost.security.keys import Principal
    from modelhost.serving.router import Route

#: The ``protocol`` label of a request whose transport did not name itself.
ANY_PROTOCOL = "any"
#: Protocols of requests that are not live traffic (replays, promotion gates' runs).
NOT_LIVE = frozenset({"replay", "gate"})


def new_id(prefix: str) -> str:
    """A short random id such as ``pred_3f2a…``."""
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(slots=True)
class Usage:
    """Token (or item) counts of one call, and its price once the data plane priced it."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    """What the call cost under the version's pricing; None when it has none."""
    currency: str | None = None
    saved: float | None = None
    """What the call did not cost because a cache answered it or an earlier cascade stage
    did, under the pricing of the version that would have run (``cost_saved``)."""

    @property
    def total_tokens(self) -> int:
        """Input plus output."""
        return self.input_tokens + self.output_tokens

    def add(self, other: Usage) -> None:
        """Accumulate another call's counts and cost (a cost stays None until a priced call
        is added; the first currency seen is kept)."""
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        if other.cost is not None:
            self.cost = (self.cost or 0.0) + other.cost
            self.currency = self.currency or other.currency

    def as_dict(self) -> dict[str, Any]:
        """The ``usage`` object of a response (with ``cost`` and ``currency`` when priced)."""
        body: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cost is not None:
            body["cost"] = self.cost
            body["currency"] = self.currency
        if self.saved is not None:
            body["cost_saved"] = self.saved
        return body


@dataclass(slots=True)
class InferenceRequest:
    """One call to a model, whatever protocol it came by."""

    model: str
    inputs: list[Any] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    """Exact version, alias or stage; None for the production version."""
    request_id: str = ""
    body_bytes: int = 0
    """Size of the request body, checked against the model's ``max_request_bytes``."""
    protocol: str = ANY_PROTOCOL
    """The transport's name (``v1``, ``openai``, ``v2``, ...), the ``protocol`` metrics label."""
    principal: Principal | None = None
    """Who calls (set by the transport from its credential); limits and budgets count by it."""
    queued_s: float | None = None
    """Seconds the request waited in the job queue before this attempt (async jobs only)."""
    replay_of: str | None = None
    """The request id this call replays; a replay is never live traffic."""
    session: str | None = None
    """The caller's ``X-Session-ID``: keeps it on one side of a canary split."""
    route: Route | None = None
    """Where the request goes, when the transport routed it before handing it over (to check
    the body limit or decode against the chosen version); routed by the data plane if None."""
    no_cache: bool = False
    """The caller sent ``Cache-Control: no-cache``: the response cache must not answer."""
    decisions: dict[str, Any] = field(default_factory=dict)
    """Set on a child request a cascade or fallback makes (``cascade``, ``fallback``): copied
    into its provenance record and its response; a fallback's request never falls back."""
    stored: Served | None = None
    """The stored features its rows got (models with a ``feature_store``): kept with the
    provenance record, watched by drift; set before the data plane runs by a replay, which
    reuses the values served then instead of reading the store again."""

    def noted(self, route: Route | None = None, **more: Any) -> dict[str, Any]:
        """The decisions kept with its provenance record: the request's own, ``route``,
        ``feature_store`` (the served feature values) and ``more``."""
        found = {**self.decisions, **more}
        if route is not None:
            found["route"] = route.decision()
        if self.stored is not None:
            found["feature_store"] = self.stored.record()
        return found

    @property
    def live(self) -> bool:
        """False for a replay or a promotion gate's run: not live traffic, never counted in
        usage, drift or rollout statistics, never answered from the cache."""
        return self.replay_of is None and self.protocol not in NOT_LIVE

    @classmethod
    def for_reference(cls, reference: str, **kwargs: Any) -> InferenceRequest:
        """Build from ``name`` or ``name@version`` (a ``version`` keyword wins)."""
        name, _, pinned = reference.partition("@")
        version = kwargs.pop("version", None) or pinned or None
        return cls(model=name, version=version, **kwargs)


@dataclass(slots=True)
class InferenceResponse:
    """Results of one call, with the version that served it."""

    id: str
    model: str
    version: str
    created: int
    results: list[Any]
    usage: Usage
    guards: dict[str, Any] = field(default_factory=dict)
    """What the guards did: ``redactions`` (counts by kind), ``prompt_injection`` (flag)."""
    cache: str | None = None
    """What the response cache did (``hit``, ``miss``, ``bypass``; the ``X-Cache`` header);
    None when no cache was asked."""
    decisions: dict[str, Any] = field(default_factory=dict)
    """``cascade`` (which stage answered each item) or ``fallback`` (which model answered
    instead of which), shown in the body as they are."""

    @classmethod
    def of(
        cls, info: VersionInfo, results: list[Any], usage: Usage, prefix: str = "pred", **kw: Any
    ) -> InferenceResponse:
        """A new response (fresh id, created now) of the version ``info``."""
        return cls(new_id(prefix), info.model, info.version, int(time.time()), results, usage, **kw)

    def as_v1(self) -> dict[str, Any]:
        """The REST v1 body."""
        body = {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "created": self.created,
            "results": self.results,
            "usage": self.usage.as_dict(),
        }
        if self.guards:
            body["guards"] = self.guards
        body.update(self.decisions)
        return body


@dataclass(slots=True)
class InferenceEvent:
    """One ended inference, as observers (provenance, drift, usage) are told of it."""

    request: InferenceRequest
    """What was asked, as the transport built it (inputs before guards rewrote them)."""
    info: VersionInfo | None
    """The version that served it; None when the model or version could not be resolved."""
    started_at: float
    """Wall-clock start, seconds since the epoch."""
    duration_s: float
    """From the data plane receiving the request to its end."""
    results: list[Any] | None = None
    """The results as answered (after output guards); None on failure."""
    usage: Usage | None = None
    error: BaseException | None = None
    """The exception the caller got; None on success."""
    streamed: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    """Parts of ``duration_s`` in seconds, as known: ``inference`` (the runtime call, batch
    wait included) and ``batch_wait`` (time spent in an adaptive batch before its call) when
    the data plane measured them. The job queue's wait is ``request.queued_s``."""
    decisions: dict[str, Any] = field(default_factory=dict)
    """What the request path decided on the way, for the record: ``cache`` (``hit`` /
    ``miss``), ``route`` (canary, shadow, cascade step, ...), as the deciding layer sets them."""

    @classmethod
    def ended(
        cls, request: InferenceRequest, info: VersionInfo | None, started: float, **kw: Any
    ) -> InferenceEvent:
        """An event for an inference that started at ``perf_counter()`` time ``started``."""
        elapsed = time.perf_counter() - started
        return cls(request, info, time.time() - elapsed, elapsed, **kw)


class InferenceObserver(ABC):
    """Takes note of ended inferences.

    Provenance, drift monitoring and usage accounting watch inferences without being in the
    request path's code: the data plane hands each one an :class:`InferenceEvent` when an
    inference ends (answered, streamed to its end, or failed), on the event loop. An observer
    must only take note (append to a buffer) and return; its own work (database writes,
    statistics) happens elsewhere, off the hot path. An observer that raises is logged and
    never fails the request.
    """

    @abstractmethod
    def observe(self, event: InferenceEvent) -> None:
        """Note ``event``; called on the event loop, so it must not block."""
