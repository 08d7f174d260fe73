"""``modelhost features …``: the real command, in process against a registry and over HTTP
against a real server, with a python model that answers like an LLM (``desk``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelhost.features.spec import parse_spec
from modelhost.registry import ArtifactStore, Registry, Stage, make_engine
from tests.conftest import Server, create_key, run_cli, start_server, stop_server
from tests.features.test_runner import DESK_MODULE, SPEC

#: What version 2.0.0 changes: a new template and an optional output field (compatible).
V2_OUTPUT = {
    **SPEC["output_schema"],
    "properties": {**SPEC["output_schema"]["properties"], "note": {"type": "string"}},
}
V2 = {**SPEC, "version": "2.0.0", "template": "Subject: {{ input.subject }}\n{{ input.body }}"}
#: A version whose golden set it cannot pass (everything is not billing).
STRICT = {
    **SPEC,
    "version": "1.1.0",
    "golden": {
        "threshold": 1.0,
        "cases": [
            {"input": {"subject": "x", "body": "refund"}, "expected": {"category": "billing"}},
            {"input": {"subject": "x", "body": "hello"}, "expected": {"category": "billing"}},
        ],
    },
}


@dataclass
class Setup:
    """The registry home, its spec files, a running server and two tenants' keys."""

    home: Path
    specs: dict[str, Path]
    server: Server
    acme: str
    globex: str

    def remote(self, key: str | None = None) -> tuple[str, ...]:
        return ("--url", self.server.url, "--api-key", key or self.server.api_key)


def write_desk(root: Path) -> Path:
    directory = root / "desk-1.0.0"
    directory.mkdir(parents=True)
    (directory / "desk_model.py").write_text(DESK_MODULE)
    manifest = {
        "name": "desk",
        "version": "1.0.0",
        "runtime": "python",
        "task": "generation",
        "entrypoint": "desk_model:Desk",
    }
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return directory


def write_spec(root: Path, data: dict[str, Any], name: str | None = None) -> Path:
    path = root / (name or f"{data['name']}-{data['version']}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextmanager
def registry_of(home: Path) -> Iterator[Registry]:
    """The registry under ``home``, in this process."""
    home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{home / 'modelhost.db'}")
    try:
        yield Registry(engine, ArtifactStore(home / "artifacts"))
    finally:
        engine.dispose()


def cli_ok(home: Path, *args: str) -> str:
    result = run_cli(home, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """triage 1.0.0 then 2.0.0 pushed to production through the gates by the CLI (1.0.0
    archived), 1.1.0 in staging; a server started on that registry."""
    home = tmp_path_factory.mktemp("home")
    files = tmp_path_factory.mktemp("specs")
    specs = {
        "1.0.0": write_spec(files, SPEC),
        "2.0.0": write_spec(files, {**V2, "output_schema": V2_OUTPUT}),
        "1.1.0": write_spec(files, STRICT),
    }
    with registry_of(home) as registry:  # the answering model is not under test here
        desk = registry.push(write_desk(files), actor="tests")
        registry.set_stage("desk", desk.version, Stage.PRODUCTION, actor="tests")
    pushed = cli_ok(home, "features", "push", str(specs["1.0.0"]), "--stage", "production")
    assert "registered triage@1.0.0 (feature, staging" in pushed
    assert "triage@1.0.0 is now production (was none); gates passed" in pushed
    cli_ok(home, "features", "push", str(specs["2.0.0"]), "--stage", "production")
    with registry_of(home) as registry:
        registry.push(parse_spec(STRICT).write_version(files / "triage-1.1.0"), actor="tests")
    acme = create_key(home, "predict", "features", tenant="acme", principal="ann")
    globex = create_key(home, "predict", "features", tenant="globex", principal="bob")
    server = start_server(home, home / "server.log", env={"MODELHOST_DEMO__ENABLED": "false"})
    yield Setup(home, specs, server, acme, globex)
    stop_server(server)


def test_push_of_an_invalid_spec_names_the_field_and_exits_1(tmp_path: Path) -> None:
    bad = write_spec(tmp_path, {**SPEC, "output_schema": {"type": "array"}}, "bad.yaml")
    result = run_cli(tmp_path / "home", "features", "push", str(bad))
    assert result.returncode == 1
    assert " ".join(result.stderr.split()) == (
        f"error: {bad}: output_schema: must be a JSON Schema of type 'object'"
    )


def test_list_and_show_read_the_registry(setup: Setup) -> None:
    listed = cli_ok(setup.home, "features", "list")
    rows = {line.split("│")[2].strip(): line for line in listed.splitlines() if "triage" in line}
    assert set(rows) == {"1.0.0", "1.1.0", "2.0.0"}  # and no row of the model desk
    assert "production" in rows["2.0.0"]
    assert "archived" in rows["1.0.0"]
    assert "staging" in rows["1.1.0"]
    assert "│ desk " in rows["2.0.0"]
    assert "Category and urgency of a support ticket." in rows["2.0.0"]

    shown = cli_ok(setup.home, "features", "show", "triage@1.0.0")
    header, _, rest = shown.partition("\n")
    assert header == "# triage@1.0.0 (archived)"
    text, _, history = rest.partition("┏")
    view = yaml.safe_load(text)
    assert {k: view[k] for k in ("name", "version", "model", "template")} == {
        "name": "triage",
        "version": "1.0.0",
        "model": "desk",
        "template": SPEC["template"],
    }
    assert (view["input_schema"], view["output_schema"]) == (
        SPEC["input_schema"],
        SPEC["output_schema"],
    )
    assert view["examples"] == SPEC["examples"]
    assert view["golden"] == {"threshold": 0.75, "cases": 4, "source": "artifact:golden.jsonl"}
    assert view["template_digest"][:12] in rows["1.0.0"]
    assert "│ 1.0.0   │ stage    │ production │ archived" in history
    assert "│ 1.1.0   │ register │" in history


def test_diff_shows_the_yaml_change_and_whether_the_output_schema_stays_compatible(
    setup: Setup, tmp_path: Path
) -> None:
    registered = cli_ok(setup.home, "features", "diff", "triage", "1.0.0", "2.0.0")
    assert "--- triage@1.0.0\n+++ triage@2.0.0\n" in registered
    assert "-version: 1.0.0\n+version: 2.0.0\n" in registered
    assert "-  Ticket subject: {{ input.subject }}\n" in registered
    assert "+    note:\n+      type: string\n" in registered
    assert registered.endswith("output schema: changed compatibly (1 change(s), none breaking)\n")

    widened = {**SPEC["output_schema"]["properties"], "urgency": {"enum": ["low", "high", "mid"]}}
    loose = write_spec(
        tmp_path, {**SPEC, "output_schema": {"type": "object", "properties": widened}}
    )
    files = cli_ok(setup.home, "features", "diff", str(setup.specs["1.0.0"]), str(loose))
    assert f"--- {setup.specs['1.0.0']}\n+++ {loose}\n" in files
    last = files.splitlines()[-1]
    assert last.startswith("output schema: changed INCOMPATIBLY (needs a MAJOR version): ")
    assert "results[].urgency" in last


def test_promote_runs_the_golden_gate_in_process(setup: Setup) -> None:
    refused = run_cli(setup.home, "features", "promote", "triage", "1.1.0")
    assert refused.returncode == 1
    assert "[FAIL] golden" in refused.stderr, refused.stderr
    assert "[PASS] warmup" in refused.stderr  # the answering model was loaded for the gates


def call(setup: Setup, key: str, body: str) -> dict[str, Any]:
    """One invoke over HTTP (the CLI's own invoke is tested on the main cases)."""
    response = httpx.post(
        f"{setup.server.url}/v1/features/triage/invoke",
        json={"input": {"subject": "x", "body": body}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def invoke(setup: Setup, key: str, body: str) -> dict[str, Any]:
    text = cli_ok(
        setup.home,
        "features",
        "invoke",
        "triage",
        "--input",
        json.dumps({"subject": "x", "body": body}),
        *setup.remote(key),
    )
    answer: dict[str, Any] = json.loads(text)
    return answer


def test_a_tenant_pin_moves_only_that_tenant(setup: Setup) -> None:
    pinned = cli_ok(setup.home, "features", "pin", "triage", "1.0.0", *setup.remote(setup.acme))
    assert "acme: triage pinned to 1.0.0, no override" in pinned
    acme = invoke(setup, setup.acme, "refund please")
    globex = invoke(setup, setup.globex, "refund please")
    assert (acme["version"], acme["output"]["category"], acme["model"]) == (
        "1.0.0",
        "billing",
        "desk",
    )
    assert (globex["version"], globex["output"]["category"]) == ("2.0.0", "billing")

    state = cli_ok(setup.home, "features", "tenant", "triage", *setup.remote(setup.acme))
    assert "acme: triage pinned to 1.0.0, no override" in state
    assert "│ acme/ann │ pin    │ -      │ pin 1.0.0 │" in state  # the history

    unpinned = cli_ok(setup.home, "features", "unpin", "triage", *setup.remote(setup.acme))
    assert "acme: triage follows its deployment, with no override" in unpinned
    assert call(setup, setup.acme, "hello")["version"] == "2.0.0"


def test_a_tenant_override_changes_only_that_tenant_until_cleared(
    setup: Setup, tmp_path: Path
) -> None:
    template = tmp_path / "template.txt"
    template.write_text("Ticket subject: {{ input.subject }}")  # the body is left out
    changed = cli_ok(
        setup.home,
        "features",
        "override",
        "triage",
        "--template-file",
        str(template),
        "--parameters",
        '{"temperature": 0.1}',
        *setup.remote(setup.acme),
    )
    assert "acme: triage follows its deployment, override of parameters, template" in changed
    acme = call(setup, setup.acme, "refund please")
    assert (acme["output"]["category"], acme.get("override")) == ("other", True)
    assert call(setup, setup.globex, "refund please")["output"]["category"] == "billing"

    cleared = cli_ok(setup.home, "features", "clear", "triage", *setup.remote(setup.acme))
    assert "acme: triage follows its deployment, with no override" in cleared
    assert call(setup, setup.acme, "refund please")["output"]["category"] == "billing"


def test_golden_test_exits_by_the_threshold(setup: Setup, tmp_path: Path) -> None:
    passing = cli_ok(setup.home, "features", "test", str(setup.specs["2.0.0"]), *setup.remote())
    assert "PASS: 4/4 passed (100%), threshold 75%; p50 latency" in passing
    assert "(triage@2.0.0 at http://127.0.0.1:" in passing

    failing = run_cli(setup.home, "features", "test", "triage@1.1.0", *setup.remote())
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "FAIL: 1/2 passed (50%), threshold 100%" in failing.stdout
    rows = [line for line in failing.stdout.splitlines() if line.startswith("│")]
    assert [row.split("│")[2].strip() for row in rows] == ["pass", "FAIL"]

    unpushed = write_spec(tmp_path, {**SPEC, "version": "9.0.0"})
    refused = run_cli(setup.home, "features", "test", str(unpushed), *setup.remote())
    assert refused.returncode == 1
    assert "has no triage@9.0.0: push it first" in refused.stderr
