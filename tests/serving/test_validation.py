"""Validation errors name the path of the first wrong field."""

from __future__ import annotations

import fastjsonschema
import pytest

from modelhost.errors import InvalidInput
from modelhost.serving.validation import check_value

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "maximum": 5}, "tags": {"type": "array"}},
    "required": ["n", "tags"],
}


def test_a_missing_field_is_named() -> None:
    validator = fastjsonschema.compile(SCHEMA)
    with pytest.raises(InvalidInput) as caught:
        check_value(validator, {"n": 1}, "inputs[2]")
    assert caught.value.param == "inputs[2].tags"
    assert caught.value.message == "inputs[2].tags is required"


def test_a_wrong_value_is_named_with_the_rule() -> None:
    validator = fastjsonschema.compile(SCHEMA)
    with pytest.raises(InvalidInput) as caught:
        check_value(validator, {"n": 9, "tags": []}, "inputs[0]")
    assert caught.value.param == "inputs[0].n"
    assert "smaller than or equal to 5" in caught.value.message


def test_no_validator_accepts_anything() -> None:
    check_value(None, object(), "parameters")
    check_value(fastjsonschema.compile(SCHEMA), {"n": 3, "tags": ["a"]}, "inputs[0]")
