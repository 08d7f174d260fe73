from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelhost import errors


def test_missing_dependency_names_the_extra() -> None:
    exc = errors.MissingDependencyError("llama-cpp-python", "llm")
    assert "pip install 'modelhost[llm]'" in exc.message
    assert isinstance(exc, errors.ModelhostError)


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (errors.InvalidInput, errors.RequestError),
        (errors.ModelNotFound, errors.NotFound),
        (errors.JobNotFound, errors.NotFound),
        (errors.ModelNotReady, errors.ServiceError),
        (errors.InferenceTimeout, errors.ServiceError),
        (errors.ManifestError, errors.ConfigError),
        (errors.ArtifactIntegrityError, errors.RegistryError),
    ],
)
def test_tree_matches_its_drawing(cls: type[Exception], base: type[Exception]) -> None:
    assert issubclass(cls, base)
    assert issubclass(cls, errors.ModelhostError)
    assert cls.__name__ in (errors.__doc__ or "")


def test_service_errors_carry_retry_after() -> None:
    exc = errors.ModelNotReady("loading", retry_after=2)
    assert exc.retry_after == 2
    assert exc.param is None


def test_describe_names_the_type_and_the_message_in_at_most_500_characters() -> None:
    assert errors.describe(ValueError("bad")) == "ValueError: bad"
    assert errors.describe(TimeoutError()) == "TimeoutError: TimeoutError"
    assert errors.describe(errors.InvalidInput("no", param="x")) == "InvalidInput: no"
    assert len(errors.describe(RuntimeError("x" * 1000))) == 500


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)
    value: int | str | None = None

    @field_validator("name")
    @classmethod
    def _no_spaces(cls, name: str) -> str:
        if " " in name:
            raise ValueError("Spaces are not allowed")
        return name


def _error(data: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        _Item.model_validate(data)
    return caught.value


def test_invalid_input_names_the_first_wrong_field_as_a_path() -> None:
    exc = errors.invalid_input(_error({"name": "a", "tags": ["ok", 3]}))
    assert isinstance(exc, errors.InvalidInput)
    assert exc.param == "tags[1]"
    assert exc.message == "tags[1]: input should be a valid string"


def test_invalid_input_joins_a_unions_alternatives_and_drops_their_tags() -> None:
    exc = errors.invalid_input(_error({"name": "a", "value": [1]}))
    assert exc.param == "value"
    assert exc.message.startswith("value: input should be a valid integer, or ")


def test_invalid_input_reads_validator_messages_and_takes_where_root_and_kind() -> None:
    exc = errors.invalid_input(
        _error({"name": "a b"}), where="item.yaml", kind=errors.ManifestError
    )
    assert isinstance(exc, errors.ManifestError)
    assert exc.message == "item.yaml: name: spaces are not allowed"
    whole = errors.invalid_input(_error([1]), root="item")
    assert whole.param == "item"
    assert whole.message.startswith("item: input should be")
