"""Cascades and fallbacks over HTTP: a route is served under a model name, so REST v1, OIP v2
(tritonclient) and the OpenAI SDK all call it; the answer says which stage answered, and the
cost it saved shows in ``GET /v1/usage``."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
import yaml
from openai import OpenAI

from modelhost.demo import gemma_input_schema
from tests.conftest import Server, run_cli, start_server, stop_server
from tests.serving.iris_variants import INPUT_SCHEMA, iris_rows, write_iris_variant

THRESHOLD = 0.9
BIG_PRICE = 0.01
WRITER_PRICE = 0.5

FAQ_MODULE = textwrap.dedent(
    '''
    ANSWERS = {"opening hours": "We are open 9 to 5, Monday to Friday."}


    def _question(item):
        if isinstance(item, str):
            return item
        if "prompt" in item:
            return item["prompt"]
        return item["messages"][-1]["content"]


    class Faq:
        """Answers the questions it knows for sure (score 1), others with score 0."""

        def __init__(self, path):
            pass

        def predict(self, inputs, parameters):
            out = []
            for item in inputs:
                text = _question(item).lower()
                known = next((a for q, a in ANSWERS.items() if q in text), None)
                out.append({"text": known or "", "finish_reason": "stop",
                            "score": 1.0 if known else 0.0})
            return out


    class Writer:
        """The expensive stage: writes an answer to anything."""

        def __init__(self, path):
            pass

        def predict(self, inputs, parameters):
            return [{"text": "A considered answer to: " + _question(item),
                     "finish_reason": "stop"} for item in inputs]
    '''
)


def _write(directory: Path, manifest: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return directory


def _text_model(root: Path, name: str, cls: str, **extra: Any) -> Path:
    directory = root / f"{name}-1.0.0"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "faq_model.py").write_text(FAQ_MODULE)
    return _write(
        directory,
        {
            "name": name,
            "version": "1.0.0",
            "runtime": "python",
            "task": "generation",
            "entrypoint": f"faq_model:{cls}",
            "input_schema": gemma_input_schema(),
            **extra,
        },
    )


def _cascade(root: Path, name: str, task: str, schema: dict[str, Any], stages: Any) -> Path:
    manifest = {
        "name": name,
        "version": "1.0.0",
        "runtime": "cascade",
        "task": task,
        "input_schema": schema,
        "cascade": {"stages": stages},
    }
    return _write(root / f"{name}-1.0.0", manifest)


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server without the demo models, serving an iris route and a FAQ → writer route."""
    home = tmp_path_factory.mktemp("cascade-home")
    root = tmp_path_factory.mktemp("cascade-models")
    versions = [
        write_iris_variant(root, "iris-small", "1.0.0"),
        write_iris_variant(
            root, "iris-big", "1.0.0", wrong=True, pricing={"unit": "item", "input": BIG_PRICE}
        ),
        _cascade(
            root,
            "iris-route",
            "classification",
            INPUT_SCHEMA,
            [{"model": "iris-small", "min_score": THRESHOLD}, {"model": "iris-big"}],
        ),
        _text_model(root, "faq", "Faq"),
        _text_model(
            root, "writer", "Writer", pricing={"unit": "request", "per_request": WRITER_PRICE}
        ),
        _cascade(
            root,
            "support",
            "generation",
            gemma_input_schema(),
            [{"model": "faq", "min_score": 0.5}, {"model": "writer"}],
        ),
    ]
    for directory in versions:
        pushed = run_cli(home, "models", "push", str(directory), "--stage", "production")
        assert pushed.returncode == 0, pushed.stderr
    server = start_server(
        home, home / "server.log", env={"MODELHOST_DEMO__ENABLED": "false"}, ready_timeout=120
    )
    yield server
    stop_server(server)


def test_v1_says_which_stage_answered_and_usage_shows_the_saving(routes: Server) -> None:
    rows = iris_rows()[0][::5]  # 30 rows across the three classes
    with routes.client() as client:
        small = client.post("/v1/models/iris-small/predict", json={"inputs": rows}).json()
        unsure = [i for i, r in enumerate(small["results"]) if r["score"] < THRESHOLD]
        assert 0 < len(unsure) < len(rows)

        answer = client.post("/v1/models/iris-route/predict", json={"inputs": rows})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == "iris-route"
        cascade = body["cascade"]
        assert cascade["answered_by"] == [1 if i in unsure else 0 for i in range(len(rows))]
        early = len(rows) - len(unsure)
        assert body["usage"]["cost_saved"] == pytest.approx(BIG_PRICE * early)
        assert body["usage"]["cost"] == pytest.approx(BIG_PRICE * len(unsure))

        usage = client.get("/v1/usage", params={"group_by": "model", "model": "iris-route"})
        assert usage.status_code == 200, usage.text
        (line,) = usage.json()["data"]
        assert line["cost_saved"] == pytest.approx(BIG_PRICE * early)
        assert line["requests"] == 1


def test_oip_v2_calls_the_route_like_any_classifier(routes: Server) -> None:
    rows = iris_rows()[0][:3] + iris_rows()[0][-3:]
    client = triton_http.InferenceServerClient(f"127.0.0.1:{routes.port}")
    client.register_plugin(routes.triton_auth())
    tensor = triton_http.InferInput("input", [len(rows), 4], "FP32")
    tensor.set_data_from_numpy(np.asarray(rows, dtype=np.float32))
    result = client.infer("iris-route", [tensor])
    labels = [label.decode() for label in result.as_numpy("label")]
    direct = httpx.post(
        f"{routes.url}/v1/models/iris-route/predict",
        json={"inputs": rows},
        headers=routes.headers,
    ).json()
    assert labels == [r["label"] for r in direct["results"]]
    assert labels[0] == "setosa"


def test_the_openai_sdk_gets_the_cheap_answer_or_the_escalated_one(routes: Server) -> None:
    sdk = OpenAI(base_url=f"{routes.url}/v1", api_key=routes.api_key)
    known = sdk.chat.completions.create(
        model="support", messages=[{"role": "user", "content": "What are your opening hours?"}]
    )
    assert known.choices[0].message.content == "We are open 9 to 5, Monday to Friday."
    assert (known.model_extra or {})["cascade"]["answered_by"] == [0]
    assert (known.model_extra or {})["cascade"]["cost_saved"] == pytest.approx(WRITER_PRICE)

    unknown = sdk.chat.completions.create(
        model="support", messages=[{"role": "user", "content": "Can I return a blue lamp?"}]
    )
    assert unknown.choices[0].message.content == "A considered answer to: Can I return a blue lamp?"
    assert (unknown.model_extra or {})["cascade"]["answered_by"] == [1]


def test_a_cascade_does_not_stream(routes: Server) -> None:
    with routes.client() as client:
        answer = client.post(
            "/v1/chat/completions",
            json={
                "model": "support",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        )
    assert answer.status_code == 400
    assert "stream" in answer.json()["error"]["message"]
