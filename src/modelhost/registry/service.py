"""The model registry: models, semver versions, stages, aliases and a history of every change."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import semver
from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelhost.config import Settings
from modelhost.errors import Conflict, InvalidInput, ModelNotFound, VersionNotFound
from modelhost.manifest import ModelManifest, load_manifest, parse_manifest
from modelhost.registry.artifacts import ArtifactStore
from modelhost.registry.db import AliasRow, HistoryRow, ModelRow, VersionRow, make_engine
from modelhost.registry.deployments import Deployments

_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class Stage(StrEnum):
    """Lifecycle stage of a model version."""

    STAGING = "staging"  #: pushed, loadable, served only when pinned
    PRODUCTION = "production"  #: what an unpinned request gets; at most one per model
    ARCHIVED = "archived"  #: kept for rollback, not loaded at start


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One registered version, detached from the database."""

    model: str
    version: str
    runtime: str
    stage: Stage
    manifest: ModelManifest
    files: dict[str, str]
    size_bytes: int
    created_at: datetime
    created_by: str

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.model}@{self.version}"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model with its versions (newest first) and aliases."""

    name: str
    created_at: datetime
    versions: list[VersionInfo]
    aliases: dict[str, str]

    def stage_version(self, stage: Stage) -> VersionInfo | None:
        """The newest version in ``stage``, or None."""
        return next((v for v in self.versions if v.stage is stage), None)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One change to the registry."""

    at: datetime
    actor: str
    model: str
    version: str | None
    action: str
    from_value: str | None
    to_value: str | None


def _semver_key(version: str) -> semver.Version:
    return semver.Version.parse(version)


def _aware(moment: datetime) -> datetime:
    """SQLite drops the zone of stored datetimes; they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _info(row: VersionRow) -> VersionInfo:
    return VersionInfo(
        model=row.model,
        version=row.version,
        runtime=row.runtime,
        stage=Stage(row.stage),
        manifest=parse_manifest(row.manifest, source=f"{row.model}@{row.version}"),
        files=dict(row.files),
        size_bytes=row.size_bytes,
        created_at=_aware(row.created_at),
        created_by=row.created_by,
    )


class Registry:
    """Registry operations over one SQLAlchemy engine and one artifact store."""

    def __init__(self, engine: Engine, store: ArtifactStore) -> None:
        self.engine = engine
        self.store = store
        self.deployments = Deployments(engine)
        """Canary, shadows, guards and rollback lineage of each model."""
        self._session = sessionmaker(engine, expire_on_commit=False)

    # -- writing -------------------------------------------------------------------------

    def push(self, directory: Path, *, actor: str, stage: Stage = Stage.STAGING) -> VersionInfo:
        """Validate a version directory, store its files by sha256 and register it.

        Raises:
            ManifestError: the manifest is invalid.
            Conflict: that version of that model is registered already.
        """
        manifest = load_manifest(directory)
        files = self.store.put_dir(directory)
        return self.register(manifest, files, actor=actor, stage=stage)

    def register(
        self,
        manifest: ModelManifest,
        files: dict[str, str],
        *,
        actor: str,
        stage: Stage = Stage.STAGING,
    ) -> VersionInfo:
        """Register a version whose files are already in the store."""
        with self._session.begin() as session:
            if session.get(ModelRow, manifest.name) is None:
                session.add(ModelRow(name=manifest.name))
                session.flush()
            exists = session.scalar(
                select(VersionRow.id).where(
                    VersionRow.model == manifest.name, VersionRow.version == manifest.version
                )
            )
            if exists is not None:
                raise Conflict(
                    f"{manifest.ref} is registered already: bump 'version' in modelhost.yaml",
                    param="version",
                )
            row = VersionRow(
                model=manifest.name,
                version=manifest.version,
                runtime=manifest.runtime.value,
                stage=Stage.STAGING.value,
                manifest=manifest.model_dump(mode="json"),
                files=files,
                size_bytes=self.store.size(files),
                created_by=actor,
            )
            session.add(row)
            self._log(session, manifest.name, manifest.version, "register", None, "staging", actor)
            try:
                session.flush()
            except IntegrityError:
                raise Conflict(f"{manifest.ref} is registered already") from None
        if stage is not Stage.STAGING:
            return self.set_stage(manifest.name, manifest.version, stage, actor=actor)
        return self.get_version(manifest.name, manifest.version)

    def set_stage(self, model: str, version: str, stage: Stage, *, actor: str) -> VersionInfo:
        """Move a version to ``stage``; promoting to production archives the previous one."""
        with self._session.begin() as session:
            row = self._version_row(session, model, version)
            if stage is Stage.PRODUCTION:
                current = session.scalars(
                    select(VersionRow).where(
                        VersionRow.model == model,
                        VersionRow.stage == Stage.PRODUCTION.value,
                        VersionRow.version != version,
                    )
                ).all()
                for other in current:
                    self._log(
                        session, model, other.version, "stage", other.stage, "archived", actor
                    )
                    other.stage = Stage.ARCHIVED.value
            if row.stage != stage.value:
                self._log(session, model, version, "stage", row.stage, stage.value, actor)
                row.stage = stage.value
        return self.get_version(model, version)

    def set_alias(self, model: str, alias: str, version: str, *, actor: str) -> None:
        """Point ``alias`` at ``version`` (creating or moving it)."""
        if not _ALIAS.match(alias) or alias in {s.value for s in Stage} or alias == "latest":
            raise InvalidInput(
                f"alias {alias!r} is not allowed: use lower-case letters, digits, '-' or '_', "
                "starting with a letter, and not a stage name or 'latest'",
                param="alias",
            )
        with self._session.begin() as session:
            self._version_row(session, model, version)
            row = session.get(AliasRow, (model, alias))
            before = row.version if row else None
            if row is None:
                session.add(AliasRow(model=model, alias=alias, version=version))
            else:
                row.version = version
            self._log(session, model, version, f"alias:{alias}", before, version, actor)

    def delete_alias(self, model: str, alias: str, *, actor: str) -> None:
        """Remove ``alias``.

        Raises:
            VersionNotFound: no such alias.
        """
        with self._session.begin() as session:
            row = session.get(AliasRow, (model, alias))
            if row is None:
                raise VersionNotFound(f"model {model!r} has no alias {alias!r}", param="alias")
            self._log(session, model, row.version, f"alias:{alias}", row.version, None, actor)
            session.execute(
                delete(AliasRow).where(AliasRow.model == model, AliasRow.alias == alias)
            )

    # -- reading -------------------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        """Every model, by name."""
        with self._session() as session:
            names = session.scalars(select(ModelRow.name).order_by(ModelRow.name)).all()
            return [self._model(session, name) for name in names]

    def get_model(self, name: str) -> ModelInfo:
        """One model with its versions and aliases.

        Raises:
            ModelNotFound: no model of that name.
        """
        with self._session() as session:
            return self._model(session, name)

    def get_version(self, model: str, version: str) -> VersionInfo:
        """One exact version.

        Raises:
            ModelNotFound, VersionNotFound.
        """
        with self._session() as session:
            return _info(self._version_row(session, model, version))

    def resolve(self, model: str, selector: str | None = None) -> VersionInfo:
        """Find the version a request means.

        ``selector`` is an exact version (``1.1.0``), an alias (``champion``), a stage
        (``production``, ``staging``), ``latest``, or None for the production version.

        Raises:
            ModelNotFound, VersionNotFound.
        """
        info = self.get_model(model)
        return resolve_in(info, selector)

    def history(self, model: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """The newest changes first, for one model or all."""
        with self._session() as session:
            query = select(HistoryRow).order_by(HistoryRow.id.desc()).limit(limit)
            if model is not None:
                query = query.where(HistoryRow.model == model)
            return [
                HistoryEntry(
                    at=_aware(r.at),
                    actor=r.actor,
                    model=r.model,
                    version=r.version,
                    action=r.action,
                    from_value=r.from_value,
                    to_value=r.to_value,
                )
                for r in session.scalars(query)
            ]

    def generation(self) -> int:
        """A number that grows with every change of versions, stages, aliases or deployments;
        cheap to poll (every replica does, to apply changes made through another)."""
        with self._session() as session:
            versions = int(session.scalar(select(func.max(HistoryRow.id))) or 0)
        return versions + self.deployments.generation()

    # -- helpers -------------------------------------------------------------------------

    def _model(self, session: Session, name: str) -> ModelInfo:
        # a name no manifest can have (a NUL, say, which PostgreSQL refuses in any query)
        # is unknown without asking the database, the same on every backend
        row = session.get(ModelRow, name) if storable(name) else None
        if row is None:
            raise ModelNotFound(f"model {name!r} is not registered", param="model")
        versions = [
            _info(v) for v in session.scalars(select(VersionRow).where(VersionRow.model == name))
        ]
        versions.sort(key=lambda v: _semver_key(v.version), reverse=True)
        aliases = {
            a.alias: a.version
            for a in session.scalars(select(AliasRow).where(AliasRow.model == name))
        }
        return ModelInfo(
            name=name, created_at=_aware(row.created_at), versions=versions, aliases=aliases
        )

    @staticmethod
    def _version_row(session: Session, model: str, version: str) -> VersionRow:
        if not storable(model):
            raise ModelNotFound(f"model {model!r} is not registered", param="model")
        row = None
        if storable(version):
            row = session.scalar(
                select(VersionRow).where(VersionRow.model == model, VersionRow.version == version)
            )
        if row is not None:
            return row
        if session.get(ModelRow, model) is None:
            raise ModelNotFound(f"model {model!r} is not registered", param="model")
        raise VersionNotFound(f"model {model!r} has no version {version!r}", param="version")

    @staticmethod
    def _log(
        session: Session,
        model: str,
        version: str | None,
        action: str,
        before: str | None,
        after: str | None,
        actor: str,
    ) -> None:
        session.add(
            HistoryRow(
                model=model,
                version=version,
                action=action,
                from_value=before,
                to_value=after,
                actor=actor,
            )
        )


def storable(text: str) -> bool:
    """Whether ``text`` can be a stored name, version or key: no control characters
    (PostgreSQL refuses a NUL anywhere in a query; SQLite would simply find nothing). Every
    edge that stores or looks up a caller's string checks it, so all backends agree."""
    return text.isprintable()


def _no_production(info: ModelInfo) -> VersionNotFound:
    """The 404 of a call naming no version of a model with no production version: its
    versions, and each way to promote or name one (tests/api/test_features.py follows them)."""
    live = [v for v in info.versions if v.stage is not Stage.ARCHIVED] or info.versions
    example = live[0].version if live else "VERSION"
    versions = ", ".join(f"{v.version} {v.stage.value}" for v in info.versions) or "none"
    return VersionNotFound(
        f"model {info.name!r} has no production version (versions: {versions}): promote one "
        f"(`modelhost models promote {info.name} {example}`) or name one: "
        f"'{info.name}@{example}' or the header 'X-Model-Version: {example}' on REST /v1 and "
        f"OpenAI routes, /v2/models/{info.name}/versions/{example} on Open Inference v2",
        param="model",
    )


def resolve_in(info: ModelInfo, selector: str | None) -> VersionInfo:
    """Resolve ``selector`` (see :meth:`Registry.resolve`) within an already loaded model.

    Raises:
        VersionNotFound: nothing matches.
    """
    if selector is None or selector == Stage.PRODUCTION.value:
        found = info.stage_version(Stage.PRODUCTION)
        if found is None:
            raise _no_production(info)
        return found
    wanted = info.aliases.get(selector, selector)
    if wanted == "latest":
        live = [v for v in info.versions if v.stage is not Stage.ARCHIVED]
        if live:
            return live[0]
    for stage in Stage:
        if wanted == stage.value and (found := info.stage_version(stage)):
            return found
    for version in info.versions:
        if version.version == wanted:
            return version
    raise VersionNotFound(
        f"model {info.name!r} has no version, alias or stage {selector!r}; versions: "
        f"{', '.join(v.version for v in info.versions) or 'none'}",
        param="version",
    )


def build_registry(settings: Settings) -> Registry:
    """The registry over the configured database and the artifact store under ``home``
    (what the server, the worker and every ``modelhost`` command open)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    return Registry(
        make_engine(settings.resolved_database_url), ArtifactStore(settings.artifact_dir)
    )
