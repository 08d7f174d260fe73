"""Golden sets: inputs with known answers a version must get right before it becomes
production (the golden gate of :mod:`modelhost.registry.gates`).

A version ships its golden set in its artifact (``gates.golden.file`` in its manifest, JSON
Lines of ``{"input": ..., "expected": ...}``), or an operator registers one later through
``PUT /v1/models/{model}/versions/{version}/golden`` (:func:`register_golden`); a registered
set wins over the shipped one, so a set found wanting can be replaced without pushing a new
version. Registered sets live in the ``mh_golden`` table, shared by every replica.

Every golden set carries its :class:`~modelhost.manifest.GoldenGate` settings (compared
field, thresholds, parameters): a registered one takes the fields it does not set from the
version's manifest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from pydantic import ValidationError
from sqlalchemy import JSON, DateTime, Integer, String, delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from modelhost.errors import ConfigError, InvalidInput, invalid_input
from modelhost.manifest import GoldenGate
from modelhost.registry.db import Base, utcnow
from modelhost.registry.service import Registry, VersionInfo

#: Most items one golden set may hold (each runs on the candidate at every promotion).
MAX_GOLDEN_ITEMS = 10_000
#: Fields of a registration besides ``items``: the :class:`GoldenGate` fields it may set.
_GATE_FIELDS = frozenset({"field", "thresholds", "parameters", "batch_size", "examples"})


@dataclass(frozen=True, slots=True)
class GoldenItem:
    """One input and the answer it must get."""

    input: Any
    expected: Any


@dataclass(frozen=True, slots=True)
class GoldenSet:
    """A golden set ready to evaluate: its items and how to judge them."""

    items: tuple[GoldenItem, ...]
    gate: GoldenGate
    source: str
    """``artifact:<path>`` or ``registered``."""
    sha256: str
    """Of the items as canonical JSON: tells two sets apart in reports and history."""
    registered_by: str | None = None
    registered_at: datetime | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready, without the items (what a registration answers)."""
        return {
            "object": "golden_set",
            "items": len(self.items),
            "source": self.source,
            "sha256": self.sha256,
            "field": self.gate.field,
            "thresholds": self.gate.thresholds.named(),
            "parameters": self.gate.parameters,
            "registered_by": self.registered_by,
            "registered_at": self.registered_at.isoformat() if self.registered_at else None,
        }


class GoldenRow(Base):
    """A golden set registered for one version (it wins over the one the version ships)."""

    __tablename__ = "mh_golden"

    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    items: Mapped[list[Any]] = mapped_column(JSON)
    """``[{"input": ..., "expected": ...}, ...]``."""
    gate: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The :class:`GoldenGate` fields the registration set (the rest come from the
    manifest)."""
    count: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    registered_by: Mapped[str] = mapped_column(String(128))
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


_TABLE = Base.metadata.tables[GoldenRow.__tablename__]


def digest(items: Iterable[GoldenItem]) -> str:
    """The sha256 of golden items as canonical JSON (sorted keys, no whitespace)."""
    pairs = [[i.input, i.expected] for i in items]
    return hashlib.sha256(orjson.dumps(pairs, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _item(value: Any, where: str) -> GoldenItem:
    if not isinstance(value, dict) or "input" not in value or "expected" not in value:
        raise InvalidInput(
            f'{where}: each golden item is an object {{"input": ..., "expected": ...}}',
            param=where,
        )
    unknown = sorted(set(value) - {"input", "expected"})
    if unknown:
        raise InvalidInput(f"{where}: unknown field {unknown[0]!r}", param=where)
    return GoldenItem(value["input"], value["expected"])


def items_of(values: Any, where: str = "items") -> list[GoldenItem]:
    """Golden items from decoded JSON (a list of ``{"input", "expected"}`` objects).

    Raises:
        InvalidInput: not a non-empty list of such objects, or over :data:`MAX_GOLDEN_ITEMS`.
    """
    if not isinstance(values, list) or not values:
        raise InvalidInput(f"'{where}' must be a non-empty array of golden items", param=where)
    if len(values) > MAX_GOLDEN_ITEMS:
        raise InvalidInput(
            f"a golden set holds at most {MAX_GOLDEN_ITEMS} items, not {len(values)}",
            param=where,
        )
    return [_item(value, f"{where}[{i}]") for i, value in enumerate(values)]


def read_jsonl(text: str, source: str = "golden set") -> list[GoldenItem]:
    """Golden items from JSON Lines (blank lines skipped).

    Raises:
        InvalidInput: a line is not JSON or not a golden item (naming the line).
    """
    values = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{source}, line {number}: not valid JSON: {exc.msg}") from None
        if len(values) > MAX_GOLDEN_ITEMS:
            break
    return items_of(values, source)


def _gate(base: GoldenGate | None, overrides: dict[str, Any], where: str) -> GoldenGate:
    """``base`` (the manifest's gate) with ``overrides`` (a registration's fields) on top.

    Raises:
        InvalidInput: the result is not a valid gate (no threshold anywhere, a bad value).
    """
    merged: dict[str, Any] = base.model_dump(exclude={"file"}) if base is not None else {}
    merged.update(overrides)
    if "thresholds" not in merged:
        raise InvalidInput(
            f"{where}: no thresholds: set 'thresholds' (e.g. {{\"accuracy\": 0.9}}) here or "
            "in the version's manifest (gates.golden.thresholds)",
            param="thresholds",
        )
    try:
        return GoldenGate.model_validate(merged)
    except ValidationError as exc:
        raise invalid_input(exc, where=where, root="golden") from None


def check_inputs(info: VersionInfo, items: Iterable[GoldenItem]) -> None:
    """Refuse golden inputs the version's input schema refuses (they could never pass).

    Raises:
        InvalidInput: naming the first wrong item and why.
    """
    schema = info.manifest.input_schema
    if not schema:
        return
    validator = Draft202012Validator(schema)
    for index, item in enumerate(items):
        error = next(iter(validator.iter_errors(item.input)), None)
        if error is not None:
            path = "".join(f"[{p!r}]" for p in error.absolute_path)
            raise InvalidInput(
                f"items[{index}].input{path}: {error.message} (the input schema of {info.ref})",
                param=f"items[{index}].input",
            )


class GoldenStore:
    """The ``mh_golden`` table; its methods block on the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)
        try:
            Base.metadata.create_all(engine, tables=[_TABLE])
        except SQLAlchemyError:  # another process created it at the same moment
            Base.metadata.create_all(engine, tables=[_TABLE])

    def put(
        self,
        info: VersionInfo,
        items: list[GoldenItem],
        overrides: dict[str, Any],
        *,
        actor: str,
    ) -> GoldenSet:
        """Register (or replace) the golden set of ``info``'s version.

        Args:
            info: the version it is for.
            items: the inputs and expected answers.
            overrides: :class:`~modelhost.manifest.GoldenGate` fields to use instead of the
                manifest's (``field``, ``thresholds``, ``parameters``, ...).
            actor: who registers it.

        Raises:
            InvalidInput: no thresholds here or in the manifest, a bad field, or an input the
                version's input schema refuses.
        """
        gate = _gate(info.manifest.gates.golden, overrides, f"golden set of {info.ref}")
        check_inputs(info, items)
        row = GoldenRow(
            model=info.model,
            version=info.version,
            items=[{"input": i.input, "expected": i.expected} for i in items],
            gate=overrides,
            count=len(items),
            sha256=digest(items),
            registered_by=actor,
            registered_at=datetime.now(UTC),
        )
        with self._session.begin() as session:
            session.merge(row)
        return GoldenSet(tuple(items), gate, "registered", row.sha256, actor, row.registered_at)

    def get(self, info: VersionInfo) -> GoldenSet | None:
        """The golden set registered for ``info``'s version, or None.

        Raises:
            ConfigError: the stored set no longer makes a valid gate with the manifest.
        """
        with self._session() as session:
            row = session.get(GoldenRow, (info.model, info.version))
        if row is None:
            return None
        try:
            gate = _gate(info.manifest.gates.golden, dict(row.gate), f"golden set of {info.ref}")
        except InvalidInput as exc:
            raise ConfigError(exc.message, param=exc.param) from None
        items = tuple(_item(value, "items") for value in row.items)
        at = row.registered_at
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        return GoldenSet(items, gate, "registered", row.sha256, row.registered_by, at)

    def delete(self, model: str, version: str) -> bool:
        """Forget the registered set of ``model@version`` (the shipped one applies again);
        False when there was none."""
        with self._session.begin() as session:
            result = session.execute(
                delete(GoldenRow).where(GoldenRow.model == model, GoldenRow.version == version)
            )
        return bool(getattr(result, "rowcount", 0))


def shipped(registry: Registry, info: VersionInfo) -> GoldenSet | None:
    """The golden set ``info``'s version ships in its artifact, or None (blocking: reads and
    verifies the file).

    Raises:
        ConfigError: the manifest names a file the version does not have, or it is not a
            golden set.
        ArtifactIntegrityError: the stored file no longer matches its sha256.
    """
    gate = info.manifest.gates.golden
    if gate is None or gate.file is None:
        return None
    rel = info.manifest.artifacts.get(gate.file, gate.file)
    stored = info.files.get(rel)
    if stored is None:
        raise ConfigError(
            f"{info.ref}: 'gates.golden.file' names {rel!r}, which is not a file of this "
            "version; put the golden set in the version directory",
            param="gates.golden.file",
        )
    path = registry.store.materialize(info.model, info.version, {rel: stored}) / rel
    try:
        items = read_jsonl(path.read_text(encoding="utf-8"), f"{info.ref}: {rel}")
    except InvalidInput as exc:
        raise ConfigError(exc.message, param="gates.golden.file") from None
    return GoldenSet(tuple(items), gate, f"artifact:{rel}", digest(items))


def golden_of(registry: Registry, store: GoldenStore, info: VersionInfo) -> GoldenSet | None:
    """The golden set that gates ``info``'s version: the registered one, else the shipped
    one, else None (blocking)."""
    return store.get(info) or shipped(registry, info)


def parse_registration(payload: Any) -> tuple[list[GoldenItem], dict[str, Any]]:
    """The items and gate fields of a registration body: ``{"items": [...], "thresholds":
    {...}, "field": ..., "parameters": {...}, "batch_size": ..., "examples": ...}`` (every
    field but ``items`` optional), or a bare array of items.

    Raises:
        InvalidInput: naming the wrong field.
    """
    if isinstance(payload, list):
        return items_of(payload), {}
    if not isinstance(payload, dict):
        raise InvalidInput(
            'the body must be {"items": [{"input": ..., "expected": ...}, ...], '
            '"thresholds": {...}} or an array of items',
            param="body",
        )
    unknown = sorted(set(payload) - _GATE_FIELDS - {"items"})
    if unknown:
        raise InvalidInput(
            f"unknown field {unknown[0]!r}; known: items, {', '.join(sorted(_GATE_FIELDS))}",
            param=unknown[0],
        )
    overrides = {k: v for k, v in payload.items() if k in _GATE_FIELDS}
    return items_of(payload.get("items")), overrides


async def register_golden(
    registry: Registry,
    store: GoldenStore,
    model: str,
    version: str,
    payload: Any,
    *,
    actor: str,
) -> GoldenSet:
    """Register the golden set of ``model@version`` from a request body (what ``PUT
    /v1/models/{model}/versions/{version}/golden`` does) and note it in the deployment
    history (``golden.register``).

    Args:
        payload: the decoded JSON body (see :func:`parse_registration`), or items already
            read from JSON Lines with :func:`read_jsonl`.

    Raises:
        ModelNotFound, VersionNotFound: no such version.
        InvalidInput: a malformed body, no thresholds, or inputs the schema refuses.
    """
    overrides: dict[str, Any] = {}
    if isinstance(payload, list) and all(isinstance(i, GoldenItem) for i in payload):
        items = list(payload)
    else:
        items, overrides = parse_registration(payload)
    info = await asyncio.to_thread(registry.get_version, model, version)
    golden = await asyncio.to_thread(store.put, info, items, overrides, actor=actor)
    detail = {"version": version, "items": len(items), "sha256": golden.sha256}
    await asyncio.to_thread(
        registry.deployments.record, model, "golden.register", actor=actor, detail=detail
    )
    return golden
