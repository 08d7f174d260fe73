"""Promotions and rollbacks with real iris versions in-process: the golden gate on the loaded
candidate, schema compatibility under semver, ``force`` and its audit, lineage and canary
clean-up, rollbacks that answer at once, and a switch under load that loses no request."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from modelhost.api.errors import modelhost_response
from modelhost.app import Services, build_services, close_services
from modelhost.config import CacheSettings, DemoSettings, RolloutSettings, Settings
from modelhost.errors import Conflict, GateRefused, InvalidInput, VersionNotFound
from modelhost.inference import InferenceRequest
from modelhost.registry import RolloutState, Stage
from modelhost.registry.golden import register_golden
from modelhost.rollouts.promotion import Promoter, PromotionReport
from tests.serving.iris_variants import INPUT_SCHEMA, iris_rows, write_iris_variant

ROWS, LABELS = iris_rows()
GATES = {"golden": {"file": "golden.jsonl", "thresholds": {"accuracy": 0.9}}}


class Env:
    """Services over a fresh home, and a way to push iris versions to them."""

    def __init__(self, services: Services, models: Path) -> None:
        self.services = services
        self.models = models

    @property
    def promoter(self) -> Promoter:
        return self.services.promoter

    async def push(
        self, version: str, *, stage: Stage = Stage.STAGING, golden: bool = True, **kw: Any
    ) -> None:
        """Push an iris version shipping a golden set of every 5th iris row."""
        if golden:
            kw.setdefault("gates", GATES)
        directory = write_iris_variant(self.models, "iris", version, **kw)
        lines = [json.dumps({"input": ROWS[i], "expected": LABELS[i]}) for i in range(0, 150, 5)]
        (directory / "golden.jsonl").write_text("\n".join(lines) + "\n")
        registry = self.services.registry
        await asyncio.to_thread(registry.push, directory, actor="test", stage=stage)
        await self.services.manager.refresh()
        await self.services.manager.wait_loaded(timeout=120)

    async def answer(self, row: int = 0) -> tuple[str, Any]:
        """An unpinned request's version and result."""
        found = await self.services.plane.infer(InferenceRequest(model="iris", inputs=[ROWS[row]]))
        return found.version, found.results[0]

    def production(self) -> str:
        info = self.services.registry.get_model("iris").stage_version(Stage.PRODUCTION)
        assert info is not None
        return info.version

    def history(self) -> list[tuple[str, dict[str, Any]]]:
        """Deployment history actions, oldest first."""
        events = self.services.registry.deployments.history("iris")
        return [(e.action, e.detail) for e in reversed(events)]


@pytest_asyncio.fixture
async def env(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """Services over a fresh home (``keep_warm`` from an indirect parameter, default 1)."""
    keep_warm = getattr(request, "param", 1)
    settings = Settings(
        home=tmp_path / "home",
        demo=DemoSettings(enabled=False),
        rollouts=RolloutSettings(keep_warm=keep_warm),
        # callers here repeat their inputs in a tight loop: cache hits would answer without
        # ever yielding to the event loop (and without the versions being switched)
        cache=CacheSettings(enabled=False),
    )
    services = build_services(settings)
    yield Env(services, tmp_path / "models")
    await close_services(services)
    services.registry.engine.dispose()


@pytest.mark.asyncio
async def test_a_good_candidate_passes_every_gate_and_serves(env: Env) -> None:
    await env.push("1.0.0", stage=Stage.PRODUCTION)
    await env.push("1.1.0")

    report = await env.promoter.promote("iris", "1.1.0", actor="alice")

    assert isinstance(report, PromotionReport)
    assert (report.version, report.previous, report.action, report.changed) == (
        "1.1.0",
        "1.0.0",
        "promote",
        True,
    )
    assert not report.forced
    assert report.skipped == []
    gates = report.gates["gates"]
    assert report.gates["passed"] is True
    assert gates["load"]["passed"]
    assert gates["warmup"]["passed"]
    golden = gates["golden"]["numbers"]
    assert golden["items"] == 30
    assert golden["accuracy"] >= 0.9
    assert golden["source"] == "artifact:golden.jsonl"
    assert gates["compatibility"]["summary"] == "same schemas as 1.0.0"
    assert env.production() == "1.1.0"
    assert await env.answer(0) == (
        "1.1.0",
        {"label": "setosa", "score": pytest.approx(0.98, abs=0.02)},
    )
    spec = env.services.registry.deployments.get("iris")
    assert spec.previous == ("1.0.0",)
    action, detail = env.history()[-1]
    assert action == "promote"
    assert (detail["version"], detail["from"], detail["forced"]) == ("1.1.0", "1.0.0", False)
    assert detail["report"]["passed"] is True


@pytest.mark.asyncio
async def test_a_wrong_candidate_fails_the_golden_gate_with_its_numbers(env: Env) -> None:
    await env.push("1.0.0", stage=Stage.PRODUCTION)
    await env.push("1.1.0", wrong=True)

    with pytest.raises(GateRefused) as refused:
        await env.promoter.promote("iris", "1.1.0", actor="alice")

    message = refused.value.message
    assert "iris@1.1.0 may not become production" in message
    assert "is below the required 0.9" in message
    assert "--force" in message
    report: Any = refused.value.report
    golden = report["gates"]["golden"]
    assert report["failed"] == ["golden"]
    assert golden["numbers"]["accuracy"] < 0.1
    assert golden["numbers"]["thresholds"] == {"accuracy": 0.9}
    assert len(golden["examples"]) == 5
    first = golden["examples"][0]
    assert first["expected"] == "setosa"
    assert first["got"] == "versicolor"
    assert "[FAIL] golden" in report["text"]
    assert env.production() == "1.0.0"
    assert (await env.answer())[0] == "1.0.0"
    action, detail = env.history()[-1]
    assert action == "promote.refused"
    assert detail["failed"] == ["golden"]
    assert detail["report"]["gates"]["golden"]["numbers"]["accuracy"] < 0.1

    response = modelhost_response(refused.value, "rid-1")
    body = orjson.loads(bytes(response.body))
    assert response.status_code == 409
    assert body["error"]["type"] == "gate_refused"
    assert body["error"]["request_id"] == "rid-1"
    assert body["error"]["report"]["gates"]["golden"]["passed"] is False


@pytest.mark.asyncio
async def test_a_breaking_schema_change_needs_a_major_bump(env: Env) -> None:
    await env.push("1.0.0", stage=Stage.PRODUCTION)
    stricter = {**INPUT_SCHEMA, "items": {"type": "number", "minimum": 0}}
    await env.push("1.1.0", input_schema=stricter)

    with pytest.raises(GateRefused) as refused:
        await env.promoter.promote("iris", "1.1.0", actor="alice")

    message = refused.value.message
    assert "1.1.0 breaks callers of 1.0.0 without a MAJOR version bump" in message
    assert "(it would need 2.0.0)" in message
    assert "[BREAKING] input inputs[][]: minimum None → 0" in message
    compat: Any = refused.value.report["gates"]
    assert compat["compatibility"]["diff"] == ["[BREAKING] input inputs[][]: minimum None → 0"]
    assert compat["golden"]["passed"] is True
    assert env.production() == "1.0.0"

    await env.push("2.0.0", input_schema=stricter)
    report = await env.promoter.promote("iris", "2.0.0", actor="alice")
    summary = report.gates["gates"]["compatibility"]["summary"]
    assert summary == "1 breaking change(s), allowed by the MAJOR bump 1 → 2"
    assert env.production() == "2.0.0"


@pytest.mark.asyncio
async def test_force_overrides_a_failed_gate_and_is_audited(env: Env) -> None:
    await env.push("1.0.0", stage=Stage.PRODUCTION)
    await env.push("1.1.0", wrong=True)

    report = await env.promoter.promote("iris", "1.1.0", actor="alice", force=True)

    assert report.forced
    assert report.skipped == ["golden"]
    assert report.gates["gates"]["golden"]["numbers"]["accuracy"] < 0.1
    assert env.production() == "1.1.0"
    assert (await env.answer(0))[1]["label"] == "versicolor"  # wrong, as forced
    action, detail = env.history()[-1]
    assert action == "promote.forced"
    assert detail["skipped"] == ["golden"]
    assert detail["forced"] is True
    assert detail["report"]["failed"] == ["golden"]


@pytest.mark.asyncio
async def test_force_never_skips_loading(env: Env) -> None:
    await env.push("1.0.0", stage=Stage.PRODUCTION)
    await env.push("1.1.0", entrypoint="iris_model:Missing")

    with pytest.raises(GateRefused, match="does not skip loading") as refused:
        await env.promoter.promote("iris", "1.1.0", actor="alice", force=True)

    assert refused.value.report["failed"] == ["load"]
    assert env.production() == "1.0.0"


@pytest.mark.asyncio
async def test_a_version_without_a_golden_set_is_promoted_with_a_note(env: Env) -> None:
    await env.push("1.0.0", golden=False)

    report = await env.promoter.promote("iris", "1.0.0", actor="alice")

    gates = report.gates["gates"]
    assert gates["golden"]["evaluated"] is False
    assert "no golden set" in gates["golden"]["summary"]
    assert gates["warmup"]["evaluated"] is False
    assert gates["compatibility"]["summary"] == "no production version to compare with"
    assert report.previous is None
    assert env.production() == "1.0.0"
    assert env.services.registry.deployments.get("iris").previous == ()


@pytest.mark.asyncio
async def test_a_registered_golden_set_wins_over_the_shipped_one(env: Env) -> None:
    await env.push("1.0.0", stage=Stage.PRODUCTION)
    await env.push("1.1.0")
    services = env.services
    # expected labels of other classes: the (good) candidate gets next to none right
    shifted = [{"input": ROWS[i], "expected": LABELS[(i + 50) % 150]} for i in range(0, 150, 10)]
    registered = await register_golden(
        services.registry,
        env.promoter.golden,
        "iris",
        "1.1.0",
        {"items": shifted, "thresholds": {"accuracy": 0.8}},
        actor="alice",
    )
    assert registered.describe()["items"] == 15
    assert registered.gate.thresholds.named() == {"accuracy": 0.8}

    with pytest.raises(GateRefused) as refused:
        await env.promoter.promote("iris", "1.1.0", actor="alice")

    report: Any = refused.value.report
    golden = report["gates"]["golden"]
    assert golden["numbers"]["source"] == "registered"
    assert golden["numbers"]["items"] == 15
    assert golden["numbers"]["accuracy"] < 0.2
    assert golden["failures"][0].endswith("is below the required 0.8")
    assert env.history()[0][0] == "golden.register"

    env.promoter.golden.delete("iris", "1.1.0")  # the shipped set applies again
    assert (await env.promoter.check("iris", "1.1.0")).passed


@pytest.mark.asyncio
async def test_registering_a_bad_golden_set_is_refused(env: Env) -> None:
    await env.push("1.0.0", golden=False)
    promoter, registry = env.promoter, env.services.registry
    item = {"input": ROWS[0], "expected": "setosa"}

    with pytest.raises(InvalidInput, match="no thresholds"):
        await register_golden(registry, promoter.golden, "iris", "1.0.0", [item], actor="a")
    with pytest.raises(InvalidInput, match=r"items\[0\]\.input"):
        await register_golden(
            registry,
            promoter.golden,
            "iris",
            "1.0.0",
            {"items": [{"input": [1, 2], "expected": "x"}], "thresholds": {"accuracy": 1}},
            actor="a",
        )
    with pytest.raises(InvalidInput, match="unknown field 'threshold'"):
        await register_golden(
            registry,
            promoter.golden,
            "iris",
            "1.0.0",
            {"items": [item], "threshold": {}},
            actor="a",
        )
    with pytest.raises(VersionNotFound):
        await register_golden(
            registry,
            promoter.golden,
            "iris",
            "9.9.9",
            {"items": [item], "thresholds": {"accuracy": 1}},
            actor="a",
        )


@pytest.mark.asyncio
async def test_promoting_a_canary_ends_the_canary(env: Env) -> None:
    await env.push("1.0.0", stage=Stage.PRODUCTION)
    await env.push("1.1.0")
    deployments = env.services.registry.deployments
    deployments.change(
        "iris", actor="t", action="canary", canary="1.1.0", weight=25.0, state=RolloutState.CANARY
    )

    await env.promoter.promote("iris", "1.1.0", actor="ramp")

    spec = deployments.get("iris")
    assert (spec.canary, spec.weight, spec.state) == (None, 0.0, RolloutState.STABLE)
    assert spec.previous == ("1.0.0",)


@pytest.mark.asyncio
async def test_promoting_the_production_version_changes_nothing(env: Env) -> None:
    await env.push("1.0.0", stage=Stage.PRODUCTION)
    before = env.history()

    report = await env.promoter.promote("iris", "1.0.0", actor="alice")

    assert not report.changed
    assert env.history() == before


@pytest.mark.asyncio
async def test_rollback_restores_the_previous_production_and_it_answers(env: Env) -> None:
    await env.push("1.0.0", stage=Stage.PRODUCTION)
    await env.push("1.1.0", wrong=True)
    await env.promoter.promote("iris", "1.1.0", actor="alice", force=True)
    assert (await env.answer(0))[1]["label"] == "versicolor"

    started = time.perf_counter()
    report = await env.promoter.rollback("iris", actor="oncall")
    assert time.perf_counter() - started < 2.0  # kept warm: no load, a warm-up and a switch

    assert (report.version, report.previous, report.action) == ("1.0.0", "1.1.0", "rollback")
    assert report.skipped == ["golden", "compatibility"]
    assert report.gates["gates"]["warmup"]["passed"]
    assert env.production() == "1.0.0"
    assert await env.answer(0) == (
        "1.0.0",
        {"label": "setosa", "score": pytest.approx(0.98, abs=0.02)},
    )
    assert env.services.registry.deployments.get("iris").previous == ("1.1.0",)
    action, detail = env.history()[-1]
    assert action == "rollback"
    assert (detail["version"], detail["from"]) == ("1.0.0", "1.1.0")
    assert detail["skipped"] == ["golden", "compatibility"]

    undo = await env.promoter.rollback("iris", actor="oncall")  # a second one undoes the first
    assert (undo.version, env.production()) == ("1.1.0", "1.1.0")
    again = await env.promoter.rollback("iris", actor="oncall", to="1.1.0")
    assert not again.changed


@pytest.mark.asyncio
async def test_rollback_goes_to_any_former_production_version(env: Env) -> None:
    await env.push("1.0.0", stage=Stage.PRODUCTION)
    for version in ("1.1.0", "1.2.0"):
        await env.push(version)
        await env.promoter.promote("iris", version, actor="alice")
    assert env.services.registry.deployments.get("iris").previous == ("1.1.0", "1.0.0")

    await env.promoter.rollback("iris", actor="oncall", to="1.0.0")

    assert env.production() == "1.0.0"
    assert env.services.registry.deployments.get("iris").previous == ("1.2.0", "1.1.0")
    assert (await env.answer())[0] == "1.0.0"


@pytest.mark.asyncio
async def test_rollback_after_switches_made_without_the_promoter_uses_the_history(
    env: Env,
) -> None:
    await env.push("1.0.0", stage=Stage.PRODUCTION, golden=False)
    await env.push("1.1.0", stage=Stage.PRODUCTION, golden=False)  # the registry's own move

    report = await env.promoter.rollback("iris", actor="oncall")

    assert (report.version, env.production()) == ("1.0.0", "1.0.0")


@pytest.mark.asyncio
async def test_rollback_explains_why_it_cannot(env: Env) -> None:
    await env.push("1.0.0")
    with pytest.raises(Conflict, match="has no production version, so there is nothing"):
        await env.promoter.rollback("iris", actor="oncall")

    await env.promoter.promote("iris", "1.0.0", actor="alice")
    with pytest.raises(Conflict, match="no former production version to roll back to"):
        await env.promoter.rollback("iris", actor="oncall")

    await env.push("1.1.0")
    with pytest.raises(Conflict, match=r"iris@1\.1\.0 is not a former production version"):
        await env.promoter.rollback("iris", actor="oncall", to="1.1.0")


@pytest.mark.parametrize("env", [1, 0], indirect=True, ids=["keep-warm", "cold"])
@pytest.mark.asyncio
async def test_a_switch_under_load_loses_no_request(env: Env) -> None:
    await env.push("1.0.0", stage=Stage.PRODUCTION, sleep_ms=5)
    await env.push("1.1.0", sleep_ms=5)
    plane = env.services.plane
    stop = asyncio.Event()
    answers: list[str] = []
    failures: list[BaseException] = []

    async def caller(n: int) -> None:
        while not stop.is_set():
            try:
                found = await plane.infer(
                    InferenceRequest(model="iris", inputs=[ROWS[n]], request_id=f"c{n}")
                )
            except Exception as exc:  # every one is a lost request
                failures.append(exc)
            else:
                answers.append(found.version)

    callers = [asyncio.create_task(caller(n)) for n in range(32)]
    await asyncio.sleep(0.3)
    await env.promoter.promote("iris", "1.1.0", actor="alice")
    await asyncio.sleep(0.3)
    await env.promoter.rollback("iris", actor="oncall")
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*callers)

    assert failures == []
    assert len(answers) > 100
    assert {"1.0.0", "1.1.0"} <= set(answers)
    assert answers[-1] == "1.0.0"
