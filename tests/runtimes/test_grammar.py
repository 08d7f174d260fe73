"""JSON grammars built from schemas: no raw control characters in strings, bad schemas are 400s."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelhost.errors import InvalidInput
from modelhost.runtimes.grammar import json_schema_gbnf, strict_strings

SUMMARY = {
    "type": "object",
    "properties": {"summary": {"type": "string", "minLength": 1, "maxLength": 8}},
    "required": ["summary"],
}


def test_string_characters_exclude_what_json_forbids() -> None:
    grammar = json_schema_gbnf(SUMMARY, param="schema")
    [char] = [line for line in grammar.splitlines() if line.startswith("char ::=")]
    assert char.startswith(r'char ::= [^"\\\x7F\x00-\x1F] |')
    # the reason: a raw newline inside a string is accepted by the loose rule and by no parser
    with pytest.raises(json.JSONDecodeError, match="control character"):
        json.loads('{"summary": "one\ntwo"}')


def test_strict_strings_leaves_other_rules_alone() -> None:
    loose = 'char ::= [^"\\\\] | "\\\\" ["\\\\/bfnrt]\nroot ::= "{" [^"\\\\] "}"'
    strict = strict_strings(loose)
    lines = strict.splitlines()
    assert lines[0] == 'char ::= [^"\\\\\\x7F\\x00-\\x1F] | "\\\\" ["\\\\/bfnrt]'
    assert lines[1] == 'root ::= "{" [^"\\\\] "}"'
    assert strict_strings(strict) == strict


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "nonsense"}, "not a valid JSON Schema"),
        ({"$ref": "#"}, "cannot be turned into a decoding grammar"),
        ({"properties": {"a": {"$ref": "#/$defs/missing"}}}, "cannot be turned into a decoding"),
        ("not a schema", "must be a JSON Schema object"),
        (None, "must be a JSON Schema object"),
    ],
)
def test_unusable_schemas_are_invalid_input_naming_the_param(schema: Any, words: str) -> None:
    with pytest.raises(InvalidInput, match=words) as caught:
        json_schema_gbnf(schema, param="response_format.json_schema.schema")
    assert caught.value.param == "response_format.json_schema.schema"
