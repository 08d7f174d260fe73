"""Input and parameter validation against a version's compiled JSON Schemas, with errors
that name the path of the first wrong field (``inputs[0].sepal_length``)."""

from __future__ import annotations

from typing import Any

from fastjsonschema import JsonSchemaValueException

from modelhost.errors import InvalidInput
from modelhost.serving.models import Validator


def describe_error(prefix: str, exc: JsonSchemaValueException) -> tuple[str, str]:
    """The param path and a sentence naming it, from a fastjsonschema error."""
    name = exc.name or "data"
    param = prefix + name.removeprefix("data")
    detail = (exc.message or "is invalid").removeprefix(name).strip()
    if exc.rule == "required" and isinstance(exc.value, dict):
        required = (exc.definition or {}).get("required", [])
        missing = [name for name in required if name not in exc.value]
        if missing:
            param = f"{param}.{missing[0]}"
            return param, f"{param} is required"
    return param, f"{param} {detail}"


def check_value(validator: Validator | None, value: Any, prefix: str) -> None:
    """Validate ``value`` with a compiled JSON Schema (None: nothing to check).

    Raises:
        InvalidInput: naming the path of the first wrong field under ``prefix``.
    """
    if validator is None:
        return
    try:
        validator(value)
    except JsonSchemaValueException as exc:
        param, message = describe_error(prefix, exc)
        raise InvalidInput(message, param=param) from None
