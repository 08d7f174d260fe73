from __future__ import annotations

import pytest

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
