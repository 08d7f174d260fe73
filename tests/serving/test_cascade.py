"""Cascades: a cheap iris model answers first, and exactly the items it is unsure of go on to
the bigger stage; the response and the records say which stage answered, and what was saved."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from modelhost.app import Services, build_services, close_services
from modelhost.config import Settings
from modelhost.errors import ManifestError
from modelhost.inference import InferenceRequest
from modelhost.manifest import CascadeStage, parse_manifest
from modelhost.registry import Stage
from modelhost.serving.cascade import escalates
from tests.observing import Capture
from tests.serving.iris_variants import iris_rows, write_iris_variant

THRESHOLD = 0.9
BIG_PRICE = 0.01


def write_cascade(root: Path, name: str, stages: list[dict[str, Any]]) -> Path:
    """A cascade version directory: only its manifest."""
    directory = root / f"{name}-1.0.0"
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": name,
        "version": "1.0.0",
        "runtime": "cascade",
        "cascade": {"stages": stages},
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return directory


@pytest_asyncio.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    settings = Settings(home=tmp_path / "home", demo={"enabled": False}, cache={"enabled": False})
    built = build_services(settings)
    registry = built.registry
    registry.push(write_iris_variant(tmp_path, "iris-small", "1.0.0"), actor="test")
    big = write_iris_variant(
        tmp_path,
        "iris-big",
        "1.0.0",
        wrong=True,  # answers differ from the small stage's, so the answering stage shows
        pricing={"unit": "item", "input": BIG_PRICE},
    )
    registry.push(big, actor="test")
    stages: list[dict[str, Any]] = [
        {"model": "iris-small", "min_score": THRESHOLD},
        {"model": "iris-big@1.0.0"},
    ]
    registry.push(write_cascade(tmp_path, "iris-route", stages), actor="test")
    for name in ("iris-small", "iris-big", "iris-route"):
        registry.set_stage(name, "1.0.0", Stage.PRODUCTION, actor="test")
    await built.manager.refresh(load=True)
    await built.manager.wait_loaded()
    yield built
    await close_services(built)


async def _results(services: Services, model: str, rows: list[list[float]]) -> list[Any]:
    response = await services.plane.infer(InferenceRequest(model=model, inputs=list(rows)))
    return response.results


@pytest.mark.asyncio
async def test_a_cascade_escalates_exactly_the_low_confidence_inputs(services: Services) -> None:
    rows = iris_rows()[0][::2]  # 75 rows, in order
    small = await _results(services, "iris-small", rows)
    big = await _results(services, "iris-big", rows)
    unsure = [i for i, r in enumerate(small) if r["score"] < THRESHOLD]
    assert 0 < len(unsure) < len(rows)  # the data has both kinds
    capture = Capture()
    services.plane.observers.append(capture)

    response = await services.plane.infer(
        InferenceRequest(model="iris-route", inputs=list(rows), request_id="c1")
    )

    big_calls = capture.of("iris-big")
    assert len(big_calls) == 1
    assert big_calls[0].request.inputs == [rows[i] for i in unsure]
    assert len(capture.of("iris-small")[0].request.inputs) == len(rows)
    expected = [big[i] if i in unsure else small[i] for i in range(len(rows))]
    assert response.results == expected
    cascade = response.decisions["cascade"]
    assert cascade["answered_by"] == [1 if i in unsure else 0 for i in range(len(rows))]
    assert cascade["escalated"] == len(unsure)
    assert [s["items"] for s in cascade["stages"]] == [len(rows), len(unsure)]
    early = len(rows) - len(unsure)
    assert cascade["cost_saved"] == pytest.approx(BIG_PRICE * early)
    assert response.usage.saved == pytest.approx(BIG_PRICE * early)
    assert response.usage.cost == pytest.approx(BIG_PRICE * len(unsure))
    body = response.as_v1()
    assert body["model"] == "iris-route"
    assert body["cascade"]["answered_by"] == cascade["answered_by"]
    assert body["usage"]["cost_saved"] == pytest.approx(BIG_PRICE * early)


@pytest.mark.asyncio
async def test_provenance_records_the_cascade_and_each_stage(services: Services) -> None:
    capture = Capture()
    services.plane.observers.append(capture)
    rows = iris_rows()[0][:3]  # confident setosa rows: the first stage answers all
    response = await services.plane.infer(InferenceRequest(model="iris-route", inputs=rows))
    assert response.decisions["cascade"]["answered_by"] == [0, 0, 0]
    assert capture.of("iris-big") == []
    (route,) = capture.of("iris-route")
    assert route.decisions["cascade"]["escalated"] == 0
    assert route.decisions["route"]["version"] == "1.0.0"
    (stage,) = capture.of("iris-small")
    assert stage.decisions["cascade"] == {"route": "iris-route@1.0.0", "stage": 0}


@pytest.mark.asyncio
async def test_a_stage_validates_the_items_it_gets(services: Services) -> None:
    with pytest.raises(Exception, match=r"inputs\[0\]"):
        await services.plane.infer(InferenceRequest(model="iris-route", inputs=[[1.0, 2.0]]))


def test_rules_escalate_by_score_label_and_text() -> None:
    by_score = CascadeStage(model="m", min_score=0.5)
    assert escalates(by_score, {}, {"score": 0.4})
    assert escalates(by_score, {}, {"label": "x"})  # no score: not confident
    assert not escalates(by_score, {}, {"score": 0.6})
    by_label = CascadeStage(model="m", escalate_labels=["unsure"])
    assert escalates(by_label, {}, {"label": "unsure"})
    assert not escalates(by_label, {}, {"label": "spam"})
    by_text = CascadeStage(model="m", escalate_pattern=r"(?i)refund|lawyer")
    assert escalates(by_text, {"text": "I want a REFUND"}, {"label": "ok"})
    assert escalates(by_text, "call my lawyer", {"label": "ok"})
    assert not escalates(by_text, {"text": "thanks"}, {"label": "ok"})


def test_the_manifest_ties_runtime_cascade_to_its_stages() -> None:
    base = {"name": "r", "version": "1.0.0"}
    with pytest.raises(ManifestError, match="cascade"):
        parse_manifest({**base, "runtime": "cascade"})
    with pytest.raises(ManifestError, match="cascade"):
        parse_manifest({**base, "runtime": "python", "cascade": {"stages": [{"model": "a"}] * 2}})
    with pytest.raises(ManifestError, match="regular expression"):
        parse_manifest(
            {
                **base,
                "runtime": "cascade",
                "cascade": {"stages": [{"model": "a", "escalate_pattern": "("}, {"model": "b"}]},
            }
        )


@pytest.mark.asyncio
async def test_jobs_batched_together_run_a_cascade_whole(services: Services) -> None:
    rows = iris_rows()[0][::10]
    outcomes = await services.plane.infer_many(
        [
            InferenceRequest(model="iris-route", inputs=list(rows)),
            InferenceRequest(model="iris-small", inputs=list(rows)),
        ]
    )
    route, small = outcomes
    assert not isinstance(route, Exception)
    assert not isinstance(small, Exception)
    answered_by = route.decisions["cascade"]["answered_by"]
    for index, result in enumerate(route.results):
        if answered_by[index] == 0:
            assert result == small.results[index]
        else:
            assert small.results[index]["score"] < THRESHOLD
