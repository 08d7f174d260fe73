"""OpenAI wire models: request bodies parsed with pydantic, response bodies built as dicts.

The OpenAI surface is a codec over the data plane: a request body becomes the inputs and
parameters of one :class:`~modelhost.serving.dataplane.InferenceRequest`, and the results
become the OpenAI response shape. Nothing here runs a model or knows about HTTP.

Parameters OpenAI defines but modelhost does not implement are refused with a 400 naming the
parameter, unless the value sent is the neutral one (``presence_penalty: 0``, ``logprobs:
false``, ...), so that clients which send defaults explicitly keep working.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelhost.errors import InvalidInput, invalid_input
from modelhost.inference import Usage

#: Parameters OpenAI defines that modelhost accepts only with these (neutral) values.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "modalities": (None, ["text"]),
}
#: Parameters accepted with any value and ignored: they change nothing about the answer.
_IGNORED = frozenset({"metadata", "store", "service_tier", "parallel_tool_calls"})

Body = TypeVar("Body", bound="OpenAIBody")


# -- parsing ---------------------------------------------------------------------------------


def parse_body(kind: type[Body], payload: Any) -> Body:
    """Validate a decoded JSON body as ``kind``.

    Raises:
        InvalidInput: a field is missing or wrong, or an unsupported parameter was sent;
            ``param`` names it in OpenAI's terms.
    """
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object", param="body")
    try:
        body = kind.model_validate(payload)
    except ValidationError as exc:
        raise invalid_input(exc) from None
    body.refuse_unsupported()
    return body


class OpenAIBody(BaseModel):
    """Base of every request body: unknown fields are kept so they can be refused by name."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="``name`` or ``name@version``.")
    user: str | None = Field(default=None, description="Accepted and ignored.")

    def refuse_unsupported(self) -> None:
        """Refuse unknown parameters, and known ones sent with a value modelhost cannot honour.

        Raises:
            InvalidInput: naming the parameter.
        """
        for name, value in (self.model_extra or {}).items():
            if name in _IGNORED:
                continue
            neutral = _NEUTRAL.get(name)
            if neutral is None:
                raise InvalidInput(f"unrecognized request argument {name!r}", param=name)
            if value not in neutral:
                raise InvalidInput(
                    f"{name}={value!r} is not supported by modelhost; leave it out",
                    param=name,
                )


def body_schema(kind: type[OpenAIBody]) -> dict[str, Any]:
    """The JSON schema of a request body as the server reads it: the model's fields, the
    OpenAI parameters accepted with their neutral values only, the ones ignored, and nothing
    else (an unknown field is refused by name)."""
    schema = kind.model_json_schema()
    properties = schema.setdefault("properties", {})
    for name, values in _NEUTRAL.items():
        properties.setdefault(
            name, {"enum": list(values), "description": "Accepted with this value only."}
        )
    for name in sorted(_IGNORED):
        properties.setdefault(name, {"description": "Accepted and ignored."})
    schema["additionalProperties"] = False
    return schema


class StreamOptions(BaseModel):
    """``stream_options``."""

    include_usage: bool = False


class GenerationBody(OpenAIBody):
    """Sampling parameters shared by chat and text completions."""

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def refuse_unsupported(self) -> None:
        """Also refuse ``n`` other than 1 and ``stream_options`` without ``stream``."""
        super().refuse_unsupported()
        if self.n not in (None, 1):
            raise InvalidInput(
                f"n={self.n} is not supported: modelhost generates one choice per request; "
                "send n requests instead",
                param="n",
            )
        if self.stream_options is not None and not self.stream:
            raise InvalidInput(
                "stream_options is only allowed when stream is true", param="stream_options"
            )

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling(self, max_tokens: int | None) -> dict[str, Any]:
        """The runtime parameters that were set (the model's defaults fill the rest)."""
        values = {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop or None,
        }
        return {key: value for key, value in values.items() if value is not None}


class ContentPart(BaseModel):
    """One part of a message's content; only ``text`` parts are supported."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One chat message; ``name`` and other per-message extras are ignored."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def as_input(self, index: int) -> dict[str, str]:
        """``{"role", "content"}`` as the runtime takes it (``developer`` becomes ``system``).

        Raises:
            InvalidInput: a content part is not text.
        """
        role = "system" if self.role == "developer" else self.role
        if self.content is None or isinstance(self.content, str):
            return {"role": role, "content": self.content or ""}
        texts: list[str] = []
        for position, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                param = f"messages[{index}].content[{position}]"
                raise InvalidInput(
                    f"{param}: content parts of type {part.type!r} are not supported; send text",
                    param=param,
                )
            texts.append(part.text)
        return {"role": role, "content": "".join(texts)}


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``."""

    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: free text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(GenerationBody):
    """Body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None

    def input_item(self) -> dict[str, Any]:
        """The one runtime input: ``{"messages": [...]}``."""
        return {"messages": [m.as_input(i) for i, m in enumerate(self.messages)]}

    def parameters(self) -> dict[str, Any]:
        """Runtime parameters; ``max_completion_tokens`` wins over ``max_tokens``."""
        out = self.sampling(self.max_completion_tokens or self.max_tokens)
        if self.response_format is not None:
            out["response_format"] = self.response_format.model_dump(
                by_alias=True, exclude_none=True
            )
        return out


class CompletionRequest(GenerationBody):
    """Body of ``POST /v1/completions``; token-id prompts are refused."""

    prompt: str | list[str] | list[int] | list[list[int]]

    def prompts(self) -> list[str]:
        """The prompts, one runtime input each.

        Raises:
            InvalidInput: the prompt is token ids, or several prompts are streamed.
        """
        if isinstance(self.prompt, str):
            return [self.prompt]
        if any(not isinstance(item, str) for item in self.prompt):
            raise InvalidInput(
                "prompt as token ids is not supported; send a string or a list of strings",
                param="prompt",
            )
        prompts = [item for item in self.prompt if isinstance(item, str)]
        if self.stream and len(prompts) != 1:
            raise InvalidInput(
                f"stream: true takes exactly one prompt, not {len(prompts)}; "
                "send one request per prompt",
                param="prompt",
            )
        return prompts

    def parameters(self) -> dict[str, Any]:
        """Runtime parameters."""
        return self.sampling(self.max_tokens)


class EmbeddingRequest(OpenAIBody):
    """Body of ``POST /v1/embeddings``; token-id inputs are refused."""

    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    def texts(self) -> list[str]:
        """The texts to embed, one runtime input each.

        Raises:
            InvalidInput: the input is token ids.
        """
        if isinstance(self.input, str):
            return [self.input]
        if any(not isinstance(item, str) for item in self.input):
            raise InvalidInput(
                "input as token ids is not supported; send a string or a list of strings",
                param="input",
            )
        return [item for item in self.input if isinstance(item, str)]

    def parameters(self) -> dict[str, Any]:
        """Runtime parameters."""
        return {} if self.dimensions is None else {"dimensions": self.dimensions}


# -- responses -------------------------------------------------------------------------------


def usage_body(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object, with modelhost's ``cost`` and ``currency`` when priced."""
    body: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cost is not None:
        body["cost"] = usage.cost
        body["currency"] = usage.currency
    return body


@dataclass(frozen=True, slots=True)
class Completion:
    """What every completion response and chunk repeats, and whether it is chat or text."""

    id: str
    created: int
    model: str
    fingerprint: str
    chat: bool
    include_usage: bool = False

    def _choice(self, index: int, text: str | None, finish: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choice["logprobs"] = None
        choice["finish_reason"] = finish
        return choice

    def response(self, results: list[Any], usage: Usage) -> dict[str, Any]:
        """The non-streamed body, one choice per ``{"text", "finish_reason"}`` result."""
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                self._choice(i, r.get("text", ""), r.get("finish_reason", "stop"))
                for i, r in enumerate(results)
            ],
            "usage": usage_body(usage),
            "system_fingerprint": self.fingerprint,
        }

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _delta(self, text: str, finish: str | None, *, role: bool = False) -> dict[str, Any]:
        if not self.chat:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return self._chunk([choice])
        delta: dict[str, str] = {"role": "assistant", "content": text} if role else {}
        if text and not role:
            delta["content"] = text
        return self._chunk(
            [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        )

    def opening(self) -> list[dict[str, Any]]:
        """Chunks sent before any text: chat announces the assistant role."""
        return [self._delta("", None, role=True)] if self.chat else []

    def piece(self, text: str) -> dict[str, Any]:
        """A chunk carrying generated text."""
        return self._delta(text, None)

    def closing(self, finish: str) -> dict[str, Any]:
        """The chunk with the finish reason and no text."""
        return self._delta("", finish)

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        """The last chunk when ``stream_options.include_usage`` is set: no choices, usage."""
        chunk = self._chunk([])
        chunk["usage"] = usage_body(usage)
        return chunk


def _base64(vector: Sequence[float]) -> str:
    """Little-endian float32 bytes in base64, as the OpenAI SDK decodes them."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def embedding_list(
    results: list[Any], usage: Usage, model: str, encoding: Literal["float", "base64"]
) -> dict[str, Any]:
    """The body of an embeddings response."""
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _base64(r["embedding"]) if encoding == "base64" else r["embedding"],
        }
        for index, r in enumerate(results)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": _embedding_usage(usage),
    }


def _embedding_usage(usage: Usage) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens}
    if usage.cost is not None:
        body["cost"] = usage.cost
        body["currency"] = usage.currency
    return body
