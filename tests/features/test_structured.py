"""Tests of modelhost.features.structured: outputs match their schema or the call fails."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from jsonschema.protocols import Validator

from modelhost.errors import ConfigError, ManifestError, RuntimeFailure
from modelhost.features.structured import (
    generate_valid,
    output_validator,
    parse_output,
    repair_message,
    response_format_for,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "urgency": {"enum": ["low", "medium", "high"]},
        "summary": {"type": "string"},
    },
    "required": ["urgency", "summary"],
    "additionalProperties": False,
}
VALID = '{"urgency": "high", "summary": "printer on fire"}'
MESSAGES = [{"role": "system", "content": "triage"}, {"role": "user", "content": "ticket"}]


@pytest.fixture
def validator() -> Validator:
    return output_validator(SCHEMA)


class ScriptedModel:
    """Stands for the model: answers with the given texts in turn and records each call."""

    def __init__(self, answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []

    async def __call__(self, messages: list[dict[str, str]], parameters: dict[str, Any]) -> str:
        self.calls.append((messages, parameters))
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


def test_response_format_is_the_openai_json_schema_shape() -> None:
    fmt = response_format_for(SCHEMA, "ticket triage/v2")

    assert fmt == {
        "type": "json_schema",
        "json_schema": {"name": "ticket_triage_v2", "schema": SCHEMA, "strict": True},
    }
    assert fmt["json_schema"]["schema"] is not SCHEMA


@pytest.mark.parametrize(
    "text",
    [
        VALID,
        f"```json\n{VALID}\n```",
        f"Sure! Here is the answer:\n```\n{VALID}\n```\nAnything else?",
        f"The ticket [1] is urgent. {VALID} Hope this helps {{:)}}",
        f"  {VALID}\n",
    ],
)
def test_parse_output_finds_the_json_in_the_text(text: str, validator: Validator) -> None:
    assert parse_output(text, validator) == (
        {"urgency": "high", "summary": "printer on fire"},
        None,
    )


def test_parse_output_names_the_path_of_an_invalid_value(validator: Validator) -> None:
    value, error = parse_output('{"urgency": "soon", "summary": "x"}', validator)

    assert value is None
    assert error == "$.urgency: 'soon' is not one of ['low', 'medium', 'high']"


def test_parse_output_reports_several_errors_briefly(validator: Validator) -> None:
    _, error = parse_output('{"urgency": "soon", "summary": 3, "x": 1, "y": 2}', validator)

    assert error is not None
    assert "$.urgency" in error
    assert "$.summary: 3 is not of type 'string'" in error
    assert error.count(";") <= 3


@pytest.mark.parametrize("text", ["", "I cannot help with that.", "{not json", "[[[[[[[["])
def test_parse_output_without_json(text: str, validator: Validator) -> None:
    assert parse_output(text, validator) == (None, "no JSON value found in the answer")


def test_output_validator_checks_formats() -> None:
    validator = output_validator({"type": "string", "format": "date"})

    assert parse_output('"2026-11-22"', validator) == ("2026-11-22", None)
    assert parse_output('"next tuesday"', validator) == (
        None,
        "$: 'next tuesday' is not a 'date'",
    )


def test_output_validator_refuses_an_invalid_schema() -> None:
    with pytest.raises(ManifestError) as caught:
        output_validator({"type": "objekt"})
    assert caught.value.param == "output_schema"


def test_repair_message_names_the_error_and_the_schema() -> None:
    message = repair_message("$.urgency: 'soon' is not one of ['low']", SCHEMA)

    assert message["role"] == "user"
    assert "$.urgency: 'soon' is not one of ['low']" in message["content"]
    assert '"required":["urgency","summary"]' in message["content"]
    assert "only a JSON value" in message["content"]


@pytest.mark.asyncio
async def test_a_valid_first_answer_takes_one_call(validator: Validator) -> None:
    model = ScriptedModel([f"Here you go: {VALID}"])

    outcome = await generate_valid(
        model, MESSAGES, schema=SCHEMA, validator=validator, retries=2, constrained=False
    )

    assert outcome.value == {"urgency": "high", "summary": "printer on fire"}
    assert outcome.attempts == 1
    assert outcome.errors == ()
    assert outcome.texts == (f"Here you go: {VALID}",)
    assert model.calls == [(MESSAGES, {})]


@pytest.mark.asyncio
async def test_two_failures_then_success_repairs_with_the_error(validator: Validator) -> None:
    bad = '{"urgency": "soon", "summary": "x"}'
    model = ScriptedModel(["no idea", bad, VALID])

    outcome = await generate_valid(
        model, MESSAGES, schema=SCHEMA, validator=validator, retries=2, constrained=False
    )

    assert outcome.attempts == 3
    assert outcome.errors == (
        "no JSON value found in the answer",
        "$.urgency: 'soon' is not one of ['low', 'medium', 'high']",
    )
    assert outcome.texts == ("no idea", bad, VALID)
    last_chat = model.calls[2][0]
    assert last_chat[:2] == MESSAGES
    assert last_chat[2] == {"role": "assistant", "content": bad}
    assert last_chat[3]["role"] == "user"
    assert "'soon' is not one of" in last_chat[3]["content"]
    assert len(last_chat) == 4


@pytest.mark.asyncio
async def test_never_valid_raises_after_one_plus_retries_calls(validator: Validator) -> None:
    model = ScriptedModel(['{"urgency": "soon", "summary": "x"}'])

    with pytest.raises(RuntimeFailure, match=r"after 3 attempts: \$\.urgency") as caught:
        await generate_valid(
            model, MESSAGES, schema=SCHEMA, validator=validator, retries=2, constrained=False
        )

    assert len(model.calls) == 3
    assert caught.value.param == "output"
    assert len(caught.value.__notes__) == 3
    assert caught.value.__notes__[0].startswith("attempt 1: $.urgency")


@pytest.mark.asyncio
async def test_constrained_passes_the_response_format_each_call(validator: Validator) -> None:
    model = ScriptedModel(["oops", VALID])

    await generate_valid(
        model,
        MESSAGES,
        schema=SCHEMA,
        validator=validator,
        retries=1,
        constrained=True,
        name="triage",
    )

    expected = {"response_format": response_format_for(SCHEMA, "triage")}
    assert [parameters for _, parameters in model.calls] == [expected, expected]


@pytest.mark.asyncio
async def test_zero_retries_means_one_call(validator: Validator) -> None:
    model = ScriptedModel(["oops"])

    with pytest.raises(RuntimeFailure, match="after 1 attempts"):
        await generate_valid(
            model, MESSAGES, schema=SCHEMA, validator=validator, retries=0, constrained=True
        )
    assert len(model.calls) == 1


@pytest.mark.asyncio
async def test_negative_retries_is_a_config_error(validator: Validator) -> None:
    with pytest.raises(ConfigError):
        await generate_valid(
            ScriptedModel([VALID]),
            MESSAGES,
            schema=SCHEMA,
            validator=validator,
            retries=-1,
            constrained=False,
        )


@pytest.mark.asyncio
async def test_errors_from_the_model_call_propagate(validator: Validator) -> None:
    async def broken(messages: list[dict[str, str]], parameters: dict[str, Any]) -> str:
        raise TimeoutError("model timed out")

    with pytest.raises(TimeoutError):
        await generate_valid(
            broken, MESSAGES, schema=SCHEMA, validator=validator, retries=3, constrained=False
        )
