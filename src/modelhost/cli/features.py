"""``modelhost features …``: LLM features (docs/features.md) from the command line.

Two kinds of commands:

* **registry** commands run in this process against the local registry, like ``modelhost
  models …``: ``push`` (a spec file becomes a model version with ``runtime: feature``;
  ``--stage production`` runs the promotion gates here, its golden set included), ``list``,
  ``show``, ``promote`` and ``diff``;
* **server** commands call a running server over HTTP (``--url`` / ``MODELHOST_URL``,
  ``--api-key`` / ``MODELHOST_API_KEY``): ``invoke``, ``test`` (a golden set against the
  server), and a tenant's self-service with its own key (scope ``features``): ``pin``,
  ``unpin``, ``override``, ``clear`` and ``tenant``.

The in-process helpers (the local registry, the push and the promotion through the gates) are
those of ``modelhost models``, from :mod:`modelhost.cli.common`.
"""

from __future__ import annotations

import difflib
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.table import Table

from modelhost.cli.common import (
    DEFAULT_URL,
    ApiKey,
    Force,
    Remote,
    Timeout,
    Url,
    error_message,
    fail,
    history_table,
    local_registry,
    print_json,
    print_table,
    promote_here,
    promoted,
    push_version,
    say,
)
from modelhost.manifest import ModelManifest, RuntimeKind
from modelhost.registry import Stage

if TYPE_CHECKING:
    from modelhost.features.spec import FeatureSpec
    from modelhost.registry import Registry, VersionInfo

features_app = typer.Typer(
    help="LLM features: push a spec, list, show, promote, diff, test its golden set, invoke; "
    "a tenant pins or overrides a feature with its own key.",
    no_args_is_help=True,
)

#: Characters of a template digest shown in tables.
_DIGEST_CHARS = 12


def register(app: typer.Typer) -> None:
    """Add ``modelhost features`` to the command line."""
    app.add_typer(features_app, name="features")


def _feature_version(registry: Registry, reference: str) -> VersionInfo:
    """``name`` (its production version) or ``name@version|alias`` of a feature."""
    name, _, selector = reference.partition("@")
    info = registry.resolve(name, selector or None)
    if info.runtime != RuntimeKind.FEATURE.value:
        raise fail(f"{info.ref} is a model ({info.runtime}), not a feature")
    return info


# -- specs as YAML -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Golden:
    """A golden set as the commands use it: its cases and the share that must pass."""

    cases: list[dict[str, Any]]
    """``[{"input": ..., "expected": ...}, ...]``."""
    threshold: float
    source: str


def _golden_of_spec(spec: FeatureSpec) -> Golden | None:
    if spec.golden is None:
        return None
    cases = [{"input": c.input, "expected": c.expected} for c in spec.golden.cases]
    return Golden(cases, spec.golden.threshold, "spec file")


def _golden_of_version(registry: Registry, info: VersionInfo) -> Golden | None:
    """The golden set that gates a registered version (a set registered over the API wins
    over the one its artifact ships), read from the local registry."""
    from modelhost.registry.golden import GoldenStore, golden_of

    found = golden_of(registry, GoldenStore(registry.engine), info)
    if found is None:
        return None
    cases = [{"input": i.input, "expected": i.expected} for i in found.items]
    threshold = found.gate.thresholds.accuracy
    return Golden(cases, 1.0 if threshold is None else threshold, found.source)


def spec_view(manifest: ModelManifest, golden: Golden | None) -> dict[str, Any]:
    """A spec-like dict of a feature version, in the order of a spec file: what ``show``
    prints and ``diff`` compares (the golden set as a summary, not its cases)."""
    feature = manifest.feature
    if feature is None:  # a feature version always has its section
        raise fail(f"{manifest.name}@{manifest.version} has no 'feature' section")
    view: dict[str, Any] = {
        "name": manifest.name,
        "version": manifest.version,
        "description": manifest.card.description,
        "model": feature.model,
        "parameters": feature.parameters,
        "instructions": feature.instructions,
        "template": feature.template,
        "input_schema": manifest.input_schema,
        "output_schema": manifest.output_schema,
        "examples": [e.model_dump(mode="json") for e in feature.examples],
        "repair_retries": feature.repair_retries,
        "constrained": feature.constrained,
        "conversation": feature.conversation.model_dump(mode="json"),
        "template_digest": feature.template_digest(),
    }
    if golden is not None:
        view["golden"] = {
            "threshold": golden.threshold,
            "cases": len(golden.cases),
            "source": golden.source,
        }
    return view


class _SpecDumper(yaml.SafeDumper):
    """YAML as an author writes a spec: multi-line text (a template) as a ``|`` block."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_SpecDumper.add_representer(str, _text)


def _yaml(data: dict[str, Any]) -> str:
    rendered: str = yaml.dump(
        data, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True, width=100
    )
    return rendered


def _side(registry: Registry | None, reference: str) -> tuple[dict[str, Any], str]:
    """A spec file's view (when ``reference`` is a file) or a registered version's, with the
    label a diff shows for it."""
    path = Path(reference)
    if path.is_file():
        from modelhost.features.spec import load_spec

        spec = load_spec(path)
        return spec_view(spec.manifest(), _golden_of_spec(spec)), str(path)
    registry = registry or local_registry()
    info = _feature_version(registry, reference)
    return spec_view(info.manifest, _golden_of_version(registry, info)), info.ref


# -- registry commands (in process) ------------------------------------------------------------


@features_app.command("push")
def push(
    spec_file: Annotated[Path, typer.Argument(help="The feature spec (YAML or JSON).")],
    stage: Annotated[Stage, typer.Option(help="Stage to register in.")] = Stage.STAGING,
    force: Force = False,
) -> None:
    """Validate a feature spec and register it as a model version with runtime ``feature``
    (``--stage production`` promotes it through the gates, its golden set included)."""
    from modelhost.features.spec import load_spec

    spec = load_spec(spec_file)
    with tempfile.TemporaryDirectory(prefix="modelhost-feature-") as scratch:
        directory = spec.write_version(Path(scratch) / f"{spec.name}-{spec.version}")
        push_version(directory, stage, force=force)


@features_app.command("list")
def list_features() -> None:
    """List every feature version: stage, the model that answers, its template digest."""
    table = Table("feature", "version", "stage", "model", "template", "description")
    for model in local_registry().list_models():
        for v in model.versions:
            feature = v.manifest.feature
            if v.runtime != RuntimeKind.FEATURE.value or feature is None:
                continue
            table.add_row(
                model.name,
                v.version,
                v.stage.value,
                feature.model,
                feature.template_digest()[:_DIGEST_CHARS],
                v.manifest.card.description,
            )
    print_table(table)


@features_app.command("show")
def show(
    feature: Annotated[str, typer.Argument(help="Feature name, or name@version.")],
    history: Annotated[bool, typer.Option(help="Also print the change history.")] = True,
) -> None:
    """Print a feature version (production unless named) as a spec in YAML, and the
    feature's history."""
    registry = local_registry()
    info = _feature_version(registry, feature)
    view = spec_view(info.manifest, _golden_of_version(registry, info))
    typer.echo(f"# {info.ref} ({info.stage.value})")
    typer.echo(_yaml(view), nl=False)
    if not history:
        return
    print_table(history_table(registry, info.model))


@features_app.command("promote")
def promote(
    feature: Annotated[str, typer.Argument(help="Feature name.")],
    version: Annotated[str, typer.Argument(help="Version to promote to production.")],
    force: Force = False,
) -> None:
    """Make a version production through the promotion gates, run here: it loads, passes its
    golden set and keeps its output schema compatible (docs/rollouts.md)."""
    import asyncio

    _feature_version(local_registry(), f"{feature}@{version}")
    promoted(asyncio.run(promote_here(feature, version, force=force)))


def _schema_line(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Whether the output schema changed, and compatibly (callers keep working: it only
    tightens or adds fields) or not (by :func:`modelhost.registry.compat.compare`)."""
    from modelhost.registry.compat import compare

    if old["output_schema"] == new["output_schema"]:
        return "output schema: unchanged"
    changes = compare({}, {}, old["output_schema"], new["output_schema"])
    breaking = [c for c in changes if c.breaking]
    if not breaking:
        return f"output schema: changed compatibly ({len(changes)} change(s), none breaking)"
    listed = "; ".join(f"{c.path}: {c.message}" for c in breaking)
    return f"output schema: changed INCOMPATIBLY (needs a MAJOR version): {listed}"


@features_app.command("diff")
def diff(
    first: Annotated[str, typer.Argument(help="A spec file, name@version, or the NAME.")],
    second: Annotated[str, typer.Argument(help="A spec file, name@version, or V1.")],
    third: Annotated[str | None, typer.Argument(help="V2 (with NAME V1 V2).")] = None,
) -> None:
    """Unified diff of two feature versions as spec YAML (``NAME V1 V2``, or two of spec
    files and ``name@version``), and whether the output schema changed compatibly."""
    left, right = (first, second) if third is None else (f"{first}@{second}", f"{first}@{third}")
    registry = None if Path(left).is_file() and Path(right).is_file() else local_registry()
    old, old_label = _side(registry, left)
    new, new_label = _side(registry, right)
    lines = difflib.unified_diff(
        _yaml(old).splitlines(keepends=True),
        _yaml(new).splitlines(keepends=True),
        fromfile=old_label,
        tofile=new_label,
    )
    typer.echo("".join(lines) or "no differences\n", nl=False)
    typer.echo(_schema_line(old, new))


# -- server commands (HTTP) --------------------------------------------------------------------


def _json_option(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"{what} is not valid JSON: {exc}") from None


@features_app.command("invoke")
def invoke(
    feature: Annotated[str, typer.Argument(help="Feature name.")],
    input_json: Annotated[
        str, typer.Option("--input", help="One input as JSON: '{\"subject\": ...}'.")
    ],
    session: Annotated[
        str | None, typer.Option(help="Conversation id (features with a conversation).")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Call this version.")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 120.0,
) -> None:
    """Invoke a feature on a running server and print its answer (output, version, model,
    usage) as JSON."""
    body: dict[str, Any] = {"input": _json_option(input_json, "--input")}
    if session:
        body["session"] = session
    if version:
        body["version"] = version
    with Remote(url, api_key, timeout) as remote:
        print_json(remote.json("POST", f"/v1/features/{feature}/invoke", json=body))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One golden case run on the server."""

    passed: bool
    seconds: float
    got: Any


def _run_case(remote: Remote, name: str, version: str | None, case: dict[str, Any]) -> Outcome:
    """Invoke one case; an error answer (say, output the schema refused) is a failed case."""
    import httpx

    from modelhost.registry.gates import matches

    body: dict[str, Any] = {"input": case["input"]}
    if version:
        body["version"] = version
    started = time.perf_counter()
    try:
        response = remote.http.post(f"/v1/features/{name}/invoke", json=body)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {remote.url}: {exc}") from None
    seconds = time.perf_counter() - started
    if response.status_code >= 400:
        return Outcome(False, seconds, error_message(response))
    got = response.json().get("output")
    return Outcome(matches(got, case["expected"], "subset"), seconds, got)


def _served_versions(remote: Remote, name: str) -> set[str]:
    """The versions of feature ``name`` the server knows (none when it has no such feature)."""
    response = remote.http.get(f"/v1/features/{name}")
    if response.status_code == 404:
        return set()
    if response.status_code >= 400:
        raise fail(error_message(response))
    return {v["version"] for v in response.json()["versions"]}


def _cases_to_test(remote: Remote, target: str) -> tuple[str, str | None, Golden]:
    """What ``test`` runs: the feature, the version to name in each call (None: whichever
    serves the caller) and the golden set. A spec file's cases run on its version, which the
    server must have; a registered version's golden set is read from the local registry."""
    path = Path(target)
    if path.is_file() or path.suffix in {".yaml", ".yml", ".json"}:
        from modelhost.features.spec import load_spec

        spec = load_spec(path)
        golden = _golden_of_spec(spec)
        if golden is None:
            raise fail(f"{path} has no golden set (golden: {{threshold, cases}})")
        if spec.version not in _served_versions(remote, spec.name):
            raise fail(
                f"{remote.url} has no {spec.name}@{spec.version}: push it first "
                f"(modelhost features push {path})"
            )
        return spec.name, spec.version, golden
    registry = local_registry()
    info = _feature_version(registry, target)
    golden = _golden_of_version(registry, info)
    if golden is None:
        raise fail(f"{info.ref} has no golden set")
    return info.model, info.version if "@" in target else None, golden


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


@features_app.command("test")
def golden_test(
    target: Annotated[
        str, typer.Argument(help="A spec file, or a registered feature: name[@version].")
    ],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 120.0,
) -> None:
    """Run a golden set against a running server and exit 1 below its threshold.

    The cases of a spec file run on that version (push it first); those of ``name@version``
    are the golden set that gates it, read from the local registry, and run on that version
    (on whatever serves the caller, for a bare ``name``). A case passes when every expected
    field is in the answer with an equal value (strings without case or surrounding space)."""
    with Remote(url, api_key, timeout) as remote:
        name, version, golden = _cases_to_test(remote, target)
        outcomes = [_run_case(remote, name, version, case) for case in golden.cases]
    table = Table("#", "result", "input", "expected", "got", "ms")
    for number, (case, outcome) in enumerate(zip(golden.cases, outcomes, strict=True), 1):
        table.add_row(
            str(number),
            "pass" if outcome.passed else "FAIL",
            _cell(case["input"]),
            _cell(case["expected"]),
            _cell(outcome.got),
            f"{outcome.seconds * 1000:.0f}",
        )
    print_table(table)
    passed = sum(o.passed for o in outcomes)
    rate = passed / len(outcomes)
    p50 = statistics.median(o.seconds for o in outcomes) * 1000
    verdict = "PASS" if rate >= golden.threshold else "FAIL"
    say(
        f"{verdict}: {passed}/{len(outcomes)} passed ({rate:.0%}), threshold "
        f"{golden.threshold:.0%}; p50 latency {p50:.0f} ms ({name}"
        f"{'@' + version if version else ''} at {url})"
    )
    if rate < golden.threshold:
        raise typer.Exit(code=1)


# -- a tenant's own controls (HTTP, scope ``features``) -----------------------------------------


def _control_line(control: dict[str, Any] | None, tenant: str, feature: str) -> str:
    if control is None:
        return f"{tenant}: {feature} follows its deployment, with no override"
    pinned = control.get("pinned_version")
    override = control.get("override")
    parts = [f"pinned to {pinned}" if pinned else "follows its deployment"]
    parts.append(f"override of {', '.join(sorted(override))}" if override else "no override")
    return f"{tenant}: {feature} " + ", ".join(parts)


@features_app.command("pin")
def pin(
    feature: Annotated[str, typer.Argument(help="Feature name.")],
    version: Annotated[str, typer.Argument(help="Version your tenant stays on.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Keep your tenant (the key's) on one version of a feature, whatever the deployment
    says; other tenants are not affected."""
    with Remote(url, api_key, timeout) as remote:
        body = remote.json("PUT", f"/v1/features/{feature}/tenant/pin", json={"version": version})
    say(_control_line(body, body["tenant"], feature))


@features_app.command("unpin")
def unpin(
    feature: Annotated[str, typer.Argument(help="Feature name.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Let your tenant follow the feature's deployment again."""
    _undo(Remote(url, api_key, timeout), feature, "pin")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None


@features_app.command("override")
def override(
    feature: Annotated[str, typer.Argument(help="Feature name.")],
    instructions: Annotated[str | None, typer.Option(help="Your system instructions.")] = None,
    template_file: Annotated[
        Path | None, typer.Option(help="A file with your template of the user message.")
    ] = None,
    parameters: Annotated[
        str | None, typer.Option(help="Model parameters as JSON: '{\"temperature\": 0.2}'.")
    ] = None,
    examples_file: Annotated[
        Path | None,
        typer.Option(help='A JSON file of few-shot examples: [{"input": {...}, "output": ...}].'),
    ] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Give your tenant its own variant of a feature (instructions, template, parameters,
    examples); the feature's output schema is still enforced. Replaces your earlier
    override."""
    body: dict[str, Any] = {}
    if instructions is not None:
        body["instructions"] = instructions
    if template_file is not None:
        body["template"] = _read(template_file)
    if parameters is not None:
        body["parameters"] = _json_option(parameters, "--parameters")
    if examples_file is not None:
        body["examples"] = _json_option(_read(examples_file), str(examples_file))
    if not body:
        raise fail(
            "give at least one of --instructions, --template-file, --parameters, --examples-file"
        )
    with Remote(url, api_key, timeout) as remote:
        control = remote.json("PUT", f"/v1/features/{feature}/tenant/override", json=body)
    say(_control_line(control, control["tenant"], feature))


@features_app.command("clear")
def clear(
    feature: Annotated[str, typer.Argument(help="Feature name.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Drop your tenant's override of a feature (a pin stays)."""
    _undo(Remote(url, api_key, timeout), feature, "override")


def _undo(remote: Remote, feature: str, what: str) -> None:
    """DELETE the tenant's ``pin`` or ``override`` and say what control is left."""
    with remote:
        body = remote.json("DELETE", f"/v1/features/{feature}/tenant/{what}")
    say(_control_line(body["control"], body["tenant"], feature))


def _state(value: dict[str, Any] | None) -> str:
    if not value:
        return "-"
    parts = [f"pin {value['pinned_version']}"] if value.get("pinned_version") else []
    if value.get("override"):
        parts.append(f"override {', '.join(sorted(value['override']))}")
    return ", ".join(parts) or "-"


@features_app.command("tenant")
def tenant(
    feature: Annotated[str, typer.Argument(help="Feature name.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """What your tenant set for a feature (pin, override) and the history of its changes."""
    with Remote(url, api_key, timeout) as remote:
        body = remote.json("GET", f"/v1/features/{feature}/tenant")
    say(_control_line(body["control"], body["tenant"], feature))
    override_body = (body["control"] or {}).get("override")
    if override_body:
        say(_yaml({"override": override_body}).rstrip())
    table = Table("when", "who", "action", "before", "after")
    for event in body["history"]:
        table.add_row(
            event["at"][:19].replace("T", " "),
            event["actor"],
            event["action"],
            _state(event["before"]),
            _state(event["after"]),
        )
    print_table(table)
