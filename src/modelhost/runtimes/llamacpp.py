"""GGUF language models run by llama.cpp (llama-cpp-python).

Completion takes ``{"prompt": str}``; chat takes ``{"messages": [...]}`` and is rendered with the
model's own chat template (from the GGUF metadata) or, when the file has none, a plain
``role: content`` fallback that the metadata reports. ``response_format`` of type
``json_object`` or ``json_schema`` is enforced by a grammar during decoding.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from modelhost.errors import InvalidInput, MissingDependencyError, RuntimeFailure
from modelhost.inference import Usage
from modelhost.runtimes.base import Prediction, Runtime, RuntimeContext, StreamChunk
from modelhost.runtimes.grammar import json_schema_gbnf

_SAMPLING = ("temperature", "top_p", "top_k", "seed", "repeat_penalty", "min_p")
FALLBACK_TEMPLATE = "fallback:plain"
#: Chat formats of llama-cpp-python used when a GGUF file carries no template of its own.
_ARCH_FORMATS = {
    "gemma": "gemma",
    "qwen": "chatml",
    "llama": "llama3",
    "mistral": "mistral_instruct",
}


def fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gemma has no system role: its own template puts the system text at the start of the
    first user turn. llama-cpp-python's built-in ``gemma`` format drops system messages
    instead, so the instructions (and the data preamble of fenced prompts) would never reach
    the model; fold them in as Gemma's template does."""
    system = [str(m.get("content", "")) for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    if not system:
        return messages
    preamble = "\n\n".join(system)
    for index, message in enumerate(rest):
        if message.get("role") == "user":
            merged = {**message, "content": f"{preamble}\n\n{message.get('content', '')}"}
            return [*rest[:index], merged, *rest[index + 1 :]]
    return [{"role": "user", "content": preamble}, *rest]


@dataclass(slots=True)
class _Prompt:
    tokens: list[int]
    stop: list[str]
    grammar: Any


class LlamaCppRuntime(Runtime):
    """One llama.cpp context; calls are serialised by a lock (a context is not thread-safe).

    Options: ``n_ctx`` (default 2048), ``n_batch`` (512), ``n_threads`` (the inference share),
    ``reuse_prefix`` (false).

    Greedy decoding is only deterministic when the prompt is evaluated the same way every
    time: llama-cpp-python reuses the cached prefix of the previous prompt and evaluates the
    rest in a smaller batch, which changes the float sums enough for a 270M model to pick
    another token a few words in (the same request answered twice gave two texts). So the
    context is reset before each call, and the same request at temperature 0 gets the same
    answer (what the exact cache and replays rely on). ``reuse_prefix: true`` trades that for
    speed on long shared prompts.
    """

    supports_streaming = True

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self._llm: Any = None
        self._formatter: Any = None
        self._lock = threading.Lock()
        self._reuse_prefix = False
        self.chat_template = FALLBACK_TEMPLATE

    def load(self) -> None:
        """Load the GGUF file named ``artifacts.model`` (default ``model.gguf``)."""
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError:
            raise MissingDependencyError("llama-cpp-python", "llm") from None
        options = self.manifest.options
        threads = int(options.get("n_threads", self.context.threads))
        self._llm = Llama(
            model_path=str(self.context.file("model", "model.gguf")),
            n_ctx=int(options.get("n_ctx", 2048)),
            n_batch=int(options.get("n_batch", 512)),
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self._pick_chat_format(Jinja2ChatFormatter)
        self._reuse_prefix = bool(options.get("reuse_prefix", False))

    def _pick_chat_format(self, jinja_formatter: Any) -> None:
        """The manifest's ``chat_format``, else the GGUF template, else one by architecture."""
        from llama_cpp import llama_chat_format

        named = self.manifest.options.get("chat_format")
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not named and template:
            eos = self._llm.detokenize([self._llm.token_eos()]).decode("utf-8", "ignore")
            bos = self._llm.detokenize([self._llm.token_bos()]).decode("utf-8", "ignore")
            self._formatter = jinja_formatter(template=template, eos_token=eos, bos_token=bos)
            self.chat_template = "gguf"
            return
        arch = str(self._llm.metadata.get("general.architecture", ""))
        named = named or next((f for a, f in _ARCH_FORMATS.items() if arch.startswith(a)), None)
        formatter = getattr(llama_chat_format, f"format_{named}", None) if named else None
        if formatter is not None:
            self._formatter = formatter
            self.chat_template = f"builtin:{named}"

    # -- prompt building --------------------------------------------------------------------

    def chat_tokens(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
        """The prompt tokens and stop strings of a chat, as the model will see them."""
        return self._chat_prompt(messages)

    def detokenize(self, tokens: list[int]) -> str:
        """Text of prompt tokens (special tokens included)."""
        return str(self._llm.detokenize(tokens, special=True).decode("utf-8", "replace"))

    def _chat_prompt(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
        if self.chat_template == "builtin:gemma":
            messages = fold_system(messages)
        if self._formatter is not None:
            rendered = self._formatter(messages=messages)
            tokens = self._llm.tokenize(
                rendered.prompt.encode("utf-8"),
                add_bos=not getattr(rendered, "added_special", False),
                special=True,
            )
            stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop or ""]
            return tokens, [s for s in stop if s]
        lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages]
        text = "\n".join(lines) + "\nassistant:"
        return self._llm.tokenize(text.encode("utf-8"), add_bos=True), ["\nuser:"]

    @staticmethod
    def _grammar(parameters: dict[str, Any]) -> Any:
        fmt = parameters.get("response_format")
        if not fmt:
            return None
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "text":
            return None
        if kind == "json_object":
            schema = fmt.get("schema")
            if schema:
                text = json_schema_gbnf(schema, param="response_format.schema")
                return LlamaGrammar.from_string(text, verbose=False)
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        if kind == "json_schema":
            spec = fmt.get("json_schema") or {}
            schema = spec.get("schema") if isinstance(spec, dict) else None
            text = json_schema_gbnf(schema, param="response_format.json_schema.schema")
            return LlamaGrammar.from_string(text, verbose=False)
        raise InvalidInput(
            "response_format.type must be 'text', 'json_object' or 'json_schema'",
            param="response_format.type",
        )

    def _prompt(self, item: Any, parameters: dict[str, Any]) -> _Prompt:
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            raise InvalidInput('an input is {"prompt": str} or {"messages": [...]}')
        if "messages" in item:
            tokens, stop = self._chat_prompt(list(item["messages"]))
        elif isinstance(item.get("prompt"), str):
            tokens = self._llm.tokenize(item["prompt"].encode("utf-8"), add_bos=True)
            stop = []
        else:
            raise InvalidInput('an input is {"prompt": str} or {"messages": [...]}')
        extra = parameters.get("stop") or []
        stop = stop + ([extra] if isinstance(extra, str) else list(extra))
        n_ctx = self._llm.n_ctx()
        if len(tokens) >= n_ctx:
            raise InvalidInput(
                f"the prompt is {len(tokens)} tokens; this model's context is {n_ctx}",
                param="inputs",
            )
        return _Prompt(tokens=tokens, stop=stop, grammar=self._grammar(parameters))

    def _kwargs(self, prompt: _Prompt, parameters: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "prompt": prompt.tokens,
            "max_tokens": int(parameters.get("max_tokens") or 128),
            "stop": prompt.stop or None,
            "grammar": prompt.grammar,
        }
        for key in _SAMPLING:
            if parameters.get(key) is not None:
                kwargs[key] = parameters[key]
        return kwargs

    # -- calls ------------------------------------------------------------------------------

    def predict(self, inputs: list[Any], parameters: dict[str, Any]) -> Prediction:
        """One ``{"text", "finish_reason"}`` per input, generated one after another."""
        if self._llm is None:
            raise RuntimeFailure(f"{self.manifest.ref} is not loaded")
        results: list[Any] = []
        usage = Usage()
        for item in inputs:
            prompt = self._prompt(item, parameters)
            with self._lock:
                self._fresh()
                out = self._llm.create_completion(**self._kwargs(prompt, parameters))
            choice = out["choices"][0]
            results.append({"text": choice["text"], "finish_reason": choice["finish_reason"]})
            usage.add(
                Usage(
                    input_tokens=out["usage"]["prompt_tokens"],
                    output_tokens=out["usage"]["completion_tokens"],
                )
            )
        return Prediction(results=results, usage=usage)

    def stream(self, item: Any, parameters: dict[str, Any]) -> Iterator[StreamChunk]:
        """Yield text pieces as they are decoded; the last chunk carries finish reason and usage."""
        if self._llm is None:
            raise RuntimeFailure(f"{self.manifest.ref} is not loaded")
        prompt = self._prompt(item, parameters)
        kwargs = self._kwargs(prompt, parameters)
        produced = 0
        finish: str | None = None
        with self._lock:
            self._fresh()
            for chunk in self._llm.create_completion(stream=True, **kwargs):
                choice = chunk["choices"][0]
                finish = choice.get("finish_reason") or finish
                if choice["text"]:
                    produced += 1
                    yield StreamChunk(text=choice["text"])
        yield StreamChunk(
            text="",
            finish_reason=finish or "stop",
            usage=Usage(input_tokens=len(prompt.tokens), output_tokens=produced),
        )

    def _fresh(self) -> None:
        """Forget the previous prompt (see the class docstring); called under the lock."""
        if not self._reuse_prefix:
            self._llm.reset()

    def unload(self) -> None:
        """Free the llama.cpp context."""
        with self._lock:
            if self._llm is not None and hasattr(self._llm, "close"):
                self._llm.close()
            self._llm = None

    def metadata(self) -> dict[str, Any]:
        """Context size and which chat template is used."""
        if self._llm is None:
            return {}
        return {
            "n_ctx": self._llm.n_ctx(),
            "chat_template": self.chat_template,
            "architecture": self._llm.metadata.get("general.architecture"),
        }
