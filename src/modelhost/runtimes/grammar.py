"""JSON grammars for constrained decoding, built from a JSON Schema and checked first.

llama-cpp-python's schema-to-grammar converter defines a JSON string character as
``[^"\\]``: any character but a quote or a backslash, control characters included. JSON
forbids raw control characters inside strings (RFC 8259 §7), so a model that emits a newline
inside a string value (a summary that copies a multi-line thread, say) finishes a text the
grammar accepted and no JSON parser reads: ``"no JSON value found"``, with ``finish_reason:
stop``, however large the budget. llama.cpp's own converter and llama-cpp-python's generic
``JSON_GBNF`` exclude ``\\x00-\\x1F`` and ``\\x7F``; grammars built here do the same.

The converter also raises bare ``AssertionError``/``ValueError``/``KeyError`` on schemas it
cannot read (``{"type": "nonsense"}``, a ``$ref`` that loops); those become
:class:`~modelhost.errors.InvalidInput` naming the problem before any decoding starts.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from modelhost.errors import InvalidInput

#: The converter's string character rule, and the same rule without control characters.
_LOOSE_CHAR = r'char ::= [^"\\] |'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def json_schema_gbnf(schema: Any, *, param: str) -> str:
    """The GBNF grammar text of ``schema``, whose strings hold no raw control characters.

    Args:
        schema: a JSON Schema object.
        param: the request field to name when the schema is not usable.

    Raises:
        InvalidInput: ``schema`` is not a valid JSON Schema, or one no grammar can be built
            from.
    """
    if not isinstance(schema, dict):
        raise InvalidInput(f"{param} must be a JSON Schema object", param=param)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        message = f"{param} is not a valid JSON Schema: {exc.message}"
        raise InvalidInput(message, param=param) from None
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        text = str(json_schema_to_gbnf(json.dumps(schema)))
    except (AssertionError, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        detail = str(exc) or type(exc).__name__
        raise InvalidInput(
            f"{param} cannot be turned into a decoding grammar: {detail}", param=param
        ) from None
    return strict_strings(text)


def strict_strings(grammar: str) -> str:
    """``grammar`` with the converter's string character rule made JSON's (no control
    characters); grammars without that rule are returned unchanged."""
    return "\n".join(
        _STRICT_CHAR + line[len(_LOOSE_CHAR) :] if line.startswith(_LOOSE_CHAR) else line
        for line in grammar.split("\n")
    )
