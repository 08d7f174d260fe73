"""``DataPlane.infer_many``: several requests, each checked on its own, merged into one
runtime call per model version and parameters (the job worker's batches)."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from modelhost.app import Services, build_services, close_services
from modelhost.config import Settings
from modelhost.errors import InvalidInput, ModelNotFound
from modelhost.inference import (
    InferenceEvent,
    InferenceObserver,
    InferenceRequest,
    InferenceResponse,
)
from modelhost.registry import Stage

COUNTING = textwrap.dedent(
    """
    from pathlib import Path


    class Counting:
        '''Echoes its inputs and appends one line per runtime call to calls.log.'''

        def __init__(self, path):
            self.log = Path(path).parent.parent / "calls.log"

        def predict(self, inputs, parameters):
            with self.log.open("a") as handle:
                handle.write(f"{len(inputs)}\\n")
            return [{"echo": item, "tag": parameters.get("tag")} for item in inputs]
    """
)


def _model(root: Path) -> Path:
    directory = root / "counting"
    directory.mkdir(parents=True)
    (directory / "counting_model.py").write_text(COUNTING)
    manifest = {
        "name": "counting",
        "version": "1.0.0",
        "runtime": "python",
        "entrypoint": "counting_model:Counting",
        "input_schema": {
            "type": "object",
            "properties": {"text": {"type": "string", "maxLength": 10}},
            "required": ["text"],
        },
        "parameters_schema": {"type": "object", "properties": {"tag": {"type": "string"}}},
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return directory


@pytest_asyncio.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    settings = Settings(home=tmp_path / "home")
    built = build_services(settings)
    built.registry.push(_model(tmp_path), actor="test", stage=Stage.PRODUCTION)
    await built.manager.refresh(load=True)
    await built.manager.wait_loaded()
    yield built
    await close_services(built)


def _calls(services: Services) -> list[int]:
    """Sizes of the runtime calls made so far (the model logs them next to its files)."""
    logs = list(services.settings.home.rglob("calls.log"))
    if not logs:
        return []
    return [int(line) for line in logs[0].read_text().split()]


def _request(text: str, **parameters: str) -> InferenceRequest:
    return InferenceRequest(
        model="counting", inputs=[{"text": text}], parameters=parameters, protocol="jobs"
    )


@pytest.mark.asyncio
async def test_requests_share_one_runtime_call_and_get_their_own_results(
    services: Services,
) -> None:
    outcomes = await services.plane.infer_many([_request(f"t{n}") for n in range(3)])
    assert _calls(services) == [3]
    for n, outcome in enumerate(outcomes):
        assert isinstance(outcome, InferenceResponse)
        assert outcome.results == [{"echo": {"text": f"t{n}"}, "tag": None}]
        assert outcome.version == "1.0.0"


@pytest.mark.asyncio
async def test_a_bad_request_fails_alone(services: Services) -> None:
    outcomes = await services.plane.infer_many(
        [_request("ok"), _request("far too long for it"), _request("also ok")]
    )
    assert isinstance(outcomes[1], InvalidInput)
    assert outcomes[1].param == "inputs[0].text"
    assert [o.results for o in outcomes if isinstance(o, InferenceResponse)] == [
        [{"echo": {"text": "ok"}, "tag": None}],
        [{"echo": {"text": "also ok"}, "tag": None}],
    ]
    assert _calls(services) == [2]


@pytest.mark.asyncio
async def test_different_parameters_and_models_run_apart(services: Services) -> None:
    unknown = InferenceRequest(model="nothing", inputs=[{"text": "x"}])
    outcomes = await services.plane.infer_many(
        [_request("a", tag="x"), _request("b", tag="y"), _request("c", tag="x"), unknown]
    )
    assert isinstance(outcomes[3], ModelNotFound)
    tags = [o.results[0]["tag"] for o in outcomes[:3] if isinstance(o, InferenceResponse)]
    assert tags == ["x", "y", "x"]
    assert sorted(_calls(services)) == [1, 2]


class Recorder(InferenceObserver):
    """Keeps every event."""

    def __init__(self) -> None:
        self.events: list[InferenceEvent] = []

    def observe(self, event: InferenceEvent) -> None:
        self.events.append(event)


class Exploding(InferenceObserver):
    def observe(self, event: InferenceEvent) -> None:
        raise RuntimeError("observer bug")


@pytest.mark.asyncio
async def test_observers_see_every_ended_inference_and_cannot_break_one(
    services: Services,
) -> None:
    recorder = Recorder()
    services.plane.observers[:] = [Exploding(), recorder]
    answered = await services.plane.infer(_request("one", tag="t"))
    with pytest.raises(InvalidInput):
        await services.plane.infer(_request("far too long for it"))
    await services.plane.infer_many([_request("a"), InferenceRequest(model="nothing")])
    ok, bad, *many = recorder.events
    many_ok = next(event for event in many if event.error is None)
    many_bad = next(event for event in many if event.error is not None)
    assert ok.error is None
    assert ok.results == answered.results
    assert ok.info is not None
    assert ok.info.ref == "counting@1.0.0"
    assert ok.request.parameters == {"tag": "t"}
    assert 0 < ok.duration_s < 5
    assert abs(ok.started_at - answered.created) < 5
    assert isinstance(bad.error, InvalidInput)
    assert bad.results is None
    assert many_ok.results == [{"echo": {"text": "a"}, "tag": None}]
    assert isinstance(many_bad.error, ModelNotFound)
    assert many_bad.info is None
