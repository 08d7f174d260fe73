"""Feedback over real HTTP against a real server with a real iris model: labels and scores
joined to the version that answered through provenance, tenants kept apart, 404 for unknown
requests, 400 for bad bodies, 409 when the record kept only hashes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from modelhost.accounting.feedback import FeedbackStore
from modelhost.registry import make_engine
from tests.conftest import Server, create_key, run_cli, start_server, stop_server
from tests.serving.iris_variants import iris_rows, write_iris_variant

ROWS, LABELS = iris_rows()
#: Rows 0 (setosa), 60 (versicolor), 120 (virginica): the model gets all three right.
SETOSA, VERSICOLOR, VIRGINICA = ROWS[0], ROWS[60], ROWS[120]


@dataclass
class Setup:
    server: Server
    keys: dict[str, str]
    """API keys by name: alice and app (acme: predict), bob (globex: predict), auditor
    (acme: provenance only)."""
    store: FeedbackStore
    """The server's feedback table, read directly."""

    def client(self, who: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[who]}"}
        return httpx.Client(base_url=self.server.url, timeout=60, headers=headers)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("feedback-home")
    models = tmp_path_factory.mktemp("feedback-models")
    pushes = [
        (write_iris_variant(models, "iris", "1.0.0"), "production"),
        (write_iris_variant(models, "iris", "1.1.0"), "staging"),
        (
            write_iris_variant(models, "iris-hashed", "1.0.0", provenance={"capture": "hash"}),
            "production",
        ),
    ]
    for directory, stage in pushes:
        result = run_cli(home, "models", "push", str(directory), "--stage", stage)
        assert result.returncode == 0, result.stderr
    keys = {
        "alice": create_key(home, "predict", tenant="acme", principal="alice"),
        "app": create_key(home, "predict", tenant="acme", principal="app"),
        "bob": create_key(home, "predict", tenant="globex", principal="bob"),
        "auditor": create_key(home, "provenance", tenant="acme", principal="auditor"),
    }
    server = start_server(home, home / "server.log", env={"MODELHOST_DEMO__ENABLED": "false"})
    engine = make_engine(f"sqlite:///{home / 'modelhost.db'}")
    yield Setup(server, keys, FeedbackStore(engine))
    stop_server(server)
    engine.dispose()


@pytest.fixture
def alice(setup: Setup) -> Iterator[httpx.Client]:
    with setup.client("alice") as client:
        yield client


def predict(
    client: httpx.Client, rows: list[list[float]], model: str = "iris", version: str = ""
) -> str:
    """Run a prediction under a fresh request id; returns the id."""
    rid = f"fb-{uuid.uuid4().hex[:12]}"
    headers = {"X-Request-ID": rid, **({"X-Model-Version": version} if version else {})}
    response = client.post(f"/v1/models/{model}/predict", json={"inputs": rows}, headers=headers)
    assert response.status_code == 200, response.text
    return rid


def feedback(client: httpx.Client, rid: str, body: Any) -> httpx.Response:
    return client.post(f"/v1/predictions/{rid}/feedback", json=body)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_a_label_is_judged_against_the_answer_of_the_version_that_gave_it(
    setup: Setup, alice: httpx.Client
) -> None:
    rid = predict(alice, [SETOSA])  # feedback at once: the server flushes the record first

    right = feedback(alice, rid, {"label": "setosa", "comment": "checked by hand"})

    assert right.status_code == 200, right.text
    body = right.json()
    assert body["object"] == "feedback"
    assert (body["request_id"], body["model"], body["version"]) == (rid, "iris", "1.0.0")
    assert (body["correct"], body["label"], body["score"]) == (1.0, "setosa", None)
    assert (body["tenant"], body["principal"]) == ("acme", "acme/alice")
    assert body["comment"] == "checked by hand"

    wrong = feedback(alice, rid, {"label": "virginica"})  # a correction replaces it
    assert wrong.json()["correct"] == 0.0
    stored = setup.store.get(rid, "acme")
    assert stored is not None
    assert (stored.correct, stored.label, stored.comment) == (0.0, "virginica", None)


def test_labels_judge_every_item_and_null_skips_one(alice: httpx.Client) -> None:
    rid = predict(alice, [SETOSA, VERSICOLOR, VIRGINICA])

    answer = feedback(alice, rid, {"labels": ["setosa", None, "versicolor"]})

    assert answer.status_code == 200, answer.text
    assert answer.json()["correct"] == 0.5
    assert answer.json()["label"] == ["setosa", None, "versicolor"]


def test_a_score_is_taken_as_the_correctness(alice: httpx.Client) -> None:
    rid = predict(alice, [SETOSA, VIRGINICA])
    answer = feedback(alice, rid, {"score": 0.25})
    assert (answer.json()["correct"], answer.json()["score"]) == (0.25, 0.25)


def test_feedback_counts_for_the_pinned_version_and_in_online_accuracy(
    setup: Setup, alice: httpx.Client
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    with setup.client("app") as app:
        rids = [predict(app, [row], version="1.1.0") for row in (SETOSA, VERSICOLOR)]
        answers = [
            feedback(app, rids[0], {"label": "setosa"}),
            feedback(app, rids[1], {"label": "virginica"}),
        ]
    assert [a.json()["version"] for a in answers] == ["1.1.0", "1.1.0"]
    assert setup.store.accuracy("iris", "1.1.0", since) == (2, 0.5)


def test_another_tenants_request_is_not_found(setup: Setup, alice: httpx.Client) -> None:
    rid = predict(alice, [SETOSA])
    assert feedback(alice, rid, {"label": "setosa"}).status_code == 200

    with setup.client("bob") as bob:
        error = error_of(feedback(bob, rid, {"label": "virginica"}), 404)

    assert rid in error["message"]
    assert error["param"] == "request_id"
    stored = setup.store.get(rid, "acme")
    assert stored is not None
    assert stored.correct == 1.0
    assert setup.store.get(rid, "globex") is None


def test_an_unknown_request_is_404_naming_it(alice: httpx.Client) -> None:
    error = error_of(feedback(alice, "never-sent", {"label": "setosa"}), 404)
    assert "'never-sent'" in error["message"]


def test_feedback_needs_the_predict_scope(setup: Setup, alice: httpx.Client) -> None:
    rid = predict(alice, [SETOSA])
    with setup.client("auditor") as auditor:
        error_of(feedback(auditor, rid, {"label": "setosa"}), 403)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (["setosa"], "body", "must be a JSON object"),
        ({}, "body", "exactly one of"),
        ({"label": "setosa", "score": 1}, "body", "exactly one of"),
        ({"label": None}, "label", "must not be null"),
        ({"score": 1.5}, "score", "from 0 to 1"),
        ({"score": True}, "score", "from 0 to 1"),
        ({"labels": "setosa"}, "labels", "one true label per item"),
        ({"labels": [None]}, "labels", "at least one"),
        ({"labels": ["setosa", "setosa"]}, "labels", "had 1 item(s)"),
        ({"label": "setosa", "why": "x"}, "why", "unknown field"),
        ({"label": "setosa", "comment": "x" * 2001}, "comment", "at most 2000"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    alice: httpx.Client, body: Any, param: str, words: str
) -> None:
    rid = predict(alice, [SETOSA])
    error = error_of(feedback(alice, rid, body), 400)
    assert error["param"] == param
    assert words in error["message"]


def test_malformed_json_is_400(alice: httpx.Client) -> None:
    rid = predict(alice, [SETOSA])
    response = alice.post(
        f"/v1/predictions/{rid}/feedback",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert error_of(response, 400)["param"] == "body"


def test_a_label_for_several_items_must_come_as_labels(alice: httpx.Client) -> None:
    rid = predict(alice, [SETOSA, VIRGINICA])
    error = error_of(feedback(alice, rid, {"label": "setosa"}), 400)
    assert "had 2 item(s); send 'labels'" in error["message"]


def test_a_record_of_hashes_only_takes_a_score_not_a_label(alice: httpx.Client) -> None:
    rid = predict(alice, [SETOSA], model="iris-hashed")

    error = error_of(feedback(alice, rid, {"label": "setosa"}), 409)

    assert "keeps only hashes" in error["message"]
    assert '{"score": 0..1}' in error["message"]
    scored = feedback(alice, rid, {"score": 1})
    assert scored.status_code == 200, scored.text
    assert (scored.json()["model"], scored.json()["correct"]) == ("iris-hashed", 1.0)
