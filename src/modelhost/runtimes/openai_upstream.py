"""Any OpenAI-compatible server as the model: vLLM, Ollama, llama-cpp-python's server, a
hosted API.

The version directory holds no weights, only the manifest: ``options`` name the server
(``base_url``), the model it serves (``model``) and where the key comes from (``api_key_env``).
Inputs and results have the shapes of the ``llamacpp`` runtime, so a local model and an
upstream one are interchangeable behind a deployment, a fallback list or a cascade.

Errors are sorted by whose fault they are: an upstream 400/413/422 is the caller's input
(:class:`InvalidInput` with the upstream's message); a 401/403/404/429/5xx, a refused
connection or a malformed answer is the model's (:class:`RuntimeFailure`, which fallbacks and
circuit breakers act on); a client timeout is :class:`InferenceTimeout`. The API key never
appears in metadata or in an error message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from modelhost.errors import (
    ConfigError,
    InferenceTimeout,
    InvalidInput,
    ManifestError,
    MissingDependencyError,
    ModelhostError,
    RuntimeFailure,
)
from modelhost.inference import Usage
from modelhost.manifest import ModelManifest
from modelhost.runtimes.base import Lane, Prediction, Runtime, RuntimeContext, StreamChunk

#: Request parameters passed to the upstream as they are, when given.
PASSED_PARAMETERS = ("max_tokens", "temperature", "top_p", "seed", "stop")
#: The key sent when the manifest names none: local servers ignore it, the SDK needs one.
NO_KEY = "not-needed"
#: Upstream statuses that blame the request's content rather than the upstream.
_INPUT_STATUSES = frozenset({400, 413, 422})
_SHAPE = 'an input is a string, {"prompt": str} or {"messages": [...]}'
_MAX_MESSAGE = 500


class UpstreamOptions(BaseModel):
    """The ``options`` of an ``openai-upstream`` manifest."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(pattern=r"^https?://\S+$", max_length=2048)
    """The server's OpenAI API root, e.g. ``http://127.0.0.1:8001/v1``."""
    model: str = Field(min_length=1, max_length=256)
    """The model name the upstream serves (sent as ``model`` in every request)."""
    api_key: SecretStr | None = None
    """A literal key; discouraged, since the manifest is stored and shown: use ``api_key_env``."""
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Name of the environment variable (of the serving process) that holds the key."""
    timeout_s: float = Field(default=60.0, gt=0)
    """Seconds one upstream call may take before it is an inference timeout."""
    max_retries: int = Field(default=0, ge=0, le=10)
    """Retries by the SDK itself; 0 because fallbacks and breakers handle failover."""
    endpoint: Literal["chat", "completions"] = "chat"
    """Where ``{"prompt"}`` inputs go: ``chat`` (as one user message) or ``completions``.
    ``{"messages"}`` inputs always go to chat."""
    json_schema_as: Literal["json_schema", "json_object"] = "json_schema"
    """How a ``json_schema`` response format is sent: as is (OpenAI, vLLM, Ollama), or as
    ``{"type": "json_object", "schema": ...}`` for servers that only know that form
    (llama-cpp-python's server)."""
    stream_usage: bool = True
    """Ask for token usage at the end of a stream (``stream_options.include_usage``); turn
    off for a server that refuses the field."""
    check_model: bool = True
    """At load, fail unless the upstream's model list (when it has one) names ``model``."""

    @model_validator(mode="after")
    def _one_key_source(self) -> UpstreamOptions:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("set 'api_key_env' or 'api_key', not both")
        return self

    @classmethod
    def of(cls, manifest: ModelManifest) -> UpstreamOptions:
        """The validated options of ``manifest``.

        Raises:
            ManifestError: naming each wrong option and what it should be.
        """
        try:
            return cls.model_validate(manifest.options)
        except ValidationError as exc:
            raise ManifestError(f"{manifest.ref}: {_describe(exc)}", param="options") from None

    def key(self) -> str:
        """The API key to send.

        Raises:
            ConfigError: ``api_key_env`` names a variable that is not set.
        """
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env is None:
            return NO_KEY
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ConfigError(
                f"environment variable {self.api_key_env} (named by 'options.api_key_env') is "
                "not set: export the upstream's API key in it before the model loads",
                param="options.api_key_env",
            )
        return value

    def public_url(self) -> str:
        """``base_url`` without any ``user:password@`` part, fit for messages and metadata."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = ".".join(["options", *(str(p) for p in item["loc"])])
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            msg = "is required by runtime openai-upstream: add it to modelhost.yaml"
        elif item["type"] == "extra_forbidden":
            msg = "is not an option of runtime openai-upstream: remove it or check its spelling"
        lines.append(f"field '{loc}': {msg}")
    return "; ".join(lines)


def _response_format(fmt: Any, send_schema_as: str) -> dict[str, Any]:
    """The request's ``response_format``, checked, in the form the upstream understands."""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return dict(fmt)
    if kind != "json_schema":
        raise InvalidInput(
            "response_format.type must be 'text', 'json_object' or 'json_schema'",
            param="response_format.type",
        )
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(schema, dict):
        raise InvalidInput(
            "response_format.json_schema.schema must be a JSON Schema object",
            param="response_format.json_schema.schema",
        )
    if send_schema_as == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "output", **spec}}


def _status_message(exc: Any) -> str:
    """The upstream's own words from an error response (OpenAI or FastAPI shaped)."""
    body = exc.body
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if value:
                return str(value)[:_MAX_MESSAGE]
    return str(exc.message)[:_MAX_MESSAGE]


def _usage(reported: Any) -> Usage | None:
    if reported is None:
        return None
    return Usage(
        input_tokens=int(reported.prompt_tokens or 0),
        output_tokens=int(reported.completion_tokens or 0),
    )


class OpenAIUpstreamRuntime(Runtime):
    """A client of one upstream model; calls run concurrently (the upstream queues them).

    Options are those of :class:`UpstreamOptions`. Parameters ``max_tokens``,
    ``temperature``, ``top_p``, ``seed``, ``stop`` and ``response_format`` are passed on when
    given; anything else the upstream decides.
    """

    supports_streaming = True

    @property
    def lane(self) -> Lane:
        """Calls wait on the upstream, not the CPU: they run in the remote lane."""
        return Lane.REMOTE

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self._client: Any = None
        self._options: UpstreamOptions | None = None
        self._secret = ""

    # -- lifecycle --------------------------------------------------------------------------

    def load(self) -> None:
        """Build the client and check that the upstream answers (and serves ``model``).

        Raises:
            MissingDependencyError: the ``upstream`` extra (the openai SDK) is not installed.
            ManifestError: an option is wrong.
            ConfigError: the key's environment variable is not set.
            RuntimeFailure: the upstream cannot be reached, refuses the key, or does not
                serve the model; the message names the URL.
        """
        try:
            import openai
        except ImportError:
            raise MissingDependencyError("openai", "upstream") from None
        self.unload()
        options = UpstreamOptions.of(self.manifest)
        self._options = options
        self._secret = options.key()
        client = openai.OpenAI(
            base_url=options.base_url,
            api_key=self._secret,
            timeout=options.timeout_s,
            max_retries=options.max_retries,
        )
        try:
            self._check_upstream(client, options)
        except BaseException:
            client.close()
            raise
        self._client = client

    def _check_upstream(self, client: Any, options: UpstreamOptions) -> None:
        import openai

        try:
            served = [model.id for model in client.models.list()]
        except openai.NotFoundError:
            served = []  # reachable, but it has no model list: nothing more to check
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            raise self._failure(exc, at_load=True) from None
        if options.check_model and served and options.model not in served:
            raise RuntimeFailure(
                f"{self.manifest.ref}: upstream {options.public_url()} does not serve model "
                f"{options.model!r}; it serves {', '.join(served[:10])} (set 'options.model' "
                "to one of them, or 'options.check_model: false')"
            )

    def unload(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            self._client.close()
        self._client = None

    def metadata(self) -> dict[str, Any]:
        """Where the model lives and how it is called; never the key."""
        if self._options is None:
            return {}
        options = self._options
        facts: dict[str, Any] = {
            "base_url": options.public_url(),
            "upstream_model": options.model,
            "endpoint": options.endpoint,
            "timeout_s": options.timeout_s,
            "max_retries": options.max_retries,
        }
        if options.api_key_env is not None:
            facts["api_key_env"] = options.api_key_env
        return facts

    # -- requests ---------------------------------------------------------------------------

    def _loaded(self) -> tuple[Any, UpstreamOptions]:
        if self._client is None or self._options is None:
            raise RuntimeFailure(f"{self.manifest.ref} is not loaded")
        return self._client, self._options

    def _request(self, item: Any, parameters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The endpoint (``chat`` or ``completions``) and body of one input's call."""
        _, options = self._loaded()
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            raise InvalidInput(_SHAPE, param="inputs")
        body = {k: parameters[k] for k in PASSED_PARAMETERS if parameters.get(k) is not None}
        if parameters.get("response_format"):
            body["response_format"] = _response_format(
                parameters["response_format"], options.json_schema_as
            )
        if "messages" in item:
            if not isinstance(item["messages"], list) or not item["messages"]:
                raise InvalidInput("messages must be a non-empty list", param="inputs.messages")
            return "chat", {"messages": item["messages"], **body}
        prompt = item.get("prompt")
        if not isinstance(prompt, str):
            raise InvalidInput(_SHAPE, param="inputs")
        if options.endpoint == "chat":
            return "chat", {"messages": [{"role": "user", "content": prompt}], **body}
        if "response_format" in body:
            raise InvalidInput(
                "response_format needs a chat input: this model sends prompts to the "
                "completions endpoint, which does not enforce it",
                param="response_format",
            )
        return "completions", {"prompt": prompt, **body}

    def _call(self, endpoint: str, body: dict[str, Any], **extra: Any) -> Any:
        """One upstream call, its errors translated."""
        import openai

        client, options = self._loaded()
        api = client.chat.completions if endpoint == "chat" else client.completions
        try:
            return api.create(model=options.model, **body, **extra)
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            raise self._failure(exc) from None

    def predict(self, inputs: list[Any], parameters: dict[str, Any]) -> Prediction:
        """One ``{"text", "finish_reason"}`` per input, one upstream call each, in order."""
        requests = [self._request(item, parameters) for item in inputs]
        results: list[Any] = []
        usage = Usage()
        for endpoint, body in requests:
            out = self._call(endpoint, body)
            if not out.choices:
                raise RuntimeFailure(f"{self.manifest.ref}: the upstream answered no choices")
            choice = out.choices[0]
            text = choice.message.content if endpoint == "chat" else choice.text
            results.append({"text": text or "", "finish_reason": choice.finish_reason})
            usage.add(_usage(out.usage) or Usage())
        return Prediction(results=results, usage=usage)

    def stream(self, item: Any, parameters: dict[str, Any]) -> Iterator[StreamChunk]:
        """Yield text pieces as the upstream sends them; the last chunk carries finish reason
        and usage (the upstream's, else input 0 and one output token per piece)."""
        import openai

        endpoint, body = self._request(item, parameters)
        extra: dict[str, Any] = {"stream": True}
        if self._loaded()[1].stream_usage:
            extra["stream_options"] = {"include_usage": True}
        produced = 0
        finish: str | None = None
        reported: Usage | None = None
        with self._call(endpoint, body, **extra) as chunks:
            try:
                for chunk in chunks:
                    reported = _usage(getattr(chunk, "usage", None)) or reported
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    finish = choice.finish_reason or finish
                    piece = choice.delta.content if endpoint == "chat" else choice.text
                    if piece:
                        produced += 1
                        yield StreamChunk(text=piece)
            except (openai.OpenAIError, httpx.HTTPError) as exc:
                raise self._failure(exc) from None
        yield StreamChunk(
            text="",
            finish_reason=finish or "stop",
            usage=reported or Usage(input_tokens=0, output_tokens=produced),
        )

    # -- errors -----------------------------------------------------------------------------

    def _failure(self, exc: Exception, *, at_load: bool = False) -> ModelhostError:
        """The modelhost error an SDK or transport error stands for."""
        import openai

        options = self._options
        if options is None:
            return RuntimeFailure(f"{self.manifest.ref}: {self._scrub(str(exc))}")
        where = f"{self.manifest.ref}: upstream {options.public_url()}"
        if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
            return InferenceTimeout(f"{where} did not answer within {options.timeout_s:g} s")
        if isinstance(exc, openai.APIStatusError):
            said = self._scrub(_status_message(exc))
            if exc.status_code in _INPUT_STATUSES and not at_load:
                return InvalidInput(f"the upstream model refused the input: {said}", param="inputs")
            if exc.status_code in (401, 403):
                return RuntimeFailure(
                    f"{where} refused the API key ({exc.status_code}): {said}; check "
                    "'options.api_key_env'"
                )
            return RuntimeFailure(f"{where} answered {exc.status_code}: {said}")
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        if isinstance(exc, openai.APIConnectionError | httpx.TransportError):
            return RuntimeFailure(f"{where} cannot be reached: {self._scrub(f'{exc}{cause}')}")
        return RuntimeFailure(f"{where} failed: {self._scrub(f'{exc}{cause}')}")

    def _scrub(self, text: str) -> str:
        """``text`` with the API key masked, should an upstream echo it."""
        if len(self._secret) >= 4 and self._secret != NO_KEY:
            return text.replace(self._secret, "***")
        return text
