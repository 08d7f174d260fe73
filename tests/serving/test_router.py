"""The router: pins bypass the split, the canary gets its weight of callers (sticky), shadows
are named, and a version not loaded yet is stood in for by one that is."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio

from modelhost.app import Services, build_services, close_services
from modelhost.config import Settings
from modelhost.inference import InferenceRequest
from modelhost.registry import Stage, Sticky
from modelhost.security.keys import Principal
from modelhost.serving.models import ModelState
from modelhost.serving.router import BUCKETS, Arm, bucket
from tests.conftest import write_python_model


@pytest_asyncio.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    settings = Settings(home=tmp_path / "home", demo={"enabled": False})
    built = build_services(settings)
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        built.registry.push(write_python_model(tmp_path, "echo", version), actor="test")
    built.registry.set_stage("echo", "1.0.0", Stage.PRODUCTION, actor="test")
    await built.manager.refresh(load=True)
    await built.manager.wait_loaded()
    yield built
    await close_services(built)


def _who(n: int) -> Principal:
    return Principal(tenant="acme", subject=f"user{n}", scopes=frozenset({"predict"}))


def _request(n: int, version: str | None = None, session: str | None = None) -> InferenceRequest:
    return InferenceRequest(
        model="echo",
        inputs=[{"text": "hi"}],
        principal=_who(n),
        request_id=f"r{n}",
        version=version,
        session=session,
    )


async def _canary(services: Services, weight: float, sticky: Sticky = Sticky.PRINCIPAL) -> None:
    deployments = services.registry.deployments
    spec = deployments.get("echo")
    stored = deployments.update(
        replace(spec, canary="1.1.0", weight=weight, sticky=sticky), actor="test", action="change"
    )
    assert stored is not None
    await services.manager.refresh()
    await services.manager.wait_loaded()


@pytest.mark.asyncio
async def test_split_follows_the_weight_within_binomial_tolerance(services: Services) -> None:
    await _canary(services, 10)
    callers = 4000
    arms = [(await services.plane.router.route(_request(n))).arm for n in range(callers)]
    canary = arms.count(Arm.CANARY)
    expected, sd = callers * 0.10, math.sqrt(callers * 0.10 * 0.90)
    assert abs(canary - expected) < 4 * sd, (canary, expected, sd)
    assert arms.count(Arm.PRODUCTION) == callers - canary


@pytest.mark.asyncio
async def test_a_caller_stays_on_its_side_and_a_ramp_keeps_canary_callers(
    services: Services,
) -> None:
    await _canary(services, 10)
    first = {n: (await services.plane.router.route(_request(n))).arm for n in range(300)}
    for n in range(300):  # the same caller, again and again: the same side
        assert (await services.plane.router.route(_request(n))).arm == first[n]
    await _canary(services, 50)
    raised = {n: (await services.plane.router.route(_request(n))).arm for n in range(300)}
    assert all(raised[n] == Arm.CANARY for n in first if first[n] == Arm.CANARY)
    assert sum(a == Arm.CANARY for a in raised.values()) > sum(
        a == Arm.CANARY for a in first.values()
    )


@pytest.mark.asyncio
async def test_answers_come_from_the_side_the_caller_is_on(services: Services) -> None:
    await _canary(services, 50)
    for n in range(40):
        route = await services.plane.router.route(_request(n))
        response = await services.plane.infer(_request(n))
        assert response.version == route.info.version


@pytest.mark.asyncio
async def test_a_pin_bypasses_the_split(services: Services) -> None:
    await _canary(services, 100)
    assert (await services.plane.router.route(_request(1))).arm == Arm.CANARY
    pinned = await services.plane.router.route(_request(1, version="1.0.0"))
    assert (pinned.arm, pinned.info.version) == (Arm.PINNED, "1.0.0")
    staged = await services.plane.router.route(_request(1, version="1.2.0"))
    assert (staged.arm, staged.info.version) == (Arm.PINNED, "1.2.0")
    response = await services.plane.infer(_request(1, version="1.0.0"))
    assert response.version == "1.0.0"


@pytest.mark.asyncio
async def test_session_stickiness_and_anonymous_callers(services: Services) -> None:
    await _canary(services, 50, sticky=Sticky.SESSION)
    # one session, many principals: one side
    sides = {
        (await services.plane.router.route(_request(n, session="cart-42"))).arm for n in range(50)
    }
    assert len(sides) == 1
    expected = Arm.CANARY if bucket("echo", "s:cart-42") < BUCKETS // 2 else Arm.PRODUCTION
    assert sides == {expected}
    # no identity at all: split per request
    anonymous = [
        (await services.plane.router.route(InferenceRequest(model="echo", request_id=f"a{n}"))).arm
        for n in range(200)
    ]
    assert Arm.CANARY in anonymous
    assert Arm.PRODUCTION in anonymous


@pytest.mark.asyncio
async def test_shadows_are_named_on_the_route_but_never_answer(services: Services) -> None:
    deployments = services.registry.deployments
    deployments.change("echo", actor="test", action="change", shadows=("1.2.0",))
    await services.manager.refresh()
    route = await services.plane.router.route(_request(3))
    assert [v.version for v in route.shadows] == ["1.2.0"]
    assert route.info.version == "1.0.0"
    assert (await services.plane.infer(_request(3))).version == "1.0.0"


@pytest.mark.asyncio
async def test_a_version_not_loaded_here_is_stood_in_for(services: Services) -> None:
    await _canary(services, 100)
    await services.manager.unload("echo@1.1.0")
    route = await services.plane.router.route(_request(1))
    assert (route.arm, route.info.version) == (Arm.PRODUCTION, "1.0.0")  # loading started
    await services.manager.wait_loaded()
    dep = services.manager.deployment("echo@1.1.0")
    assert dep is not None
    assert dep.state is ModelState.READY
    assert (await services.plane.router.route(_request(1))).arm == Arm.CANARY


@pytest.mark.asyncio
async def test_a_switch_keeps_serving_the_former_production_until_the_new_one_is_ready(
    services: Services,
) -> None:
    await services.manager.unload("echo@1.2.0")
    services.registry.deployments.change(
        "echo", actor="test", action="promote", previous=("1.0.0",)
    )
    services.registry.set_stage("echo", "1.2.0", Stage.PRODUCTION, actor="test")
    await services.manager.refresh()  # 1.2.0 starts loading; 1.0.0 is archived but kept warm
    route = await services.plane.router.route(_request(1))
    assert (route.arm, route.info.version) == (Arm.FALLBACK, "1.0.0")
    assert (await services.plane.infer(_request(1))).version == "1.0.0"
    await services.manager.wait_loaded()
    route = await services.plane.router.route(_request(1))
    assert (route.arm, route.info.version) == (Arm.PRODUCTION, "1.2.0")
    former = services.manager.deployment("echo@1.0.0")
    assert former is not None
    assert former.state is ModelState.READY
