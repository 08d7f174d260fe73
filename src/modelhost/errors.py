"""The one exception tree of modelhost.

Domain code raises these; ``modelhost.api.errors`` alone turns them into HTTP responses, the
CLI into one line and a non-zero exit. No HTTP status lives here: the mapping is a transport's
business.

::

    ModelhostError
    ├── RequestError                  the caller's request is wrong
    │   ├── InvalidInput              body, envelope or a field breaks the schema (param = path)
    │   ├── PayloadTooLarge           body over the model's max_request_bytes
    │   ├── UnsupportedMediaType      a body in a content type the endpoint does not read
    │   ├── Unauthenticated           no credential, or one that is unknown, expired or revoked
    │   ├── Forbidden                 a valid credential without the scope the action needs
    │   ├── RateLimited               over a request or token rate (retry_after, limit, reset)
    │   │   └── BudgetExceeded        the principal's cost budget for the period is spent
    │   ├── FeaturesUnavailable       an entity's stored features are missing or stale (names it)
    │   └── NotFound
    │       ├── ModelNotFound
    │       ├── VersionNotFound
    │       └── JobNotFound
    ├── ServiceError                  the service cannot answer now
    │   ├── ModelNotReady             loading, failed or unloaded (retry_after set while loading)
    │   └── InferenceTimeout          the runtime did not answer within the model's timeout
    │       └── QueueTimeout          no inference thread started the call in time (not the
    │                                 model's fault: circuit breakers ignore it)
    ├── ConfigError                   a manifest or setting is wrong (fields named in the message)
    │   └── ManifestError
    ├── RegistryError
    │   ├── Conflict                  the version exists already, or a stage change is illegal
    │   │   └── GateRefused           a promotion gate failed (golden set, schema compatibility)
    │   └── ArtifactIntegrityError    a stored file no longer matches its sha256
    ├── RuntimeFailure                a runtime failed while loading or predicting
    │   └── OutputMismatch            an LLM feature's answers missed its output schema, repairs too
    └── MissingDependencyError        an optional extra is not installed (names the extra)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

#: Parts of a pydantic error location that name a union member rather than a field.
_SCALAR_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})
_TAG = re.compile(r"[^A-Za-z0-9_]")


class ModelhostError(Exception):
    """Base of every error modelhost raises on purpose."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class RequestError(ModelhostError):
    """The caller's request is wrong; retrying it unchanged will fail again."""


class InvalidInput(RequestError):
    """The body, the envelope or one field breaks the model's input schema."""


class PayloadTooLarge(RequestError):
    """The request body is larger than the model accepts."""


class UnsupportedMediaType(RequestError):
    """The body's content type is not one the endpoint reads."""


class Unauthenticated(RequestError):
    """No credential, or one that is unknown, expired or revoked."""


class Forbidden(RequestError):
    """The credential is valid but lacks the scope the action needs."""


class RateLimited(RequestError):
    """Over a rate limit; ``retry_after`` seconds until the window lets the call through."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        limit: int,
        remaining: int = 0,
        reset: float = 0.0,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after
        self.limit = limit
        self.remaining = remaining
        self.reset = reset


class BudgetExceeded(RateLimited):
    """The principal's cost budget for the current period is spent."""


class FeaturesUnavailable(RequestError):
    """A request row's entity has no stored features, or they are stale, and the model's
    policy is to refuse rather than guess (``feature_store.on_missing: reject``)."""


class NotFound(RequestError):
    """Something named by the request does not exist."""


class ModelNotFound(NotFound):
    """No model of that name is registered."""


class VersionNotFound(NotFound):
    """The model exists but not the version, alias or stage asked for."""


class JobNotFound(NotFound):
    """No job or batch with that id."""


class ServiceError(ModelhostError):
    """The service cannot answer now; the same request may succeed later."""

    def __init__(
        self, message: str, *, param: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


class ModelNotReady(ServiceError):
    """The model version is loading, failed to load, or is not loaded."""


class InferenceTimeout(ServiceError):
    """The runtime did not answer within the model's timeout."""


class QueueTimeout(InferenceTimeout):
    """The call waited in the inference pool for the whole timeout and never started: the
    server was overloaded, not the model at fault (circuit breakers do not count it)."""


class ConfigError(ModelhostError):
    """A setting or a manifest is wrong."""


class ManifestError(ConfigError):
    """A ``modelhost.yaml`` is invalid; the message names each field and the fix."""


class RegistryError(ModelhostError):
    """The registry refused a change."""


class Conflict(RegistryError):
    """The change conflicts with what is registered (duplicate version, illegal stage)."""


class GateRefused(Conflict):
    """A version may not reach production: a promotion gate failed. ``report`` holds every
    gate's outcome (JSON-ready) for the caller to read."""

    def __init__(self, message: str, *, report: dict[str, object], param: str | None = None):
        super().__init__(message, param=param)
        self.report = report


class ArtifactIntegrityError(RegistryError):
    """A stored artifact no longer matches the sha256 recorded when it was pushed."""


class RuntimeFailure(ModelhostError):
    """A runtime failed while loading or predicting, through no fault of the caller."""


class OutputMismatch(RuntimeFailure):
    """A feature's model answered, but never in the output schema, after every repair
    attempt; the message holds the last validation error."""


class MissingDependencyError(ModelhostError):
    """An optional backend is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed: install the extra with `pip install 'modelhost[{extra}]'`"
        )
        self.package = package
        self.extra = extra


def describe(exc: BaseException) -> str:
    """``Type: message`` of a failure, at most 500 characters: what a webhook delivery, an
    alert or a promotion gate records about an attempt that raised."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {message}"[:500]


def _path(loc: Sequence[int | str]) -> str:
    """``("messages", 0, "content", "str")`` → ``messages[0].content`` (the parts pydantic
    adds to name a union's member, like ``str`` or ``function-after[...]``, are left out)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not (_TAG.search(part) or part in _SCALAR_TAGS):
            out += f".{part}" if out else part
    return out


def invalid_input(
    error: ValidationError,
    *,
    where: str | None = None,
    root: str = "body",
    kind: type[ModelhostError] = InvalidInput,
) -> ModelhostError:
    """The error to raise for a pydantic validation error: it names the first wrong field
    (``param``, a path like ``messages[0].content``; ``root`` when the whole value is wrong)
    and what is wrong with it, the messages of a union's alternatives joined with "or".

    Args:
        error: what pydantic raised.
        where: what was validated, to start the message with (a file, a golden set).
        root: the ``param`` of an error about the value as a whole.
        kind: the class to build (a ``ManifestError`` for a file the operator wrote).
    """
    errors = error.errors(include_url=False)
    param = _path(errors[0]["loc"]) or root
    messages: list[str] = []
    for item in errors:
        text = str(item["msg"]).removeprefix("Value error, ")  # pydantic's, on a validator's
        text = text[:1].lower() + text[1:]
        if (_path(item["loc"]) or root) == param and text not in messages:
            messages.append(text)
    prefix = f"{where}: " if where else ""
    return kind(f"{prefix}{param}: {', or '.join(messages)}", param=param)
