"""Shadow versions with real iris versions in-process: agreement, disagreements with
examples, failing, slow and refusing shadows, a full queue, stopping, the limits that keep
shadows on spare capacity, jobs, and two replicas summed from one database. The callers'
answers are checked against production's every time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from modelhost.app import Services, build_services, close_services
from modelhost.config import CacheSettings, DemoSettings, RolloutSettings, Settings
from modelhost.inference import (
    InferenceEvent,
    InferenceObserver,
    InferenceRequest,
    InferenceResponse,
)
from modelhost.manifest import Task
from modelhost.registry import Registry, Stage, build_registry
from modelhost.rollouts.shadow import (
    RunnerOptions,
    ShadowRunner,
    build_shadow,
    close,
    compare,
    items_agree,
)
from modelhost.rollouts.stats import ShadowReport, default_replica
from modelhost.rollouts.store import ShadowStore
from tests.serving.iris_variants import iris_rows, write_iris_variant

ROWS, _ = iris_rows()
#: Rows of every class (setosa, versicolor, virginica), so a shifted label always differs.
SAMPLE = [ROWS[i] for i in (0, 10, 55, 60, 110, 120, 20, 70, 140, 30, 80, 130)]
V1_KEYS = {"id", "model", "version", "created", "results", "usage"}


class Counting(InferenceObserver):
    """Counts the inference events the data plane emits."""

    def __init__(self) -> None:
        self.events: list[InferenceEvent] = []

    def observe(self, event: InferenceEvent) -> None:
        self.events.append(event)


def settings_for(home: Path, **rollouts: Any) -> Settings:
    return Settings(
        home=home,
        demo=DemoSettings(enabled=False),
        rollouts=RolloutSettings.model_validate({"stats_flush_s": 30.0, **rollouts}),
        cache=CacheSettings(enabled=False),  # a cache hit is not shadowed: count every copy
    )


async def start(settings: Settings) -> Services:
    built = build_services(settings)
    await built.manager.refresh()
    await built.manager.wait_loaded(timeout=120)
    return built


def deploy(registry: Registry, models: Path, shadows: dict[str, dict[str, Any]]) -> None:
    """Push production 1.0.0 (the plain iris model) and the shadows, and name them."""
    registry.push(write_iris_variant(models, "iris", "1.0.0"), actor="t", stage=Stage.PRODUCTION)
    for version, behaviour in shadows.items():
        registry.push(write_iris_variant(models, "iris", version, **behaviour), actor="t")
    registry.deployments.change("iris", actor="t", action="shadow", shadows=tuple(shadows))


@pytest_asyncio.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Builds services on one home (several calls: several replicas on one database), each
    with production iris and the given shadows; closes them all at the end."""
    built: list[tuple[Services, ShadowRunner]] = []

    async def factory(
        shadows: dict[str, dict[str, Any]],
        *,
        replica: str | None = None,
        options: RunnerOptions | None = None,
        **rollouts: Any,
    ) -> tuple[Services, ShadowRunner]:
        home = tmp_path / "home"
        if not built:
            registry = build_registry(settings_for(home))
            deploy(registry, tmp_path / "models", shadows)
            registry.engine.dispose()
        services = await start(settings_for(home, **rollouts))
        runner = runner_of(services, replica, options)
        built.append((services, runner))
        return services, runner

    yield factory
    for services, runner in built:
        await asyncio.wait_for(runner.stop(), 30)
        await close_services(services)
        services.registry.engine.dispose()


#: The runner's limits on spare capacity, lifted (a budget of the whole time, no wait for
#: slack) where a test is not about them: copies then run as fast as the shadow answers.
UNLIMITED = RunnerOptions(max_share=1.0, max_lag_s=float("inf"))


def runner_of(
    services: Services, replica: str | None, options: RunnerOptions | None
) -> ShadowRunner:
    """A runner built as :func:`build_shadow` builds it, with ``options`` (default
    :data:`UNLIMITED`), hung on the data plane in place of any other."""
    rollouts = services.settings.rollouts
    store = ShadowStore(services.registry.engine, examples=rollouts.shadow_examples)
    chosen = options if options is not None else UNLIMITED
    runner = ShadowRunner(services.plane, store, rollouts, replica=replica, options=chosen)
    services.plane.shadow = runner
    return runner


async def call(services: Services, rows: list[list[float]], **kw: Any) -> list[InferenceResponse]:
    """One caller request per row, one after another."""
    return [
        await services.plane.infer(
            InferenceRequest(model="iris", inputs=[row], request_id=f"r{i}", **kw)
        )
        for i, row in enumerate(rows)
    ]


async def production_results(services: Services, rows: list[list[float]]) -> list[Any]:
    """What production answers for each row, asked pinned (a pinned request has no shadow)."""
    return [r.results for r in await call(services, rows, version="1.0.0")]


async def report_of(runner: ShadowRunner, version: str, since: float | None = None) -> ShadowReport:
    await asyncio.wait_for(runner.drained(), 60)
    since = time.time() - 600 if since is None else since
    (found,) = [r for r in await runner.report("iris", since) if r.version == version]
    return found


def counted(services: Services, version: str, outcome: str) -> float:
    labels = {"model": "iris", "version": version, "outcome": outcome}
    value = services.metrics.registry.get_sample_value("modelhost_shadow_requests_total", labels)
    return value or 0.0


def assert_from_production(answers: list[InferenceResponse], expected: list[Any]) -> None:
    assert [a.results for a in answers] == expected
    assert {a.version for a in answers} == {"1.0.0"}
    assert all(set(a.as_v1()) == V1_KEYS for a in answers)


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


# -- comparison -------------------------------------------------------------------------------


def test_classification_compares_labels_only() -> None:
    assert items_agree(
        Task.CLASSIFICATION, {"label": "a", "score": 0.9}, {"label": "a", "score": 0.6}
    )
    assert not items_agree(Task.CLASSIFICATION, {"label": "a"}, {"label": "b"})
    # without labels, a classification result is compared as any other
    assert items_agree(Task.CLASSIFICATION, {"probs": [0.2, 0.8]}, {"probs": [0.2, 0.8]})


def test_numbers_and_vectors_agree_when_close() -> None:
    assert close(1.0, 1.0005)
    assert not close(1.0, 1.01)
    assert close(0.0, 1e-12)
    assert close({"embedding": [0.6, 0.8]}, {"embedding": [0.6001, 0.7999]})
    assert not close({"embedding": [0.6, 0.8]}, {"embedding": [0.8, 0.6]})  # cosine 0.96
    assert not close([1.0, 2.0], [2.0, 4.0])  # same direction, twice as long
    assert close([0.0, 0.0], [0.0, 0.0])
    assert not close([0.0, 0.0], [0.0, 1.0])
    assert items_agree(Task.REGRESSION, 3.14159, 3.1416)


def test_anything_else_must_be_the_same_json() -> None:
    assert close({"text": "hi", "n": [1, "x"]}, {"n": [1, "x"], "text": "hi"})
    assert not close({"text": "hi"}, {"text": "hi", "extra": None})
    assert not close("yes", "no")
    assert not close(True, 1)
    assert not close([1.0], [1.0, 2.0])


def test_a_shadow_answering_another_number_of_items_disagrees_on_all() -> None:
    task = Task.CLASSIFICATION
    assert compare(task, [{"label": "a"}, {"label": "b"}], [{"label": "a"}]) == [False, False]
    assert compare(task, [{"label": "a"}, {"label": "b"}], [{"label": "a"}, {"label": "c"}]) == [
        True,
        False,
    ]


def test_replica_names_differ_between_runners() -> None:
    assert default_replica() != default_replica()


# -- the runner -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_shadow_of_the_same_model_agrees_and_is_never_seen_as_a_request(
    make: Callable[..., Any],
) -> None:
    services, runner = await make({"1.1.0": {}})
    events = Counting()
    services.plane.observers.append(events)
    await runner.start()
    answers = await call(services, SAMPLE)
    report = await report_of(runner, "1.1.0")
    assert report.agreement == 1.0
    assert (report.totals.compared, report.totals.items, report.totals.errors) == (12, 12, 0)
    assert report.examples == ()
    assert report.replicas == 1
    assert report.shadow_latency.count == report.primary_latency.count == 12
    assert report.shadow_latency.p50_s is not None
    assert report.primary_latency.p95_s is not None
    assert counted(services, "1.1.0", "agree") == 12
    # only the callers' requests were inferences: the shadow runs emitted no events
    assert len(events.events) == 12
    assert {e.info.version for e in events.events if e.info is not None} == {"1.0.0"}
    body = report.as_dict()
    assert body["agreement"] == 1.0
    assert body["latency"]["difference"]["p50_ms"] is not None
    assert_from_production(answers, await production_results(services, SAMPLE))


@pytest.mark.asyncio
async def test_a_wrong_shadow_disagrees_with_examples_and_its_answers_stay_hidden(
    make: Callable[..., Any],
) -> None:
    services, runner = await make({"1.2.0": {"wrong": True}}, shadow_examples=3)
    await runner.start()
    answers = await call(services, SAMPLE)
    report = await report_of(runner, "1.2.0")
    assert report.agreement == 0.0
    assert (report.totals.compared, report.totals.agreed) == (12, 0)
    assert counted(services, "1.2.0", "disagree") == 12
    assert len(report.examples) == 3
    newest = report.examples[0]
    assert newest.request_id == "r11"  # the newest first
    assert newest.input == SAMPLE[11]
    assert newest.primary == answers[11].results[0]
    assert newest.shadow["label"] != newest.primary["label"]
    assert newest.primary_version == "1.0.0"
    assert report.as_dict()["examples"][0]["shadow"] == newest.shadow
    # the callers got production's labels, never the shadow's shifted ones
    assert_from_production(answers, await production_results(services, SAMPLE))


@pytest.mark.asyncio
async def test_a_failing_shadow_counts_errors_and_callers_are_unaffected(
    make: Callable[..., Any],
) -> None:
    services, runner = await make({"1.3.0": {"fail_every": 1}})
    events = Counting()
    services.plane.observers.append(events)
    await runner.start()
    answers = await call(services, SAMPLE)
    report = await report_of(runner, "1.3.0")
    assert (report.totals.errors, report.totals.compared) == (12, 0)
    assert report.agreement is None
    assert report.totals.last_error is not None
    assert "the canary broke" in report.totals.last_error
    assert counted(services, "1.3.0", "error") == 12
    assert all(e.error is None for e in events.events)  # no failure was seen by any caller
    assert_from_production(answers, await production_results(services, SAMPLE))


@pytest.mark.asyncio
async def test_a_slow_shadow_never_holds_up_callers(make: Callable[..., Any]) -> None:
    services, runner = await make({"1.4.0": {"sleep_ms": 400}}, shadow_queue=2)
    await runner.start()
    await call(services, SAMPLE[:1])
    await until(lambda: runner.state.running == 1)  # the shadow is busy with the first copy
    answers = await call(services, SAMPLE[1:])
    # every later caller was answered while the shadow was still on that first copy
    state = runner.state
    assert (state.running, state.finished, state.queued, state.dropped) == (1, 0, 2, 9)
    assert len(answers) == 11
    report = await report_of(runner, "1.4.0")
    assert (report.totals.compared, report.totals.dropped) == (3, 9)
    shadow_p50, primary_p50 = report.shadow_latency.p50_s, report.primary_latency.p50_s
    assert shadow_p50 is not None
    assert primary_p50 is not None
    assert shadow_p50 > 0.35 > primary_p50
    assert report.as_dict()["latency"]["difference"]["p50_ms"] > 300


@pytest.mark.asyncio
async def test_a_full_queue_drops_copies_and_counts_them(make: Callable[..., Any]) -> None:
    services, runner = await make({"1.1.0": {}}, shadow_queue=3)
    answers = await call(services, SAMPLE[:10])  # not started: nothing takes copies yet
    assert len(answers) == 10
    assert (runner.state.queued, runner.state.dropped) == (3, 7)
    assert counted(services, "1.1.0", "dropped") == 7
    await runner.start()
    report = await report_of(runner, "1.1.0")
    assert (report.totals.compared, report.totals.dropped, report.agreement) == (3, 7, 1.0)


@pytest.mark.asyncio
async def test_stopping_drops_what_is_left_without_waiting_for_it(
    make: Callable[..., Any],
) -> None:
    services, runner = await make(
        {"1.4.0": {"sleep_ms": 3000}},
        shadow_queue=5,
        options=replace(UNLIMITED, drain_s=0.1),
    )
    await runner.start()
    await call(services, SAMPLE[:6])
    await until(lambda: runner.state.running == 1)
    started = time.monotonic()
    await runner.stop()
    assert time.monotonic() - started < 2.5  # the running 3 s call was not waited for
    assert runner.state.dropped == 6
    (report,) = await asyncio.to_thread(runner.store.report, "iris", time.time() - 600)
    assert (report.totals.dropped, report.totals.compared) == (6, 0)
    # a stopped runner takes no copies: they are dropped and counted at once
    await call(services, SAMPLE[:1])
    assert runner.state.dropped == 7


@pytest.mark.asyncio
async def test_a_shadow_refusing_the_input_or_not_loaded_is_skipped(
    make: Callable[..., Any],
) -> None:
    narrow = {"type": "array", "items": {"type": "number"}, "minItems": 5}
    services, runner = await make(
        {"1.5.0": {"input_schema": narrow}, "1.6.0": {"entrypoint": "iris_model:Missing"}}
    )
    await runner.start()
    answers = await call(services, SAMPLE[:4])
    await asyncio.wait_for(runner.drained(), 60)
    reports = {r.version: r for r in await runner.report("iris", time.time() - 600)}
    assert reports["1.5.0"].totals.skipped == {"invalid_input": 4}
    assert reports["1.6.0"].totals.skipped == {"failed": 4}
    assert reports["1.5.0"].as_dict()["skipped"] == 4
    assert counted(services, "1.6.0", "skipped") == 4
    assert_from_production(answers, await production_results(services, SAMPLE[:4]))


@pytest.mark.asyncio
async def test_jobs_run_together_are_each_shadowed(make: Callable[..., Any]) -> None:
    services, runner = await make({"1.2.0": {"wrong": True}})
    await runner.start()
    requests = [
        InferenceRequest(model="iris", inputs=[row, row], request_id=f"job{i}")
        for i, row in enumerate(SAMPLE[:3])
    ]
    outcomes = await services.plane.infer_many(requests)
    assert all(isinstance(o, InferenceResponse) and o.version == "1.0.0" for o in outcomes)
    report = await report_of(runner, "1.2.0")
    assert (report.totals.compared, report.totals.items, report.totals.items_agreed) == (3, 6, 0)
    assert {e.request_id for e in report.examples} == {"job0", "job1", "job2"}


@pytest.mark.asyncio
async def test_replays_and_pinned_requests_are_not_shadowed(make: Callable[..., Any]) -> None:
    services, runner = await make({"1.1.0": {}})
    await runner.start()
    await call(services, SAMPLE[:2], version="1.0.0")
    await call(services, SAMPLE[:2], replay_of="earlier")
    await asyncio.wait_for(runner.drained(), 60)
    assert runner.state.finished == 0
    assert await runner.report("iris", time.time() - 600) == []


@pytest.mark.asyncio
async def test_two_replicas_on_one_database_are_summed(make: Callable[..., Any]) -> None:
    first, a = await make({"1.2.0": {"wrong": True}}, replica="replica-a")
    second, b = await make({"1.2.0": {"wrong": True}}, replica="replica-b")
    await a.start()
    await b.start()
    await call(first, SAMPLE[:5])
    await call(second, SAMPLE[5:])
    await asyncio.wait_for(b.drained(), 60)
    await b.flush()
    since = time.time() - 600
    report = await report_of(a, "1.2.0", since)
    assert report.replicas == 2
    assert (report.totals.compared, report.totals.items, report.agreement) == (12, 12, 0.0)
    assert report.shadow_latency.count == 12
    replicas = [e.replica for e in report.examples]
    assert (replicas.count("replica-a"), replicas.count("replica-b")) == (5, 7)
    # anyone reading the tables (``modelhost deploy status``) sees the same
    (again,) = ShadowStore(first.registry.engine).report("iris", since)
    assert again.as_dict() == report.as_dict()
    # flushing again changes nothing: each replica overwrites its own rows
    await a.flush()
    await b.flush()
    assert (await report_of(b, "1.2.0")).totals.compared == 12


@pytest.mark.asyncio
async def test_a_busy_loop_holds_shadow_calls_but_each_still_runs_in_the_end(
    make: Callable[..., Any],
) -> None:
    # a lag limit of zero: the loop never looks idle enough, so every call waits hold_s
    options = replace(UNLIMITED, max_lag_s=0.0, hold_s=0.3)
    services, runner = await make({"1.1.0": {}}, options=options)
    await runner.start()
    started = time.monotonic()
    await call(services, SAMPLE[:3])
    report = await report_of(runner, "1.1.0")
    assert time.monotonic() - started >= 3 * 0.3
    assert (report.totals.compared, report.agreement) == (3, 1.0)
    assert runner.state.lag_s > 0.0


@pytest.mark.asyncio
async def test_shadow_calls_keep_within_their_share_of_the_time(
    make: Callable[..., Any],
) -> None:
    # one call of at least 0.1 ms earns a pause of at least 1 s at a share of 0.01 %
    options = replace(UNLIMITED, max_share=0.0001, drain_s=0.0)
    services, runner = await make({"1.1.0": {}}, options=options)
    await runner.start()
    await call(services, SAMPLE[:4])
    await until(lambda: runner.state.finished == 1)
    await asyncio.sleep(0.2)
    assert (runner.state.finished, runner.state.queued + runner.state.running) == (1, 3)
    await runner.stop()
    assert runner.state.dropped == 3


@pytest.mark.asyncio
async def test_the_composition_root_attaches_a_runner_with_the_settings_to_the_plane(
    tmp_path: Path,
) -> None:
    services = build_services(settings_for(tmp_path / "home", shadow_examples=7))
    try:
        runner = services.shadow
        assert services.plane.shadow is runner
        assert services.components.count(runner) == 1  # started and stopped with the rest
        other = build_shadow(services.plane, services.registry.engine, services.settings.rollouts)
        assert other is not runner
        assert services.plane.shadow is runner  # building one attaches nothing
        assert runner.options == RunnerOptions()
        assert (runner.stats.examples, runner.store.examples) == (7, 7)
        await runner.start()
        await asyncio.wait_for(runner.stop(), 10)
        assert runner.state == replace(runner.state, queued=0, running=0, finished=0, dropped=0)
    finally:
        await close_services(services)
        services.registry.engine.dispose()
