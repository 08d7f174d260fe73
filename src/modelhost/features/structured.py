"""Feature outputs that match their JSON Schema: constrained decoding, else bounded repair.

A feature declares its output as a JSON Schema. Where the model server can constrain decoding
(llama.cpp turns ``response_format`` into a grammar; OpenAI-compatible upstreams accept the same
field), the model cannot produce anything else. Where it cannot, or a runtime ignores the field,
the text is parsed and validated here, and the model is asked to fix its answer a bounded
number of times, each time told what was wrong. A feature never returns an unvalidated value.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema
import orjson
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator

from modelhost.errors import ConfigError, ManifestError, OutputMismatch

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_CODE_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n(.*?)```", re.DOTALL)
# How many parsed candidates parse_output validates, and how many starts it tries, per text.
_MAX_CANDIDATES = 16
_MAX_STARTS = 256
# Each error quoted back to the model or to an operator is cut to this many characters.
_MAX_ERROR_CHARS = 300
_MORE_ERRORS_SHOWN = 2


class ModelCall(Protocol):
    """One call to the model: the chat and extra parameters in, the generated text out.

    ``parameters`` holds ``response_format`` when decoding is constrained; the callee merges it
    into the feature's own parameters.
    """

    async def __call__(self, messages: list[dict[str, str]], parameters: dict[str, Any], /) -> str:
        """The model's text for ``messages``."""
        ...


@dataclass(frozen=True, slots=True)
class StructuredOutcome:
    """A valid output and how it was reached."""

    #: The output, valid against the schema.
    value: Any
    #: How many times the model was called (1 when the first answer was valid).
    attempts: int
    #: Why each failed attempt was rejected, in order.
    errors: tuple[str, ...]
    #: The model's text for every attempt, in order; the last one holds :attr:`value`.
    texts: tuple[str, ...]


def output_validator(schema: dict[str, Any], *, param: str = "output_schema") -> Validator:
    """A Draft 2020-12 validator for a feature's output schema.

    ``format`` keywords (``date``, ``email``, ...) are checked, not just annotations: a feature
    that declares a date should get one.

    Args:
        schema: the output JSON Schema.
        param: the spec field to name when the schema itself is invalid.

    Raises:
        ManifestError: the schema is not a valid Draft 2020-12 schema.
    """
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ManifestError(f"invalid JSON Schema: {exc.message}", param=param) from None
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def response_format_for(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """The OpenAI ``response_format`` that constrains decoding to ``schema``.

    Accepted by the llama.cpp runtime (which builds a grammar from the schema) and by
    OpenAI-compatible upstreams. OpenAI's strict mode also wants ``additionalProperties: false``
    and every property required; that is the schema author's choice, not changed here.

    Args:
        schema: the output JSON Schema (copied, so later changes to it do not leak in).
        name: the feature's name; characters OpenAI refuses become ``_``, cut to 64.
    """
    safe_name = _NAME_UNSAFE.sub("_", name).strip("_")[:64] or "output"
    return {
        "type": "json_schema",
        "json_schema": {"name": safe_name, "schema": copy.deepcopy(schema), "strict": True},
    }


def _clip(text: str) -> str:
    """``text`` cut to a length fit for an error message."""
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def _describe(errors: Sequence[ValidationError]) -> str:
    """The most relevant validation error with its JSON path, then a couple of others."""
    best = best_match(errors)
    assert best is not None  # errors is never empty here
    parts = [_clip(f"{best.json_path}: {best.message}")]
    others = [error for error in errors if error is not best]
    parts.extend(_clip(f"{e.json_path}: {e.message}") for e in others[:_MORE_ERRORS_SHOWN])
    hidden = len(others) - _MORE_ERRORS_SHOWN
    if hidden > 0:
        parts.append(f"and {hidden} more")
    return "; ".join(parts)


def _candidates(text: str) -> list[Any]:
    """JSON values found in ``text``, most likely first.

    The whole text, then each fenced code block, then each balanced top-level object or array
    in reading order (``raw_decode`` from every ``{``/``[`` not inside an earlier value).
    """
    decoder = json.JSONDecoder()
    found: list[Any] = []
    for chunk in [text, *_CODE_FENCE.findall(text)]:
        try:
            found.append(json.loads(chunk))
        except (ValueError, RecursionError):
            continue
    position = 0
    for _ in range(_MAX_STARTS):
        if len(found) >= _MAX_CANDIDATES:
            break
        starts = [i for i in (text.find("{", position), text.find("[", position)) if i >= 0]
        if not starts:
            break
        start = min(starts)
        try:
            value, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            position = start + 1
            continue
        found.append(value)
        position = end
    return found


def parse_output(text: str, validator: Validator) -> tuple[Any, str | None]:
    """The JSON value in a model's text, validated.

    Code fences (`````json ... `````) and prose around the value are tolerated. When the text
    holds several candidates (a ``[1]`` footnote before the object, say), the first one that
    validates wins; when none does, the first one's errors are reported.

    Args:
        text: the model's answer.
        validator: from :func:`output_validator`.

    Returns:
        ``(value, None)`` when valid, else ``(None, error)`` with a short readable error such
        as ``"$.urgency: 'soon' is not one of ['low', 'medium', 'high']"``.
    """
    candidates = _candidates(text)
    if not candidates:
        return None, "no JSON value found in the answer"
    first_errors: list[ValidationError] | None = None
    for value in candidates:
        errors = list(validator.iter_errors(value))
        if not errors:
            return value, None
        if first_errors is None:
            first_errors = errors
    assert first_errors is not None
    return None, _describe(first_errors)


def repair_message(error: str, schema: dict[str, Any]) -> dict[str, str]:
    """The user message that asks the model to answer again, with only valid JSON.

    Args:
        error: what was wrong with the last answer (from :func:`parse_output`).
        schema: the output JSON Schema, quoted compactly.
    """
    compact = orjson.dumps(schema).decode()
    return {
        "role": "user",
        "content": (
            f"Your previous answer was rejected: {_clip(error)}\n"
            "Answer again with only a JSON value that matches this JSON Schema, "
            f"with no other text:\n{compact}"
        ),
    }


async def generate_valid(
    call: ModelCall,
    messages: Sequence[dict[str, str]],
    *,
    schema: dict[str, Any],
    validator: Validator,
    retries: int,
    constrained: bool,
    name: str = "feature_output",
) -> StructuredOutcome:
    """Call the model until its answer matches ``schema``, at most ``1 + retries`` times.

    After a failed attempt the model sees its own answer and a :func:`repair_message`. Only the
    latest failed answer is kept in the chat, so the prompt does not grow with every retry.
    Errors raised by ``call`` (timeouts, a model not ready) propagate untouched.

    Args:
        call: the model.
        messages: the chat, e.g. from ``RenderedFeaturePrompt.messages``.
        schema: the output JSON Schema.
        validator: from :func:`output_validator`.
        retries: repair attempts after the first call.
        constrained: pass ``response_format`` so the runtime constrains decoding.
        name: the schema's name in ``response_format``.

    Raises:
        ConfigError: ``retries`` is negative.
        OutputMismatch: no answer matched; the message holds the last error and each
            attempt's error is an exception note.
    """
    if retries < 0:
        raise ConfigError("retries must be 0 or more", param="retries")
    chat = list(messages)
    errors: list[str] = []
    texts: list[str] = []
    for attempt in range(1, retries + 2):
        parameters = {"response_format": response_format_for(schema, name)} if constrained else {}
        text = await call(list(chat), parameters)
        texts.append(text)
        value, error = parse_output(text, validator)
        if error is None:
            return StructuredOutcome(
                value=value, attempts=attempt, errors=tuple(errors), texts=tuple(texts)
            )
        errors.append(error)
        chat = [*messages, {"role": "assistant", "content": text}, repair_message(error, schema)]
    failure = OutputMismatch(
        f"feature output did not match its schema after {len(texts)} attempts: {errors[-1]}",
        param="output",
    )
    for attempt, error in enumerate(errors, start=1):
        failure.add_note(f"attempt {attempt}: {error}")
    raise failure
