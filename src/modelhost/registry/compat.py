"""Schema compatibility of two versions of a model under semantic versioning.

A caller of the production version must keep working against its successor unless the major
version changes. So the new **input** schema must accept everything the old one accepted (it
may only loosen), and the new **output** schema must promise nothing the old one did not (it
may only tighten, or add fields). :func:`compare` walks both JSON Schemas and lists every
difference, each marked breaking or not, with a sentence a person can act on;
:func:`check_promotion` refuses a breaking change that is not a MAJOR bump.

What cannot be proved compatible (a changed ``anyOf``, ``$ref``, ``pattern``) counts as
breaking: the gate errs on the side of the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from modelhost.errors import Conflict

Direction = Literal["input", "output"]

_TYPE_WIDER = {"integer": {"number"}}
#: Keywords whose change cannot be reasoned about here: any difference is breaking.
_OPAQUE = ("anyOf", "oneOf", "allOf", "not", "$ref", "pattern", "format", "const")
#: Lower bounds (a higher value is stricter) and upper bounds (a lower value is stricter).
_LOWER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two schemas."""

    direction: Direction
    path: str
    """Where, as ``inputs[].petal_length`` or ``results[].label``."""
    message: str
    breaking: bool

    def __str__(self) -> str:
        mark = "BREAKING" if self.breaking else "ok"
        return f"[{mark}] {self.direction} {self.path}: {self.message}"


def _types(schema: dict[str, Any]) -> set[str] | None:
    value = schema.get("type")
    if value is None:
        return None
    return {value} if isinstance(value, str) else set(value)


def _accepts_all(new: set[str], old: set[str]) -> bool:
    """Whether types ``new`` accept every value of types ``old``."""
    return all(t in new or _TYPE_WIDER.get(t, set()) & new for t in old)


class _Walker:
    def __init__(self, direction: Direction) -> None:
        self.direction = direction
        self.changes: list[Change] = []

    def note(self, path: str, message: str, *, stricter: bool) -> None:
        """Record a change: a stricter input or a looser output breaks callers."""
        breaking = stricter if self.direction == "input" else not stricter
        self.changes.append(Change(self.direction, path, message, breaking))

    def opaque(self, path: str, message: str) -> None:
        self.changes.append(Change(self.direction, path, message, True))

    def walk(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        self._types(old, new, path)
        self._enum(old, new, path)
        self._bounds(old, new, path)
        for key in _OPAQUE:
            if old.get(key) != new.get(key):
                self.opaque(path, f"'{key}' changed from {old.get(key)!r} to {new.get(key)!r}")
        self._properties(old, new, path)
        old_items, new_items = old.get("items"), new.get("items")
        if isinstance(old_items, dict) and isinstance(new_items, dict):
            self.walk(old_items, new_items, f"{path}[]")
        elif old_items != new_items:
            self.opaque(f"{path}[]", "'items' changed shape")

    def _types(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        old_types, new_types = _types(old), _types(new)
        if old_types == new_types:
            return
        if new_types is None:
            self.note(
                path, f"type {sorted(old_types or [])} is no longer constrained", stricter=False
            )
        elif old_types is None:
            self.note(path, f"type is now restricted to {sorted(new_types)}", stricter=True)
        elif _accepts_all(new_types, old_types):
            self.note(
                path, f"type widened {sorted(old_types)} → {sorted(new_types)}", stricter=False
            )
        elif _accepts_all(old_types, new_types):
            self.note(
                path, f"type narrowed {sorted(old_types)} → {sorted(new_types)}", stricter=True
            )
        else:
            self.opaque(path, f"type changed {sorted(old_types)} → {sorted(new_types)}")

    def _enum(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        old_enum, new_enum = old.get("enum"), new.get("enum")
        if old_enum == new_enum:
            return
        if new_enum is None:
            self.note(path, "enum removed (any value now)", stricter=False)
        elif old_enum is None:
            self.note(path, f"now limited to {new_enum}", stricter=True)
        else:
            removed = [v for v in old_enum if v not in new_enum]
            added = [v for v in new_enum if v not in old_enum]
            if removed:
                self.note(path, f"values {removed} no longer allowed", stricter=True)
            if added:
                self.note(path, f"new values {added}", stricter=False)

    def _bounds(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        for key in (*_LOWER, *_UPPER):
            before, after = old.get(key), new.get(key)
            if before == after:
                continue
            if before is None or after is None:
                stricter = after is not None
            else:
                stricter = after > before if key in _LOWER else after < before
            self.note(path, f"{key} {before} → {after}", stricter=stricter)

    def _properties(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        old_props: dict[str, Any] = old.get("properties") or {}
        new_props: dict[str, Any] = new.get("properties") or {}
        old_required, new_required = set(old.get("required") or []), set(new.get("required") or [])
        for name in sorted(new_required - old_required):
            self.note(f"{path}.{name}", "is now required", stricter=True)
        for name in sorted(old_required - new_required):
            self.note(f"{path}.{name}", "is no longer required", stricter=False)
        closed_old = old.get("additionalProperties") is False
        closed_new = new.get("additionalProperties") is False
        if closed_new and not closed_old:
            self.note(path, "no longer accepts fields it does not list", stricter=True)
        if closed_old and not closed_new:
            self.note(path, "now accepts fields it does not list", stricter=False)
        for name in sorted(set(old_props) - set(new_props)):
            # an output field is no longer promised; an input field may no longer be sent
            # when the object now refuses what it does not list
            breaking = self.direction == "output" or closed_new
            self.changes.append(Change(self.direction, f"{path}.{name}", "field removed", breaking))
        for name in sorted(set(new_props) - set(old_props)):
            # harmless by itself (a new required input is noted above)
            self.changes.append(Change(self.direction, f"{path}.{name}", "field added", False))
        for name in sorted(set(old_props) & set(new_props)):
            before, after = old_props[name], new_props[name]
            if isinstance(before, dict) and isinstance(after, dict):
                self.walk(before, after, f"{path}.{name}")


def compare(
    old_input: dict[str, Any],
    new_input: dict[str, Any],
    old_output: dict[str, Any],
    new_output: dict[str, Any],
) -> list[Change]:
    """Every difference between two versions' input and output schemas (one item each)."""
    inputs, outputs = _Walker("input"), _Walker("output")
    inputs.walk(old_input, new_input, "inputs[]")
    outputs.walk(old_output, new_output, "results[]")
    return inputs.changes + outputs.changes


def major(version: str) -> int:
    """The MAJOR part of a semantic version."""
    return int(version.split(".", 1)[0])


def check_promotion(
    current_version: str,
    candidate_version: str,
    changes: list[Change],
) -> None:
    """Refuse a breaking change that is not a MAJOR bump.

    Raises:
        Conflict: naming every breaking change and the version the candidate would need.
    """
    breaking = [c for c in changes if c.breaking]
    if not breaking or major(candidate_version) > major(current_version):
        return
    lines = "\n".join(f"  - {c.direction} {c.path}: {c.message}" for c in breaking)
    raise Conflict(
        f"{candidate_version} breaks callers of {current_version} without a MAJOR version bump "
        f"(it would need {major(current_version) + 1}.0.0):\n{lines}",
        param="version",
    )
