"""``modelhost featurestore …``: Feast repositories of models that read stored features.

* ``apply REPO`` registers a repository's definitions (what ``feast apply`` does), with the
  online store modelhost uses (Redis when ``MODELHOST_REDIS_URL`` is set).
* ``materialize MODEL`` (or ``--repo REPO``) loads the online store from the offline store.
* ``training-set MODEL --entities FILE --out FILE.parquet`` builds a point-in-time-correct
  training frame and records its digest in the model directory's ``modelhost.yaml``.
* ``skew MODEL --since 1h`` asks a running server to recompute served rows offline and
  prints the mismatch rate per feature (exit code 2 when a feature is over its threshold).

``MODEL`` is a model directory (with ``modelhost.yaml``) or a registered ``name[@version]``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.table import Table

from modelhost.cli.common import ApiKey, Remote, Timeout, Url, fail, out, say
from modelhost.config import Settings
from modelhost.errors import ModelhostError
from modelhost.manifest import (
    MANIFEST_FILE,
    FeatureStoreConfig,
    ModelManifest,
    TrainingSetLineage,
    load_manifest,
)

if TYPE_CHECKING:
    from feast import FeatureStore

featurestore_app = typer.Typer(
    help="Stored features from Feast: apply, materialize, training-set, skew.",
    no_args_is_help=True,
)

Model = Annotated[str, typer.Argument(help="A model directory, or a registered name[@version].")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``modelhost`` command line."""
    app.add_typer(featurestore_app, name="featurestore")


def _open(repo: str | Path, settings: Settings) -> FeatureStore:
    from modelhost.featurestore import open_store

    return open_store(
        repo, online_store=settings.feature_store.online_store, redis_url=settings.redis_url or ""
    )


def _manifest(model: str, settings: Settings) -> ModelManifest:
    """The manifest of a model directory (artifacts not needed yet: the training set comes
    before the model) or of a registered version."""
    path = Path(model)
    if (path / MANIFEST_FILE).is_file():
        return load_manifest(path, artifacts=False)
    from modelhost.registry import build_registry

    name, _, version = model.partition("@")
    registry = build_registry(settings)
    try:
        return registry.resolve(name, version or None).manifest
    finally:
        registry.engine.dispose()


def _config(manifest: ModelManifest) -> FeatureStoreConfig:
    if manifest.feature_store is None:
        raise fail(f"{manifest.ref} has no 'feature_store' section in its manifest")
    return manifest.feature_store


@featurestore_app.command("apply")
def apply(repo: Annotated[Path, typer.Argument(help="The Feast repository directory.")]) -> None:
    """Register a repository's entities, sources, feature views and services."""
    from modelhost.featurestore import apply_repo

    try:
        names = apply_repo(_open(repo, Settings()))
    except ModelhostError as exc:
        raise fail(exc.message) from None
    say(f"applied {repo}: {', '.join(names)}")


@featurestore_app.command("materialize")
def materialize_command(
    model: Annotated[str | None, typer.Argument(help="A model directory or name.")] = None,
    repo: Annotated[Path | None, typer.Option(help="A repository instead of a model.")] = None,
    end: Annotated[str | None, typer.Option(help="Up to this ISO time (default: now).")] = None,
) -> None:
    """Load the online store with the values up to END (incrementally)."""
    from modelhost.featurestore import materialize

    settings = Settings()
    try:
        target = repo if repo is not None else _config(_manifest(_need(model), settings)).repo
        until = datetime.fromisoformat(end) if end else None
        if until is not None and until.tzinfo is None:
            until = until.replace(tzinfo=UTC)
        done = materialize(_open(target, settings), until)
    except (ModelhostError, ValueError) as exc:
        raise fail(str(exc)) from None
    say(f"materialized {target} up to {done.isoformat()}")


def _need(model: str | None) -> str:
    if model is None:
        raise fail("name a MODEL or give --repo")
    return model


@featurestore_app.command("training-set")
def training_set_command(
    model: Model,
    entities: Annotated[Path, typer.Option(help="Entity keys, event_timestamp, labels.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the parquet frame.")],
) -> None:
    """Build a point-in-time-correct training frame with the model's feature definitions."""
    from modelhost.featurestore.offline import file_sha256, read_entities, training_set
    from modelhost.featurestore.repo import select

    settings = Settings()
    try:
        manifest = _manifest(model, settings)
        config = _config(manifest)
        store = _open(config.repo, settings)
        chosen = select(store, config)
        built = training_set(store, config, chosen, read_entities(entities))
    except ModelhostError as exc:
        raise fail(exc.message) from None
    frame = built.frame
    out_file.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out_file, index=False)
    lineage = TrainingSetLineage(
        path=str(out_file.resolve()),
        sha256=file_sha256(out_file),
        rows=len(frame),
        columns=[str(c) for c in frame.columns],
        entities_sha256=file_sha256(entities),
        definitions_sha256=chosen.digest,
        feature_service=config.service,
        features=list(chosen.names),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    say(
        f"wrote {out_file}: {len(frame)} rows, {len(frame.columns)} columns, "
        f"sha256 {lineage.sha256}"
    )
    say(f"{built.rows_in} entity rows in, {len(frame)} out")
    if built.lost:
        say(
            f"warning: {built.lost} entity rows got no row from the offline store (no value "
            "within a feature view's ttl before their timestamp)"
        )
    if built.missing:
        say(f"{built.missing} rows lacked a stored value (policy {config.on_missing!r} applied)")
    directory = Path(model)
    if (directory / MANIFEST_FILE).is_file():
        record_lineage(directory / MANIFEST_FILE, lineage)
        say(f"recorded the training set in {directory / MANIFEST_FILE} (lineage.training_set)")
    else:
        say("a registered version is immutable: put this in the next version's manifest:")
        out.print(yaml.safe_dump({"lineage": {"training_set": lineage.model_dump()}}))


def record_lineage(path: Path, lineage: TrainingSetLineage) -> None:
    """Write ``lineage.training_set`` into a manifest file, keeping the rest of the text (its
    comments included) as it is: a top-level ``lineage:`` block is replaced, or appended."""
    block = yaml.safe_dump(
        {"lineage": {"training_set": lineage.model_dump()}}, sort_keys=False
    ).splitlines()
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("lineage:")), None)
    if start is None:
        kept = [*lines, *block]
    else:
        end = start + 1
        while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t"):
            end += 1
        kept = [*lines[:start], *block, *lines[end:]]
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")


@featurestore_app.command("skew")
def skew_command(
    model: Annotated[str, typer.Argument(help="A registered model name[@version].")],
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
    timeout: Timeout = 300.0,
    since: Annotated[str, typer.Option(help="Served since: 1h, 30m, ISO time, unix.")] = "1h",
    sample: Annotated[int, typer.Option(help="Most served rows to recompute.")] = 200,
    version: Annotated[str | None, typer.Option(help="Version (default: production).")] = None,
) -> None:
    """Recompute served rows offline and print the mismatch rate per feature."""
    params: dict[str, Any] = {"since": since, "sample": sample}
    if version:
        params["version"] = version
    with Remote(url, api_key, timeout) as remote:
        body = remote.json("POST", f"/v1/models/{model}/feature-store/skew", params=params)
    table = Table("feature", "compared", "mismatched", "rate", "example (served → offline)")
    for name, found in body["features"].items():
        rate = f"{found['mismatch_rate']:.3f}"
        if name in body["over_threshold"]:
            rate = f"[bold red]{rate}[/bold red]"
        example = found["examples"][0] if found["examples"] else None
        shown = f"{example['served']!r} → {example['offline']!r}" if example else ""
        table.add_row(name, str(found["compared"]), str(found["mismatched"]), rate, shown)
    out.print(table)
    say(
        f"{body['model']}@{body['version']}: {body['rows']} rows from {body['records']} records "
        f"since {body['since']}, {body['recomputed']} recomputed offline; threshold "
        f"{body['threshold']:g}: {body['status']}"
    )
    if body["over_threshold"]:
        raise typer.Exit(code=2)
