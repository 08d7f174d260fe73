"""Replays through a real data plane (a python model in two versions, SQLite records): the same
answer again, another version's answer compared leaf by leaf, windows, and what cannot run."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from modelhost.app import Services, build_services, close_services, stop_components
from modelhost.config import Settings
from modelhost.errors import Conflict, Forbidden, VersionNotFound
from modelhost.inference import InferenceRequest
from modelhost.provenance import ProvenanceComponent, Query, Window, compare
from modelhost.registry import Stage
from modelhost.security.keys import ANONYMOUS, Principal

#: 1.0.0 scores by length; 1.1.0 adds a little noise and calls "flip" the other way round.
SCORER = textwrap.dedent(
    """
    class Scorer:
        def __init__(self, path):
            self.noise = 0.00001 if path.name.endswith("1.1.0") else 0.0

        def predict(self, inputs, parameters):
            out = []
            for item in inputs:
                text = item["text"]
                label = "long" if len(text) > 3 else "short"
                if self.noise and text == "flip":
                    label = "short"
                out.append({"label": label, "score": len(text) / 10 + self.noise})
            return out
    """
)


def _model(root: Path, version: str, capture: str = "full") -> Path:
    directory = root / f"scorer-{version}"
    directory.mkdir(parents=True)
    (directory / "scorer_model.py").write_text(SCORER)
    manifest = {
        "name": "scorer" if capture == "full" else f"scorer-{capture}",
        "version": version,
        "runtime": "python",
        "entrypoint": "scorer_model:Scorer",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "provenance": {"capture": capture},
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return directory


@pytest_asyncio.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    settings = Settings(home=tmp_path / "home", provenance={"flush_interval_s": 30})
    built = build_services(settings)
    models = tmp_path / "models"
    built.registry.push(_model(models, "1.0.0"), actor="t", stage=Stage.PRODUCTION)
    built.registry.push(_model(models, "1.1.0"), actor="t", stage=Stage.STAGING)
    built.registry.push(_model(models / "h", "1.0.0", "hash"), actor="t", stage=Stage.PRODUCTION)
    await built.manager.refresh(load=True)
    await built.manager.wait_loaded()
    yield built
    await stop_components(built)
    await close_services(built)


def _provenance(services: Services) -> ProvenanceComponent:
    found = next(c for c in services.components if isinstance(c, ProvenanceComponent))
    assert found.recorder is not None
    return found


async def _record(services: Services, text: str, model: str = "scorer") -> str:
    rid = f"req-{model}-{text}"
    await services.plane.infer(
        InferenceRequest(model=model, inputs=[{"text": text}], request_id=rid, protocol="v1")
    )
    return rid


def test_compare_measures_numbers_by_their_relative_gap() -> None:
    assert compare([{"a": 1, "b": "x"}], [{"b": "x", "a": 1}]).same
    numeric = compare([{"p": 0.5}], [{"p": 0.5001}])
    assert not numeric.same
    assert numeric.distance == pytest.approx(0.0001)
    assert numeric.agrees(1e-3)
    assert not numeric.agrees(1e-5)
    assert compare([200.0], [202.0]).distance == pytest.approx(2 / 202)
    label = compare([{"label": "a", "p": 0.5}], [{"label": "b", "p": 0.5}])
    assert [(d.path, d.original, d.replay, d.distance) for d in label.differences] == [
        ("[0].label", "a", "b", 1.0)
    ]
    missing = compare([{"a": 1}], [{"a": 1, "b": 2}, {"c": 3}])
    assert sorted(d.path for d in missing.differences) == ["[0].b", "[1]"]
    assert compare([True], [1]).distance == 1.0


@pytest.mark.asyncio
async def test_a_replay_reproduces_the_same_answer_and_is_marked(services: Services) -> None:
    provenance = _provenance(services)
    rid = await _record(services, "hello")
    assert provenance.recorder is not None
    await provenance.recorder.flush()
    record = provenance.store.get(rid)
    assert record is not None
    replayed = await provenance.replayer.replay(record, ANONYMOUS)
    view = replayed.view()
    assert view["same"] is True
    assert view["diff"] == []
    assert view["replay"]["version"] == "1.0.0"
    assert view["replay"]["outputs"] == record.outputs
    assert view["latency_ms"]["original"] == record.duration_ms
    await provenance.recorder.flush()
    again = provenance.store.list(Query(replay_of=rid))
    assert [r.protocol for r in again] == ["replay"]
    assert again[0].request_id == view["replay"]["request_id"]
    assert [r.request_id for r in provenance.store.list(Query())] == [rid]  # live only


@pytest.mark.asyncio
async def test_a_replay_on_another_version_shows_the_differences(services: Services) -> None:
    provenance = _provenance(services)
    assert provenance.recorder is not None
    rid = await _record(services, "flip")
    await provenance.recorder.flush()
    record = provenance.store.get(rid)
    assert record is not None
    view = (await provenance.replayer.replay(record, ANONYMOUS, "1.1.0")).view()
    assert view["same"] is False
    assert view["replay"]["version"] == "1.1.0"
    assert [d["path"] for d in view["diff"]] == ["[0].label", "[0].score"]
    assert view["diff"][0] == {
        "path": "[0].label",
        "original": "long",
        "replay": "short",
        "distance": 1.0,
    }


@pytest.mark.asyncio
async def test_a_window_reports_agreement_latency_and_the_worst_examples(
    services: Services,
) -> None:
    provenance = _provenance(services)
    assert provenance.recorder is not None
    for text in ("a", "abcd", "flip", "xyz"):
        await _record(services, text)
    await _record(services, "hashed", model="scorer-hash")
    await provenance.recorder.flush()
    window = Window(model="scorer", against="1.1.0", since=0, tolerance=1e-3)
    report = await provenance.replayer.window(ANONYMOUS, window)
    assert report["replayed"] == 4
    assert report["answered"] == 4
    assert report["failed"] == 0
    assert report["agreement"] == 0.75  # "flip" changed its label; the noise is tolerated
    assert report["exact"] == 0.0
    assert report["original_versions"] == {"1.0.0": 4}
    assert report["not_replayable"] == 0
    latency = report["latency_ms"]
    assert latency["original_p50"] > 0
    assert latency["replay_p50"] > 0
    worst = report["most_different"][0]
    assert worst["request_id"] == "req-scorer-flip"
    assert worst["distance"] == 1.0
    assert worst["inputs"] == [{"text": "flip"}]
    strict = await provenance.replayer.window(ANONYMOUS, Window("scorer", "1.1.0", since=0))
    assert strict["agreement"] == 0.75  # default tolerance 1e-4: the 1e-5 noise still agrees
    hashed = await provenance.replayer.window(ANONYMOUS, Window("scorer-hash", "1.0.0", 0))
    assert (hashed["replayed"], hashed["not_replayable"], hashed["agreement"]) == (0, 1, None)


@pytest.mark.asyncio
async def test_what_cannot_be_replayed_says_why(services: Services) -> None:
    provenance = _provenance(services)
    assert provenance.recorder is not None
    hashed = await _record(services, "secret", model="scorer-hash")
    live = await _record(services, "ok")
    await provenance.recorder.flush()
    record = provenance.store.get(hashed)
    assert record is not None
    with pytest.raises(Conflict, match=r"hashes only \(provenance.capture: hash\)"):
        await provenance.replayer.replay(record, ANONYMOUS)
    target = provenance.store.get(live)
    assert target is not None
    with pytest.raises(VersionNotFound):
        await provenance.replayer.replay(target, ANONYMOUS, "9.9.9")
    reader = Principal(tenant="default", subject="r", scopes=frozenset({"provenance"}))
    with pytest.raises(Forbidden, match="predict"):
        await provenance.replayer.replay(target, reader)
    with pytest.raises(Forbidden, match="predict"):
        await provenance.replayer.window(reader, Window("scorer", "1.1.0", since=0))
