"""Canary guards and ramps: the guards' maths; the compare-and-set that lets exactly one of
several replicas roll a canary back and alert (SQLite and PostgreSQL); two real data planes
counting into one window; and real iris canaries (one failing, one slow, one wrong on
feedback) rolled back inside their window with their numbers, alerted to a real receiver on
loopback, while a healthy canary ramps 1% -> 5% -> 25% -> 100% and is promoted."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.engine import Engine

from modelhost.accounting.feedback import Feedback, FeedbackStore
from modelhost.app import Services, build_services, close_services, stop_components
from modelhost.config import CacheSettings, DemoSettings, JobSettings, RolloutSettings, Settings
from modelhost.inference import InferenceRequest
from modelhost.jobs.webhooks import tenant_secret, verify
from modelhost.observability.metrics import Metrics
from modelhost.registry import (
    ArtifactStore,
    DeploymentSpec,
    GuardPolicy,
    RampPlan,
    Registry,
    RolloutState,
    Stage,
)
from modelhost.rollouts.monitor import (
    ACTOR,
    ROLLBACK_EVENT,
    Action,
    Guard,
    RolloutAction,
    RolloutMonitor,
    Side,
    accuracy_breach,
    build_rollouts,
    canary_since,
    error_breach,
    judge,
    latency_breach,
)
from modelhost.rollouts.promotion import Promoter
from modelhost.rollouts.stats import Counts, WindowStats
from modelhost.rollouts.store import RolloutStats, RolloutStatsStore
from modelhost.serving.dataplane import DataPlane
from modelhost.serving.models import ModelManager
from modelhost.serving.router import BUCKETS, bucket
from modelhost.webhooks.delivery import SignedWebhooks, WebhookOptions
from modelhost.webhooks.egress import CallbackPolicy, Egress
from tests.jobs.test_webhooks import Receiver, Reply
from tests.serving.iris_variants import iris_rows, write_iris_variant

MASTER = "rollout-test-master-secret"
#: The tenant whose secret signs rollout alerts in these tests.
ALERT_TENANT = "ops"
POLICY = GuardPolicy(window_s=60, min_samples=100, min_feedback=30)


# -- guard maths -------------------------------------------------------------------------------


def side(
    requests: int = 0,
    errors: int = 0,
    p95_ms: float | None = None,
    feedback: int = 0,
    accuracy: float | None = None,
) -> Side:
    p95 = None if p95_ms is None else p95_ms / 1000
    stats = WindowStats(requests, errors, requests - errors, p95, p95, p95_low=p95, p95_high=p95)
    return Side("x", stats, feedback, accuracy)


def timed(*groups: tuple[int, float]) -> Side:
    """A side that answered ``n`` requests in ``seconds`` for each ``(n, seconds)``."""
    counts = Counts()
    for n, seconds in groups:
        for _ in range(n):
            counts.answered(seconds)
    return Side("x", WindowStats.of(counts))


def test_the_error_guard_judges_the_canary_alone_once_it_has_min_samples() -> None:
    assert error_breach(POLICY, side(99, 99), side()) is None  # too few to judge
    assert error_breach(POLICY, side(1000, 1), side()) is None  # 0.1% is not above 0.1%
    breach = error_breach(POLICY, side(1000, 2), side())
    assert breach is not None
    assert (breach.guard, breach.threshold) == (Guard.ERRORS, 0.001)
    assert "0.20%" in breach.message
    # production failing as often (an outage both suffer) does not blame the canary
    assert error_breach(POLICY, side(1000, 20), side(1000, 20)) is None
    worse = error_breach(POLICY, side(1000, 40), side(1000, 20))
    assert worse is not None
    assert worse.threshold == pytest.approx(0.02)
    # production below min_samples: the absolute limit alone
    assert error_breach(POLICY, side(1000, 20), side(50, 25)) is not None


def test_the_latency_guard_compares_p95s_with_both_sides_sampled() -> None:
    breach = latency_breach(POLICY, side(200, p95_ms=12.1), side(200, p95_ms=10.0))
    assert breach is not None
    assert breach.guard is Guard.LATENCY
    assert breach.threshold == pytest.approx(12.0)
    assert latency_breach(POLICY, side(200, p95_ms=11.9), side(200, p95_ms=10.0)) is None
    assert latency_breach(POLICY, side(99, p95_ms=50.0), side(200, p95_ms=10.0)) is None
    assert latency_breach(POLICY, side(200, p95_ms=50.0), side(99, p95_ms=10.0)) is None
    # under a millisecond or two, jitter decides, not the model
    assert latency_breach(POLICY, side(200, p95_ms=1.5), side(200, p95_ms=0.5)) is None
    assert latency_breach(POLICY, side(200, p95_ms=3.0), side(200, p95_ms=0.5)) is not None


def test_the_latency_guard_sees_through_the_noise_of_few_samples() -> None:
    policy = GuardPolicy(min_samples=20)
    steady = timed((20, 0.001))
    # two slow answers of twenty make the p95 ten times production's: noise, not a regression
    noisy = timed((18, 0.001), (2, 0.010))
    assert noisy.stats.p95 == pytest.approx(0.010, rel=0.011)
    assert latency_breach(policy, noisy, steady) is None
    slow = latency_breach(policy, timed((20, 0.040)), steady)
    assert slow is not None
    assert "40.0 ms" in slow.message
    # with many samples, a tenth of slow answers is a real p95 regression
    many = latency_breach(policy, timed((1800, 0.001), (200, 0.010)), timed((2000, 0.001)))
    assert many is not None
    assert many.guard is Guard.LATENCY


def test_the_accuracy_guard_needs_feedback_on_both_sides() -> None:
    breach = accuracy_breach(
        POLICY, side(feedback=30, accuracy=0.80), side(feedback=30, accuracy=0.9)
    )
    assert breach is not None
    assert (breach.guard, breach.threshold) == (Guard.ACCURACY, 0.05)
    assert "10.0 points" in breach.message
    assert (
        accuracy_breach(POLICY, side(feedback=30, accuracy=0.86), side(feedback=30, accuracy=0.9))
        is None
    )
    assert (
        accuracy_breach(POLICY, side(feedback=29, accuracy=0.0), side(feedback=30, accuracy=0.9))
        is None
    )
    assert (
        accuracy_breach(POLICY, side(feedback=30, accuracy=0.0), side(feedback=29, accuracy=0.9))
        is None
    )


def test_judge_names_the_first_guard_breached() -> None:
    healthy = side(500, 0, p95_ms=10, feedback=50, accuracy=0.95)
    assert judge(POLICY, healthy, healthy) is None
    everything = side(500, 50, p95_ms=100, feedback=50, accuracy=0.1)
    found = judge(POLICY, everything, healthy)
    assert found is not None
    assert found.guard is Guard.ERRORS
    slow_and_wrong = side(500, 0, p95_ms=100, feedback=50, accuracy=0.1)
    found = judge(POLICY, slow_and_wrong, healthy)
    assert found is not None
    assert found.guard is Guard.LATENCY


def test_the_canary_window_starts_when_its_weight_was_set() -> None:
    set_at = datetime(2025, 1, 1, tzinfo=UTC)
    now = set_at.timestamp() + 30
    spec = DeploymentSpec(model="m", canary="1.1.0", weight=5, stepped_at=set_at)
    assert canary_since(spec, now - 60) == set_at.timestamp()  # re-enabled 30 s ago
    assert canary_since(spec, now - 10) == now - 10
    ramped = replace(spec, ramp_step=2)  # a ramp step keeps the whole window
    assert canary_since(ramped, now - 60) == now - 60


# -- shared set-up -----------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver([Reply(200)])
    yield started
    started.close()


def make_settings(home: Path, receiver: Receiver) -> Settings:
    """Loops never run on their own here: the tests call ``evaluate`` themselves."""
    return Settings(
        home=home,
        demo=DemoSettings(enabled=False),
        jobs=JobSettings(webhook_secret=MASTER, webhook_allow=["127.0.0.0/8"]),
        rollouts=RolloutSettings(
            alert_url=receiver.url(),
            alert_tenant=ALERT_TENANT,
            check_interval_s=3600,
            stats_flush_s=3600,
        ),
        # the traffic repeats iris rows: cache hits would answer without the canary running
        cache=CacheSettings(enabled=False),
    )


def monitor_of(services: Services) -> RolloutMonitor:
    """The rollout component of ``services`` (wired in here if the composition root does not
    build it)."""
    for component in services.components:
        if isinstance(component, RolloutMonitor):
            return component
    built = build_rollouts(
        services.settings,
        services.registry,
        feedback=services.feedback,
        promoter=services.promoter,
        metrics=services.metrics,
        egress=services.egress,
    )
    assert isinstance(built, RolloutMonitor)
    services.components.append(built)
    services.plane.observers.extend(built.observers())
    return built


async def shut(services: Services) -> None:
    await stop_components(services)
    await close_services(services)
    services.registry.engine.dispose()


def sessions(model: str, *, canary: bool, n: int = 8) -> list[str]:
    """Session ids that land on the canary at any weight of 1% or more (``canary``), or on
    production at any weight below 50%."""
    found: list[str] = []
    k = 0
    while len(found) < n:
        name, k = f"{model}-session-{k}", k + 1
        place = bucket(model, f"s:{name}")
        if (place < BUCKETS // 100) if canary else (place >= BUCKETS // 2):
            found.append(name)
    return found


def start_canary(
    services: Services,
    model: str,
    guards: GuardPolicy,
    weight: float = 50.0,
    ramp: RampPlan | None = None,
) -> DeploymentSpec:
    deployments = services.registry.deployments
    spec = replace(
        deployments.get(model),
        canary="1.1.0",
        weight=weight,
        ramp=ramp,
        ramp_step=0,
        guards=guards,
        state=RolloutState.CANARY,
        reason=None,
    )
    stored = deployments.update(spec, actor="test", action="canary")
    assert stored is not None
    return stored


class Traffic:
    """Real iris rows sent through a data plane from sticky sessions, with feedback on every
    answer (its label against the truth)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.rows, self.labels = iris_rows()
        self.sent = 0

    async def send(self, model: str, names: list[str], n: int, start: int = 0) -> list[str]:
        """``n`` requests from ``names`` in turn, rows ``start`` onwards in a shuffled order;
        returns the versions that answered (or ``error``)."""
        return [await self.one(model, names[i % len(names)], start + i) for i in range(n)]

    async def pairs(
        self, model: str, canary: list[str], production: list[str], n: int, start: int
    ) -> None:
        """Each of ``n`` rows from a canary-side caller, then from a production-side one:
        interleaved, so a slow moment of the machine falls on both sides alike, and the same
        rows, so two sides that answer alike get the same accuracy."""
        for i in range(n):
            await self.one(model, canary[i % len(canary)], start + i)
            await self.one(model, production[i % len(production)], start + i)

    async def one(self, model: str, session: str, row: int) -> str:
        """One request with iris row ``row`` (shuffled) and feedback on its answer."""
        k = (row * 7) % len(self.rows)
        self.sent += 1
        request = InferenceRequest(
            model=model,
            inputs=[self.rows[k]],
            session=session,
            request_id=f"req-{self.sent}",
            protocol="v1",
        )
        try:
            response = await self.services.plane.infer(request)
        except Exception:  # a failing canary's error, as its caller gets it
            return "error"
        verdict = Feedback(
            request_id=response.id,
            tenant="acme",
            model=model,
            version=response.version,
            correct=float(response.results[0]["label"] == self.labels[k]),
        )
        await asyncio.to_thread(self.services.feedback.record, verdict)
        return response.version


def counted(services: Services, model: str, action: str) -> float:
    labels = {"model": model, "action": action}
    value = services.metrics.registry.get_sample_value("modelhost_rollout_actions_total", labels)
    return value or 0.0


def weight_gauge(services: Services, model: str) -> float | None:
    labels = {"model": model, "version": "1.1.0"}
    return services.metrics.registry.get_sample_value("modelhost_canary_weight", labels)


def alerts_received(receiver: Receiver) -> list[dict[str, Any]]:
    """Every ``rollout.rollback`` received, after checking its signature (tenant ``ops``)."""
    secret = tenant_secret(MASTER.encode(), ALERT_TENANT)
    bodies = []
    for got in receiver.received:
        headers = got.headers
        assert headers["x-modelhost-event"] == ROLLBACK_EVENT
        assert verify(
            secret, headers["x-modelhost-timestamp"], got.body, headers["x-modelhost-signature"]
        )
        body = json.loads(got.body)
        assert body["type"] == ROLLBACK_EVENT
        bodies.append(body["data"])
    return bodies


# -- compare-and-set ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_two_monitors_over_one_database_roll_back_and_alert_once(
    engine: Engine, tmp_path: Path, receiver: Receiver
) -> None:
    registry = Registry(engine, ArtifactStore(tmp_path / "artifacts"))
    for version, fail in (("1.0.0", 0), ("1.1.0", 2)):
        directory = write_iris_variant(tmp_path / "models", "flowers", version, fail_every=fail)
        registry.push(directory, actor="test")
    registry.set_stage("flowers", "1.0.0", Stage.PRODUCTION, actor="test")
    spec = registry.deployments.update(
        replace(
            registry.deployments.get("flowers"),
            canary="1.1.0",
            weight=50,
            guards=GuardPolicy(min_samples=10),
            state=RolloutState.CANARY,
        ),
        actor="test",
        action="canary",
    )
    assert spec is not None
    store = RolloutStatsStore(engine)
    now = time.time()
    half = Counts()
    for _ in range(3):
        half.answered(0.001)
        half.failed()
    # each replica saw 6 canary requests: neither alone has min_samples, together they do
    store.add("replica-a", now, {("flowers", "1.1.0"): half})
    store.add("replica-b", now, {("flowers", "1.1.0"): half})
    plane = DataPlane(
        ModelManager(registry, threads=1),
        threads=1,
        default_timeout_s=5,
        default_max_request_bytes=1 << 20,
    )
    settings = RolloutSettings(alert_url=receiver.url(), alert_tenant=ALERT_TENANT)
    webhooks = SignedWebhooks(
        Egress(CallbackPolicy(["127.0.0.0/8"])),
        WebhookOptions(MASTER.encode(), tenant=ALERT_TENANT),
    )
    monitors = [
        RolloutMonitor(
            registry,
            RolloutStats(store, replica=name),
            feedback=FeedbackStore(engine),
            promoter=Promoter(registry, plane),
            metrics=Metrics(),
            settings=settings,
            alerts=webhooks,
        )
        for name in ("replica-a", "replica-b")
    ]
    try:
        taken = await asyncio.gather(*(m.evaluate() for m in monitors))
        actions = [action for found in taken for action in found]
        assert [(a.model, a.version, a.action) for a in actions] == [
            ("flowers", "1.1.0", Action.ROLLBACK)
        ]
        # a replica acting on what it read before the rollback loses the compare-and-set
        assert await monitors[1].check(spec) is None
        assert await monitors[0].check(spec) is None
        for monitor in monitors:
            await monitor.drain(10)
    finally:
        plane.close()
    stored = registry.deployments.get("flowers")
    assert (stored.weight, stored.state) == (0.0, RolloutState.ROLLED_BACK)
    assert stored.reason == actions[0].detail
    assert stored.reason is not None
    assert stored.reason["canary"]["requests"] == 12
    assert stored.reason["canary"]["errors"] == 6
    history = registry.deployments.history("flowers")
    rollbacks = [e for e in history if e.action == "canary.rollback"]
    assert [e.actor for e in rollbacks] == [ACTOR]
    (alert,) = alerts_received(receiver)
    assert alert["model"] == "flowers"
    assert alert["canary"] == "1.1.0"
    assert alert["reason"] == stored.reason
    assert sum(counted_in(m, "rollback") for m in monitors) == 1


def counted_in(monitor: RolloutMonitor, action: str) -> float:
    labels = {"model": "flowers", "action": action}
    found = monitor.metrics.registry.get_sample_value("modelhost_rollout_actions_total", labels)
    return found or 0.0


@pytest_asyncio.fixture
async def replicas(tmp_path: Path, receiver: Receiver) -> AsyncIterator[list[Services]]:
    """Two in-process "replicas" sharing one database: ``flowers`` 1.0.0 in production, and
    1.1.0, which fails every second call, as a 50% canary."""
    settings = make_settings(tmp_path / "home", receiver)
    built = [build_services(settings), build_services(settings)]
    registry = built[0].registry
    for version, fail in (("1.0.0", 0), ("1.1.0", 2)):
        directory = write_iris_variant(tmp_path / "models", "flowers", version, fail_every=fail)
        registry.push(directory, actor="test")
    registry.set_stage("flowers", "1.0.0", Stage.PRODUCTION, actor="test")
    start_canary(built[0], "flowers", GuardPolicy(window_s=60, min_samples=10))
    for services in built:
        monitor_of(services)
        await services.manager.refresh()
        await services.manager.wait_loaded(timeout=120)
    yield built
    for services in built:
        await shut(services)


@pytest.mark.asyncio
async def test_guards_count_every_replica_and_one_rollback_reaches_all(
    replicas: list[Services], receiver: Receiver
) -> None:
    canary_side = sessions("flowers", canary=True)
    production_side = sessions("flowers", canary=False)
    for services in replicas:  # 6 canary requests each: enough only together
        traffic = Traffic(services)
        assert set(await traffic.send("flowers", canary_side, 6)) <= {"1.1.0", "error"}
        assert set(await traffic.send("flowers", production_side, 10)) == {"1.0.0"}
    first, second = (monitor_of(services) for services in replicas)
    assert await first.evaluate() == []  # its own 6 requests are too few
    await second.stats.flush()
    taken = await asyncio.gather(first.evaluate(), second.evaluate())
    actions = [action for found in taken for action in found]
    assert [a.action for a in actions] == [Action.ROLLBACK]
    reason = actions[0].detail
    assert reason["guard"] == "errors"
    assert reason["canary"]["requests"] == 12
    assert reason["canary"]["errors"] == 6
    assert reason["production"]["requests"] == 20
    assert reason["production"]["errors"] == 0
    for services in replicas:  # what every replica's registry poll does
        assert await services.manager.refresh()
        assert services.manager.spec("flowers").weight == 0.0
        assert set(await Traffic(services).send("flowers", canary_side, 4)) == {"1.0.0"}
    for monitor in (first, second):
        await monitor.drain(10)
    assert len(alerts_received(receiver)) == 1
    assert sum(counted(services, "flowers", "rollback") for services in replicas) == 1


# -- real canaries -----------------------------------------------------------------------------

#: How each canary misbehaves (the production versions all behave).
CANARIES: dict[str, dict[str, Any]] = {
    "erring": {"fail_every": 5},
    "slow": {"sleep_ms": 40},
    "wrong": {"wrong": True},
    "healthy": {},
}
GUARDS = GuardPolicy(window_s=20, min_samples=20, min_feedback=20)
RAMP = RampPlan((1.0, 5.0, 25.0, 100.0), interval_s=0.3, promote=True)


@pytest_asyncio.fixture
async def fleet(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Services]:
    """One process serving four iris models, each with a well-behaved 1.0.0 in production
    and a 1.1.0 that misbehaves as :data:`CANARIES` says."""
    built = build_services(make_settings(tmp_path / "home", receiver))
    monitor_of(built)
    for model, behaviour in CANARIES.items():
        for version, misbehaves in (("1.0.0", {}), ("1.1.0", behaviour)):
            directory = write_iris_variant(tmp_path / "models", model, version, **misbehaves)
            built.registry.push(directory, actor="test")
        built.registry.set_stage(model, "1.0.0", Stage.PRODUCTION, actor="test")
    await built.manager.refresh()
    await built.manager.wait_loaded(timeout=180)
    yield built
    await shut(built)


@pytest.mark.asyncio
async def test_bad_canaries_roll_back_while_a_healthy_one_ramps_and_is_promoted(
    fleet: Services, receiver: Receiver
) -> None:
    monitor = monitor_of(fleet)
    started = {
        model: start_canary(
            fleet,
            model,
            GUARDS,
            ramp=RAMP if model == "healthy" else None,
            weight=1.0 if model == "healthy" else 50.0,
        )
        for model in CANARIES
    }
    await fleet.manager.refresh()
    traffic = Traffic(fleet)
    canary_side = {m: sessions(m, canary=True) for m in CANARIES}
    production_side = {m: sessions(m, canary=False) for m in CANARIES}
    done: dict[str, RolloutAction] = {}
    ramped: list[float] = []
    deadline = time.monotonic() + 120
    rounds = 0
    while len(done) < len(CANARIES):
        assert time.monotonic() < deadline, f"only {sorted(done)} finished"
        for model in CANARIES:
            if model not in done:
                await traffic.pairs(
                    model, canary_side[model], production_side[model], 20, rounds * 20
                )
        rounds += 1
        for action in await monitor.evaluate():
            if action.action is Action.RAMP:
                ramped.append(action.detail["to"])
            else:
                assert action.model not in done
                done[action.model] = action
        await fleet.manager.refresh()

    expected = {"erring": Guard.ERRORS, "slow": Guard.LATENCY, "wrong": Guard.ACCURACY}
    for model, guard in expected.items():
        action = done[model]
        assert (action.action, action.version) == (Action.ROLLBACK, "1.1.0")
        reason = action.detail
        assert reason["guard"] == guard.value
        set_at = started[model].stepped_at
        assert set_at is not None
        rolled_at = datetime.fromisoformat(reason["at"])
        assert rolled_at - set_at < timedelta(seconds=GUARDS.window_s)  # inside its window
        assert reason["window_s"] == GUARDS.window_s
        stored = fleet.registry.deployments.get(model)
        assert (stored.canary, stored.weight, stored.state) == (
            "1.1.0",
            0.0,
            RolloutState.ROLLED_BACK,
        )
        assert stored.reason == reason
        assert counted(fleet, model, "rollback") == 1
        assert weight_gauge(fleet, model) == 0.0
        # the canary's callers are back on production
        assert set(await traffic.send(model, canary_side[model], 3)) == {"1.0.0"}

    erring = done["erring"].detail
    assert erring["canary"]["errors"] >= 1
    assert erring["canary"]["error_rate"] > GUARDS.max_error_rate
    assert erring["production"]["errors"] == 0
    assert erring["threshold"] == GUARDS.max_error_rate
    slow = done["slow"].detail
    assert slow["canary"]["p95_ms"] > 35
    assert slow["canary"]["p95_ms"] > slow["production"]["p95_ms"] * GUARDS.latency_ratio
    assert slow["canary"]["errors"] == 0
    wrong = done["wrong"].detail
    assert wrong["canary"]["feedback"] >= GUARDS.min_feedback
    assert wrong["production"]["feedback"] >= GUARDS.min_feedback
    assert wrong["canary"]["accuracy"] < 0.2
    assert wrong["production"]["accuracy"] >= 0.8
    assert wrong["canary"]["errors"] == 0

    promoted = done["healthy"]
    assert ramped == [5.0, 25.0, 100.0]
    assert (promoted.action, promoted.version) == (Action.PROMOTE, "1.1.0")
    assert fleet.registry.resolve("healthy", None).version == "1.1.0"
    assert counted(fleet, "healthy", "ramp") == 3
    assert counted(fleet, "healthy", "promote") == 1
    assert counted(fleet, "healthy", "rollback") == 0
    after = fleet.registry.deployments.get("healthy")
    assert (after.canary, after.weight, after.state) == (None, 0.0, RolloutState.STABLE)
    assert after.previous[0] == "1.0.0"
    history = [(e.action, e.actor) for e in fleet.registry.deployments.history("healthy")]
    assert history[:2] == [("promote", ACTOR), ("ramp.promote", ACTOR)]
    assert history.count(("ramp.step", ACTOR)) == 3

    await monitor.drain(10)
    alerts = alerts_received(receiver)
    assert sorted(a["model"] for a in alerts) == ["erring", "slow", "wrong"]
    for alert in alerts:
        assert alert["canary"] == "1.1.0"
        assert alert["reason"] == done[alert["model"]].detail


@pytest_asyncio.fixture
async def gated(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Services]:
    """``narrowed``: 1.0.0 in production, and 1.1.0 whose input schema refuses what 1.0.0
    accepted (measurements above 100) without a MAJOR bump, so the compatibility gate refuses
    to promote it."""
    built = build_services(make_settings(tmp_path / "home", receiver))
    monitor_of(built)
    narrower = {"type": "number", "minimum": 0, "maximum": 100}
    schema = {"type": "array", "items": narrower, "minItems": 4, "maxItems": 4}
    manifests: list[tuple[str, dict[str, Any]]] = [
        ("1.0.0", {}),
        ("1.1.0", {"input_schema": schema}),
    ]
    for version, manifest in manifests:
        directory = write_iris_variant(tmp_path / "models", "narrowed", version, **manifest)
        built.registry.push(directory, actor="test")
    built.registry.set_stage("narrowed", "1.0.0", Stage.PRODUCTION, actor="test")
    await built.manager.refresh()
    await built.manager.wait_loaded(timeout=120)
    yield built
    await shut(built)


@pytest.mark.asyncio
async def test_a_gate_that_refuses_holds_a_finished_ramp(gated: Services) -> None:
    monitor = monitor_of(gated)
    ramp = RampPlan((50.0, 100.0), interval_s=0.3, promote=True)
    # at 100% production gets no traffic: a busy machine then makes the canary look slower
    # than production's earlier answers; this test is about the gate, not about latency
    guards = replace(GUARDS, latency_ratio=10.0)
    start_canary(gated, "narrowed", guards, weight=50.0, ramp=ramp)
    await gated.manager.refresh()
    traffic = Traffic(gated)
    canary_side = sessions("narrowed", canary=True)
    production_side = sessions("narrowed", canary=False)
    taken: list[RolloutAction] = []
    deadline = time.monotonic() + 60
    while not any(a.action is Action.HELD for a in taken):
        assert time.monotonic() < deadline, taken
        await traffic.pairs("narrowed", canary_side, production_side, 20, len(taken) * 20)
        await asyncio.sleep(0.1)
        taken += await monitor.evaluate()
        await gated.manager.refresh()
    assert [a.action for a in taken] == [Action.RAMP, Action.HELD]
    held = taken[-1].detail
    assert held["version"] == "1.1.0"
    assert "gates" in held
    assert "maximum" in json.dumps(held["gates"])  # the breaking change is named
    # tried once per interval, not on every pass
    assert await monitor.evaluate() == []
    spec = gated.registry.deployments.get("narrowed")
    assert (spec.canary, spec.weight, spec.state) == ("1.1.0", 100.0, RolloutState.CANARY)
    assert gated.registry.resolve("narrowed", None).version == "1.0.0"
    (entry,) = [
        e for e in gated.registry.deployments.history("narrowed") if e.action == "ramp.held"
    ]
    assert (entry.actor, entry.detail) == (ACTOR, held)
    assert counted(gated, "narrowed", "held") == 1
    assert counted(gated, "narrowed", "promote") == 0
    await asyncio.sleep(ramp.interval_s)
    await traffic.pairs("narrowed", canary_side, production_side, 20, 0)
    again = await monitor.evaluate()
    assert [a.action for a in again] == [Action.HELD]
    assert counted(gated, "narrowed", "held") == 2


@pytest.mark.asyncio
async def test_the_started_component_rolls_back_on_its_own(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = make_settings(tmp_path / "home", receiver)
    settings.rollouts = settings.rollouts.model_copy(
        update={"check_interval_s": 0.05, "stats_flush_s": 0.05}
    )
    services = build_services(settings)
    try:
        for version, fail in (("1.0.0", 0), ("1.1.0", 2)):
            directory = write_iris_variant(tmp_path / "models", "flowers", version, fail_every=fail)
            services.registry.push(directory, actor="test")
        services.registry.set_stage("flowers", "1.0.0", Stage.PRODUCTION, actor="test")
        start_canary(services, "flowers", GuardPolicy(window_s=60, min_samples=10))
        monitor = monitor_of(services)
        await services.manager.refresh()
        await services.manager.wait_loaded(timeout=120)
        await monitor.start()
        traffic = Traffic(services)
        canary_side = sessions("flowers", canary=True)
        production_side = sessions("flowers", canary=False)
        await traffic.pairs("flowers", canary_side, production_side, 12, 0)
        deadline = time.monotonic() + 10
        while services.registry.deployments.get("flowers").weight:
            assert time.monotonic() < deadline, "no rollback"
            await asyncio.sleep(0.05)
        await monitor.stop()
        assert services.registry.deployments.get("flowers").state is RolloutState.ROLLED_BACK
        assert len(alerts_received(receiver)) == 1
        assert counted(services, "flowers", "rollback") == 1
        assert weight_gauge(services, "flowers") == 0.0
    finally:
        await shut(services)
