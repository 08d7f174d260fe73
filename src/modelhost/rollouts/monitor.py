"""Safe rollouts: canary guards that roll a bad canary back, and ramps that step a good one up.

Every ``rollouts.check_interval_s`` each process (every ``modelhost serve`` replica and job
worker) runs :meth:`RolloutMonitor.evaluate`: it flushes its live statistics
(:class:`~modelhost.rollouts.store.RolloutStats`) and then, for every deployment whose canary
takes traffic, compares the canary with production over the deployment's sliding window
(``guards.window_s``) of traffic from *every* replica:

* **latency**: the canary's p95 above production's times ``latency_ratio`` (20% worse), both
  sides having answered ``min_samples``, and beyond sampling noise: the low end of the
  canary's p95 confidence interval is compared with the high end of production's
  (:meth:`~modelhost.rollouts.stats.LatencyHistogram.quantile_bounds`; they close in as
  samples grow), so a healthy canary's few slow answers among few samples do not roll it
  back. A difference under :data:`LATENCY_FLOOR_S` is scheduler noise, not a regression, and
  never breaches;
* **errors**: the canary's server-side error rate above ``max_error_rate`` (0.1%), judged on the
  canary alone once it has ``min_samples`` requests; a canary failing no more often than
  production (measured on ``min_samples`` too) is not blamed for what both suffer;
* **accuracy**: production's online accuracy (:class:`~modelhost.accounting.feedback.
  FeedbackStore`) minus the canary's above ``max_accuracy_drop`` (5 points), each side with
  ``min_feedback`` answers.

The canary's side of the window never starts before an operator last set its weight (ramp
step 0), so a canary enabled again after a rollback is judged on its new traffic only.

A breach sets the canary's weight to 0 at once (state ``rolled_back``; ``reason`` holds the
guard, both sides' numbers, the threshold and the window; history ``canary.rollback``). The
write is a compare-and-set (:meth:`Deployments.update <modelhost.registry.Deployments.
update>`): of several replicas deciding at the same moment exactly one writes, and only that
one sends the ``rollout.rollback`` webhook (``rollouts.alert_url``, signed for
``rollouts.alert_tenant``) and counts ``modelhost_rollout_actions_total{action="rollback"}``.
Every replica applies the change at its next registry poll (``inference.refresh_interval_s``).

A healthy canary with a ramp moves to its next step (history ``ramp.step``) once ``interval_s``
passed since the last step and it answered ``min_samples`` since then. After the last step ran
healthy as long, a plan with ``promote`` has the canary promoted through the promotion gates
(:class:`~modelhost.rollouts.promotion.Promoter`). One replica claims the promotion first
(history ``ramp.promote``, a compare-and-set that also notes the attempt in ``reason``), so
replicas do not promote twice; a gate that refuses holds the ramp (history ``ramp.held`` with
the gates' report) and the promotion is tried again an ``interval_s`` later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from modelhost.accounting.feedback import FeedbackStore
from modelhost.components import Component
from modelhost.config import RolloutSettings
from modelhost.errors import GateRefused, ModelhostError
from modelhost.inference import InferenceObserver
from modelhost.observability.metrics import Metrics
from modelhost.registry import DeploymentSpec, GuardPolicy, Registry, RolloutState
from modelhost.rollouts.promotion import Promoter
from modelhost.rollouts.stats import WindowStats
from modelhost.rollouts.store import RolloutStats, RolloutStatsStore
from modelhost.webhooks.delivery import SignedWebhooks, WebhookOptions
from modelhost.webhooks.signing import webhook_master_secret

if TYPE_CHECKING:
    from modelhost.config import Settings
    from modelhost.webhooks.egress import Egress

log = logging.getLogger("modelhost.rollouts")

#: Who automatic rollout changes are made by, in the deployment history.
ACTOR = "rollout"
#: Event of the webhook sent when a guard rolled a canary back.
ROLLBACK_EVENT = "rollout.rollback"
#: p95 differences under this many seconds never breach the latency guard.
LATENCY_FLOOR_S = 0.002
#: What float rounding may add to a difference (1.0 - 0.95 is not quite 0.05).
_EPSILON = 1e-9
#: Seconds :meth:`RolloutMonitor.stop` waits for alerts under way.
STOP_GRACE_S = 5.0


class Guard(StrEnum):
    """What a canary is compared with production on."""

    LATENCY = "latency"  #: p95 latency
    ERRORS = "errors"  #: server-side error rate
    ACCURACY = "accuracy"  #: online accuracy from feedback


class Action(StrEnum):
    """What the monitor did to a deployment (the ``action`` label of the metric)."""

    ROLLBACK = "rollback"  #: a guard breached: the canary's weight went to 0
    RAMP = "ramp"  #: a healthy canary moved to its next ramp step
    PROMOTE = "promote"  #: a ramp completed and the canary was promoted
    HELD = "held"  #: a ramp completed but a promotion gate refused the canary


@dataclass(frozen=True, slots=True)
class Side:
    """One side of a comparison: a version's traffic and feedback over the window."""

    version: str
    stats: WindowStats = field(default_factory=WindowStats)
    feedback: int = 0
    """Feedback answers in the window."""
    accuracy: float | None = None
    """Mean correctness of that feedback, in [0, 1]."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (a rollback's reason)."""
        return {
            "version": self.version,
            **self.stats.as_dict(),
            "feedback": self.feedback,
            "accuracy": None if self.accuracy is None else round(self.accuracy, 6),
        }


@dataclass(frozen=True, slots=True)
class Breach:
    """A guard the canary failed."""

    guard: Guard
    message: str
    threshold: float
    """The limit the canary crossed, in the guard's unit (error rate, p95 milliseconds,
    accuracy points)."""


def latency_breach(policy: GuardPolicy, canary: Side, production: Side) -> Breach | None:
    """The latency guard: canary p95 above production p95 times ``latency_ratio``, beyond
    sampling noise: even the low end of the canary's p95 confidence interval must exceed the
    limit set by the high end of production's."""
    c, p = canary.stats, production.stats
    if c.answered < policy.min_samples or p.answered < policy.min_samples:
        return None
    if c.p95_low is None or p.p95_high is None:
        return None
    limit = max(p.p95_high * policy.latency_ratio, p.p95_high + LATENCY_FLOOR_S)
    if c.p95_low <= limit:
        return None
    return Breach(
        Guard.LATENCY,
        f"p95 latency {_ms(c.p95)} ms (at least {_ms(c.p95_low)} ms) above {_ms(limit)} ms "
        f"(production's p95 {_ms(p.p95)} ms, at most {_ms(p.p95_high)} ms, "
        f"x {policy.latency_ratio:g})",
        round(limit * 1000, 3),
    )


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.1f}"


def error_breach(policy: GuardPolicy, canary: Side, production: Side) -> Breach | None:
    """The error guard: canary error rate above ``max_error_rate`` (and above production's
    when production has ``min_samples`` requests)."""
    c, p = canary.stats, production.stats
    if c.requests < policy.min_samples:
        return None
    limit = policy.max_error_rate
    if p.requests >= policy.min_samples:
        limit = max(limit, p.error_rate)
    if c.error_rate <= limit:
        return None
    return Breach(
        Guard.ERRORS,
        f"error rate {c.error_rate:.2%} ({c.errors} of {c.requests}) above {limit:.2%}",
        limit,
    )


def accuracy_breach(policy: GuardPolicy, canary: Side, production: Side) -> Breach | None:
    """The accuracy guard: production's online accuracy minus the canary's above
    ``max_accuracy_drop``."""
    if canary.feedback < policy.min_feedback or production.feedback < policy.min_feedback:
        return None
    if canary.accuracy is None or production.accuracy is None:
        return None
    drop = production.accuracy - canary.accuracy
    if drop <= policy.max_accuracy_drop + _EPSILON:  # exactly 5 points is not more than 5
        return None
    return Breach(
        Guard.ACCURACY,
        f"online accuracy {canary.accuracy:.1%} is {drop * 100:.1f} points below "
        f"production's {production.accuracy:.1%} (at most {policy.max_accuracy_drop * 100:g})",
        policy.max_accuracy_drop,
    )


def judge(policy: GuardPolicy, canary: Side, production: Side) -> Breach | None:
    """The first guard the canary fails (errors, latency, accuracy), or None."""
    for guard in (error_breach, latency_breach, accuracy_breach):
        breach = guard(policy, canary, production)
        if breach is not None:
            return breach
    return None


def canary_since(spec: DeploymentSpec, since: float) -> float:
    """Where the canary's side of the window starts: ``since``, but not before an operator
    last set the canary's weight (ramp step 0)."""
    if spec.ramp_step == 0 and spec.stepped_at is not None:
        return max(since, spec.stepped_at.timestamp())
    return since


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


@dataclass(frozen=True, slots=True)
class RolloutAction:
    """One automatic change the monitor made (or, for ``held``, tried)."""

    model: str
    version: str
    """The canary acted on."""
    action: Action
    detail: dict[str, Any]
    """The rollback's reason, the ramp step, the promotion or gate report."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "model": self.model,
            "version": self.version,
            "action": self.action.value,
            "detail": self.detail,
        }


class RolloutMonitor(Component):
    """Guards and ramps of every running canary, from one process; see the module docstring.

    Args:
        registry: deployments and production versions.
        stats: this process's live statistics (its ledger watches the data plane).
        feedback: online accuracy per version.
        promoter: promotes a canary whose ramp completed.
        metrics: ``canary_weight`` and ``rollout_actions``.
        settings: the check and flush intervals.
        alerts: delivers ``rollout.rollback`` to ``settings.alert_url``; None: logged only.
        clock: seconds since the epoch.
    """

    def __init__(
        self,
        registry: Registry,
        stats: RolloutStats,
        *,
        feedback: FeedbackStore,
        promoter: Promoter,
        metrics: Metrics,
        settings: RolloutSettings,
        alerts: SignedWebhooks | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.deployments = registry.deployments
        self.stats = stats
        self.feedback = feedback
        self.promoter = promoter
        self.metrics = metrics
        self.settings = settings
        self.alerts = alerts
        self.clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._sending: set[asyncio.Task[bool]] = set()
        self._gauged: set[tuple[str, str]] = set()

    # -- component -------------------------------------------------------------------------

    def observers(self) -> list[InferenceObserver]:
        """The statistics ledger."""
        return [self.stats.ledger]

    async def start(self) -> None:
        """Flush statistics every ``stats_flush_s``; evaluate every ``check_interval_s``."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._every(self.settings.stats_flush_s, self.stats.flush)),
                asyncio.create_task(self._every(self.settings.check_interval_s, self.evaluate)),
            ]

    async def stop(self) -> None:
        """Stop both loops, flush what is counted, give alerts under way a moment."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await self.stats.flush()
        finally:
            await self.drain(STOP_GRACE_S)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for alerts under way, then cancel the rest."""
        pending = set(self._sending)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*late, return_exceptions=True)

    async def _every(self, interval: float, work: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await work()
            except Exception:  # a database hiccup must not stop the loop; it is logged
                log.exception("rollout round failed")

    # -- one pass --------------------------------------------------------------------------

    async def evaluate(self) -> list[RolloutAction]:
        """Flush this process's statistics, then judge and ramp every canary taking traffic.

        One deployment's failure is logged and does not stop the others.

        Returns:
            The actions this process took (a change another replica made first is not one).
        """
        try:
            await self.stats.flush()
        except Exception:  # judge what the other replicas stored
            log.exception("flushing rollout statistics failed")
        specs = await asyncio.to_thread(self.deployments.all)
        self._publish(specs.values())
        actions = []
        for spec in specs.values():
            if not spec.splitting:
                continue
            try:
                action = await self.check(spec)
            except Exception:
                log.exception("rollout check of %s failed", spec.model)
                continue
            if action is not None:
                actions.append(action)
        return actions

    async def check(self, spec: DeploymentSpec) -> RolloutAction | None:
        """Judge one deployment's canary: roll it back, step its ramp, promote it, or leave
        it."""
        canary = spec.canary
        production = await self._production(spec.model)
        if canary is None or production is None or production == canary:
            return None
        now = self.clock()
        since = now - spec.guards.window_s
        canary_side, production_side = await asyncio.to_thread(
            self._sides, spec, (canary, production), since
        )
        breach = judge(spec.guards, canary_side, production_side)
        if breach is not None:
            reason = {
                "guard": breach.guard.value,
                "message": breach.message,
                "threshold": breach.threshold,
                "canary": canary_side.as_dict(),
                "production": production_side.as_dict(),
                "weight": spec.weight,
                "window_s": spec.guards.window_s,
                "since": _iso(canary_since(spec, since)),
                "at": _iso(now),
            }
            return await self._roll_back(spec, canary, reason)
        if spec.ramp is not None:
            return await self._advance(spec, canary, now)
        return None

    async def _production(self, model: str) -> str | None:
        try:
            info = await asyncio.to_thread(self.registry.resolve, model, None)
        except ModelhostError:  # deleted, or no production version to compare with
            return None
        return info.version

    def _sides(
        self, spec: DeploymentSpec, versions: tuple[str, str], since: float
    ) -> tuple[Side, Side]:
        """Both sides' traffic and feedback (blocking: run in a thread)."""
        starts = (canary_since(spec, since), since)
        sides = []
        for version, start in zip(versions, starts, strict=True):
            stats = self.stats.store.window(spec.model, version, start)
            moment = datetime.fromtimestamp(start, UTC)
            n, accuracy = self.feedback.accuracy(spec.model, version, moment)
            sides.append(Side(version, stats, n, accuracy))
        return sides[0], sides[1]

    # -- actions ---------------------------------------------------------------------------

    async def _roll_back(
        self, spec: DeploymentSpec, canary: str, reason: dict[str, Any]
    ) -> RolloutAction | None:
        rolled = replace(spec, weight=0.0, state=RolloutState.ROLLED_BACK, reason=reason)
        stored = await asyncio.to_thread(
            self.deployments.update,
            rolled,
            actor=ACTOR,
            action="canary.rollback",
            detail=reason,
        )
        if stored is None:  # another replica changed it first (and alerted, if it rolled back)
            return None
        self.metrics.rollout_actions.labels(model=spec.model, action=Action.ROLLBACK.value).inc()
        self.metrics.canary_weight.labels(model=spec.model, version=canary).set(0.0)
        log.warning("%s@%s rolled back: %s", spec.model, canary, reason["message"])
        self._alert(
            f"{spec.model}:{stored.revision}",
            {"model": spec.model, "canary": canary, "revision": stored.revision, "reason": reason},
        )
        return RolloutAction(spec.model, canary, Action.ROLLBACK, reason)

    async def _advance(self, spec: DeploymentSpec, canary: str, now: float) -> RolloutAction | None:
        """Step a healthy ramp, or promote after its last step."""
        plan, stepped = spec.ramp, spec.stepped_at
        if plan is None or stepped is None or now - stepped.timestamp() < plan.interval_s:
            return None
        answered = await self.stats.window(spec.model, canary, stepped)
        if answered.requests < spec.guards.min_samples:
            return None
        if spec.ramp_step + 1 < len(plan.steps):
            return await self._step(spec, canary, plan.steps[spec.ramp_step + 1], answered)
        if plan.promote:
            return await self._promote(spec, canary, now, plan.interval_s)
        return None

    async def _step(
        self, spec: DeploymentSpec, canary: str, weight: float, answered: WindowStats
    ) -> RolloutAction | None:
        step = spec.ramp_step + 1
        detail = {
            "version": canary,
            "from": spec.weight,
            "to": weight,
            "step": step,
            "since_last_step": answered.as_dict(),
        }
        moved = replace(spec, weight=weight, ramp_step=step, state=RolloutState.CANARY)
        stored = await asyncio.to_thread(
            self.deployments.update, moved, actor=ACTOR, action="ramp.step", detail=detail
        )
        if stored is None:
            return None
        self.metrics.rollout_actions.labels(model=spec.model, action=Action.RAMP.value).inc()
        self.metrics.canary_weight.labels(model=spec.model, version=canary).set(weight)
        log.info("%s@%s ramped %g%% -> %g%%", spec.model, canary, spec.weight, weight)
        return RolloutAction(spec.model, canary, Action.RAMP, detail)

    async def _promote(
        self, spec: DeploymentSpec, canary: str, now: float, interval: float
    ) -> RolloutAction | None:
        """Claim the promotion (so one replica tries it, once per ``interval``), then ask the
        promoter; a refusing gate holds the ramp."""
        last = spec.reason or {}
        tried = last.get("action") == Action.PROMOTE.value and last.get("version") == canary
        if tried and now - float(last.get("epoch", 0.0)) < interval:
            return None
        claim = {"action": Action.PROMOTE.value, "version": canary, "at": _iso(now), "epoch": now}
        stored = await asyncio.to_thread(
            self.deployments.update,
            replace(spec, reason=claim),
            actor=ACTOR,
            action="ramp.promote",
            detail={"version": canary, "weight": spec.weight},
        )
        if stored is None:
            return None
        try:
            report = await self.promoter.promote(spec.model, canary, actor=ACTOR)
        except GateRefused as exc:
            detail = {"version": canary, "message": exc.message, "gates": exc.report}
            await asyncio.to_thread(
                self.deployments.record, spec.model, "ramp.held", actor=ACTOR, detail=detail
            )
            self.metrics.rollout_actions.labels(model=spec.model, action=Action.HELD.value).inc()
            log.warning("%s@%s ramp held: %s", spec.model, canary, exc.message)
            return RolloutAction(spec.model, canary, Action.HELD, detail)
        self.metrics.rollout_actions.labels(model=spec.model, action=Action.PROMOTE.value).inc()
        log.info("%s@%s promoted after its ramp", spec.model, canary)
        return RolloutAction(spec.model, canary, Action.PROMOTE, report.as_dict())

    # -- gauges and alerts -----------------------------------------------------------------

    def _publish(self, specs: Iterable[DeploymentSpec]) -> None:
        """Set ``canary_weight`` for every canary; drop the labels of former ones."""
        current = {(s.model, s.canary): s.weight for s in specs if s.canary is not None}
        for model, version in self._gauged - set(current):
            with contextlib.suppress(KeyError):
                self.metrics.canary_weight.remove(model, version)
        for (model, version), weight in current.items():
            self.metrics.canary_weight.labels(model=model, version=version).set(weight)
        self._gauged = set(current)

    def _alert(self, delivery_id: str, data: dict[str, Any]) -> None:
        """Send ``rollout.rollback`` off the loop's critical path (logged when no URL)."""
        url = self.settings.alert_url
        if self.alerts is None or not url:
            log.info("%s %s: no rollouts.alert_url configured", ROLLBACK_EVENT, delivery_id)
            return
        task = asyncio.create_task(
            self.alerts.deliver(url, ROLLBACK_EVENT, data, delivery_id=delivery_id)
        )
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)


def build_rollouts(
    settings: Settings,
    registry: Registry,
    *,
    feedback: FeedbackStore,
    promoter: Promoter,
    metrics: Metrics,
    egress: Egress,
) -> Component:
    """The rollout component of a server or worker process."""
    rollouts = settings.rollouts
    stats = RolloutStats(RolloutStatsStore(registry.engine), retention_s=rollouts.stats_retention_s)
    alerts = SignedWebhooks(
        egress,
        WebhookOptions(master_secret=webhook_master_secret(settings), tenant=rollouts.alert_tenant),
    )
    return RolloutMonitor(
        registry,
        stats,
        feedback=feedback,
        promoter=promoter,
        metrics=metrics,
        settings=rollouts,
        alerts=alerts,
    )
