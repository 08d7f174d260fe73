"""The OpenAPI document is complete and true: it validates, and schemathesis, generating
requests for every operation from it against the in-process app (ASGI, lifespan running,
the iris demo model loaded, an admin key), finds no 5xx, no undocumented status code, content
type or header, no response off its schema, and a complete ``Allow`` on every 405.

``MODELHOST_SCHEMATHESIS_EXAMPLES`` sets the examples per operation (default 25: about two
minutes on two cores); ``benchmarks/schemathesis_run.py`` runs a bigger pass against a
server and prints its figures.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from openapi_spec_validator import validate
from schemathesis.engine import events, from_schema
from starlette.testclient import TestClient

from modelhost.app import create_app
from modelhost.config import Settings
from tests.conftest import create_key

EXAMPLES = int(os.environ.get("MODELHOST_SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "unsupported_method",
    "allow_header_conformance",
)
#: Routes that take no body although their method usually has one.
BODYLESS = frozenset(
    {
        "POST /v1/models/{model}/versions/{version}/load",
        "POST /v1/models/{model}/versions/{version}/unload",
        "POST /v1/models/{model}/feature-store/materialize",
        "POST /v1/models/{model}/feature-store/skew",
    }
)
#: Operations (every GET, and these) whose ``model`` and ``version`` may name the demo model,
#: so that generated requests reach the model's input checks, not only the 404 of an unknown
#: name; the ones left out change what the model serves (unload, promote, rollback, canary).
ON_IRIS = ("/predict", "/infer", "/golden", "/drift/reference")
IRIS = {"model": ["iris", "iris@1.0.0"], "version": ["1.0.0", "1.1.0"]}


#: The one 5xx an operation answers on purpose: "not ready" from the v2 readiness routes.
READY_503 = {
    "operations": [
        {
            "include-path-regex": "/ready$",
            "checks": {
                "not_a_server_error": {"expected-statuses": ["1XX", "2XX", "3XX", "4XX", "503"]}
            },
        }
    ]
}


def expected_5xx(label: str, status: int) -> bool:
    """Whether ``status`` is no server error: under 500, or a readiness route's 503."""
    return status < 500 or (status == 503 and label.endswith("/ready"))


@dataclass
class Figures:
    """What one schemathesis pass did and found."""

    operations: set[str] = field(default_factory=set)
    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, recorder: Any) -> None:
        """Count one scenario's requests and failed checks."""
        self.operations.add(recorder.label)
        for interaction in recorder.interactions.values():
            self.requests += 1
            response = interaction.response
            if response is not None and not expected_5xx(recorder.label, response.status_code):
                self.server_errors.append(f"{recorder.label}: {response.status_code}")
        for nodes in recorder.checks.values():
            for node in nodes:
                if node.failure_info is not None:
                    failure = node.failure_info.failure
                    key = (recorder.label, f"{node.name}: {failure.title}")
                    self.failures.setdefault(key, str(failure.message)[:500])


def settings_for(home: Path) -> Settings:
    """A server of the iris demo model only, no gRPC, no rate limit in the way, provenance
    written fast (feedback waits for a record up to the flush interval)."""
    return Settings.model_validate(
        {
            "home": str(home),
            "demo": {"models": ["iris"]},
            "server": {"grpc_port": 0},
            "limits": {"requests_per_minute": None},
            "provenance": {"flush_interval_s": 0.05},
        }
    )


@pytest.fixture
def app_and_key(tmp_path: Path) -> tuple[FastAPI, str]:
    """The app (its lifespan not started) and an admin key of tenant ``system``."""
    key = create_key(tmp_path, "admin")
    return create_app(settings_for(tmp_path)), key


def on_iris(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with ``model``/``version`` path parameters of the :data:`ON_IRIS`
    operations offering the demo model's names besides any string."""
    doc = copy.deepcopy(doc)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method != "get" and not path.endswith(ON_IRIS):
                continue
            for parameter in op.get("parameters", []):
                names = IRIS.get(parameter["name"])
                if parameter["in"] == "path" and names:
                    parameter["schema"] = {"anyOf": [{"enum": names}, parameter["schema"]]}
    return doc


def wait_ready(schema: Any, key: str, timeout: float = 120) -> None:
    """Start the lifespan (the first request does) and wait for ``/readyz``."""
    operation = schema["/readyz"]["GET"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = operation.Case().call(headers={"Authorization": f"Bearer {key}"})
        if response.status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError("the app did not get ready")


def test_document_validates_and_is_self_contained(app_and_key: tuple[FastAPI, str]) -> None:
    app, _ = app_and_key
    doc = app.openapi()
    validate(doc)  # every $ref resolves, every schema is OpenAPI 3.1
    text = json.dumps(doc)
    assert "#/$defs/" not in text
    assert "HTTPValidationError" not in text  # a validation failure is a 400 ErrorBody
    for path, item in doc["paths"].items():
        for method, op in item.items():
            label = f"{method.upper()} {path}"
            if method in ("post", "put", "patch") and label not in BODYLESS:
                assert "requestBody" in op, f"{label} documents no request body"
            if "{" in path:
                assert "404" in op["responses"], f"{label} documents no 404"
            for code in ("400", "413", "415") if "requestBody" in op else ():
                assert code in op["responses"], f"{label} documents no {code}"


def test_v2_infer_body_refers_to_components(app_and_key: tuple[FastAPI, str]) -> None:
    app, _ = app_and_key
    doc = app.openapi()
    op = doc["paths"]["/v2/models/{model}/infer"]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["inputs"]["items"] == {"$ref": "#/components/schemas/TensorBody"}
    assert "TensorBody" in doc["components"]["schemas"]
    error = op["responses"]["400"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/V2ErrorBody"}


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/keys", "GET, POST"),
        ("PUT", "/v1/jobs", "GET, POST"),
        ("OPTIONS", "/v1/batch/b1", "DELETE, GET"),
        ("GET", "/v1/batch/predict", None),  # a batch named "predict": served (404), not 405
        ("PUT", "/v1/batch/predict", "POST"),
        ("DELETE", "/v1/models/iris/deployment", "GET, PATCH"),
    ],
)
def test_405_allow_lists_every_method_of_the_path(
    app_and_key: tuple[FastAPI, str], method: str, path: str, allow: str | None
) -> None:
    app, key = app_and_key
    client = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    response = client.request(method, path)
    if allow is None:
        assert response.status_code != 405
        return
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    error = response.json()["error"]
    assert error["type"] == "method_not_allowed"
    assert allow in error["message"]


# schemathesis's own strategies draw from `random` (its coverage phase), which Hypothesis flags
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_schemathesis_finds_nothing(app_and_key: tuple[FastAPI, str]) -> None:
    app, key = app_and_key
    auth = {"Authorization": f"Bearer {key}"}
    config = schemathesis.Config.from_dict(
        {
            "headers": auth,
            "workers": 1,
            "seed": 16,
            "generation": {"max-examples": EXAMPLES, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            **READY_503,
        }
    )
    schema = schemathesis.openapi.from_dict(on_iris(app.openapi()), config=config)
    schema.app = app
    schema.location = "/openapi.json"
    wait_ready(schema, key)
    figures = Figures()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            figures.add(event.recorder)
        elif isinstance(event, events.NonFatalError | events.FatalError):
            raise AssertionError(f"schemathesis could not run: {event}")
    print(
        f"\nschemathesis: {len(figures.operations)} operations, {figures.requests} requests, "
        f"{len(figures.server_errors)} 5xx, {len(figures.failures)} failed checks"
    )
    documented = sum(
        1 for item in app.openapi()["paths"].values() for method in item if method != "parameters"
    )
    assert len(figures.operations) >= documented
    assert not figures.server_errors, figures.server_errors[:10]
    assert not figures.failures, "\n".join(
        f"{label} {check}: {message}" for (label, check), message in figures.failures.items()
    )
