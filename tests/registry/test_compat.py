"""Schema compatibility under semver: what breaks callers, what does not."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modelhost.demo import iris_input_schema
from modelhost.errors import Conflict
from modelhost.registry.compat import Change, check_promotion, compare

OUTPUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["setosa", "versicolor", "virginica"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "score"],
}
INPUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "maxLength": 100},
        "lang": {"type": "string", "enum": ["en", "fr"]},
        "n": {"type": "integer", "minimum": 0},
    },
    "required": ["text"],
    "additionalProperties": False,
}


def _changed(
    *, input_: dict[str, Any] | None = None, output: dict[str, Any] | None = None
) -> list[Change]:
    return compare(INPUT, input_ or INPUT, OUTPUT, output or OUTPUT)


def _with(schema: dict[str, Any], path: tuple[str, ...], **values: Any) -> dict[str, Any]:
    """A deep copy of ``schema`` with ``values`` set on the sub-schema at ``path``."""
    copied: dict[str, Any] = copy.deepcopy(schema)
    node = copied
    for key in path:
        node = node[key]
    for key, value in values.items():
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    return copied


def test_identical_schemas_have_no_changes() -> None:
    assert _changed() == []
    iris = iris_input_schema()
    assert compare(iris, iris, OUTPUT, OUTPUT) == []


@pytest.mark.parametrize(
    ("input_", "path", "breaking"),
    [
        (_with(INPUT, (), required=["text", "lang"]), "inputs[].lang", True),
        (_with(INPUT, (), required=[]), "inputs[].text", False),
        (_with(INPUT, ("properties", "text"), maxLength=50), "inputs[].text", True),
        (_with(INPUT, ("properties", "text"), maxLength=500), "inputs[].text", False),
        (_with(INPUT, ("properties", "n"), minimum=1), "inputs[].n", True),
        (_with(INPUT, ("properties", "n"), type="number"), "inputs[].n", False),
        (_with(INPUT, ("properties", "lang"), enum=["en"]), "inputs[].lang", True),
        (_with(INPUT, ("properties", "lang"), enum=["en", "fr", "de"]), "inputs[].lang", False),
        (_with(INPUT, (), additionalProperties=None), "inputs[]", False),
        (_with(INPUT, ("properties",), n=None), "inputs[].n", True),  # closed object
    ],
)
def test_input_changes_break_when_they_refuse_what_was_accepted(
    input_: dict[str, Any], path: str, breaking: bool
) -> None:
    changes = _changed(input_=input_)
    assert [c.path for c in changes] == [path], changes
    assert changes[0].breaking is breaking, changes[0]
    assert changes[0].direction == "input"


@pytest.mark.parametrize(
    ("output", "path", "breaking"),
    [
        (_with(OUTPUT, ("properties",), score=None), "results[].score", True),
        (_with(OUTPUT, (), required=["label"]), "results[].score", True),
        (
            _with(OUTPUT, ("properties", "label"), enum=["setosa", "versicolor", "virginica", "x"]),
            "results[].label",
            True,
        ),
        (
            _with(OUTPUT, ("properties", "label"), enum=["setosa", "versicolor"]),
            "results[].label",
            False,
        ),
        (_with(OUTPUT, ("properties", "score"), maximum=0.5), "results[].score", False),
        (_with(OUTPUT, ("properties", "score"), type="string"), "results[].score", True),
    ],
)
def test_output_changes_break_when_they_promise_less(
    output: dict[str, Any], path: str, breaking: bool
) -> None:
    changes = _changed(output=output)
    assert [c.path for c in changes] == [path], changes
    assert changes[0].breaking is breaking, changes[0]


def test_a_new_output_field_is_harmless_and_a_changed_pattern_is_not_provable() -> None:
    extra = _with(OUTPUT, ("properties",), margin={"type": "number"})
    changes = _changed(output=extra)
    assert [(c.path, c.breaking) for c in changes] == [("results[].margin", False)]
    patterned = _with(INPUT, ("properties", "text"), pattern="^[a-z]+$")
    assert [c.breaking for c in _changed(input_=patterned)] == [True]


def test_a_breaking_change_needs_a_major_bump_and_says_what_breaks() -> None:
    changes = _changed(input_=_with(INPUT, (), required=["text", "lang"]))
    with pytest.raises(Conflict) as refused:
        check_promotion("1.4.2", "1.5.0", changes)
    message = refused.value.message
    assert "2.0.0" in message
    assert "inputs[].lang: is now required" in message
    check_promotion("1.4.2", "2.0.0", changes)  # a MAJOR bump may break
    harmless = _changed(input_=_with(INPUT, (), required=[]))
    check_promotion("1.4.2", "1.4.3", harmless)
    assert str(harmless[0]) == "[ok] input inputs[].text: is no longer required"
