from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from modelhost.demo import gemma_input_schema, llm_parameters_schema
from modelhost.errors import (
    ConfigError,
    InferenceTimeout,
    InvalidInput,
    ManifestError,
    RuntimeFailure,
)
from modelhost.runtimes import Runtime
from tests.conftest import free_port
from tests.runtimes.conftest import load_runtime
from tests.upstream_server import UpstreamServer

KEY_ENV = "MODELHOST_TEST_UPSTREAM_KEY"
CHAT = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def write_upstream(root: Path, **options: Any) -> Path:
    """A version directory holding only an ``openai-upstream`` manifest."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": "upstream",
        "version": "1.0.0",
        "runtime": "openai-upstream",
        "task": "generation",
        "options": options,
        "input_schema": gemma_input_schema(),
        "parameters_schema": llm_parameters_schema(),
    }
    (root / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    return root


@pytest.fixture
def upstream(llama_upstream: UpstreamServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Options naming the llama.cpp server, its key in an environment variable."""
    assert llama_upstream.api_key is not None
    monkeypatch.setenv(KEY_ENV, llama_upstream.api_key)
    return {
        "base_url": llama_upstream.base_url,
        "model": llama_upstream.model,
        "api_key_env": KEY_ENV,
    }


@pytest.fixture
def chat(upstream: dict[str, Any], tmp_path: Path) -> Iterator[Runtime]:
    runtime = load_runtime(write_upstream(tmp_path, **upstream))
    yield runtime
    runtime.unload()


@pytest.mark.llm
def test_chat_and_prompt_inputs_answer_text(chat: Runtime, upstream: dict[str, Any]) -> None:
    prediction = chat.predict(
        [CHAT, {"prompt": "Name a colour."}, "Say hello."], {"max_tokens": 8, "temperature": 0}
    )
    assert len(prediction.results) == 3
    for result in prediction.results:
        assert set(result) == {"text", "finish_reason"}
        assert result["text"].strip()
        assert result["finish_reason"] in ("stop", "length")
    assert prediction.usage.input_tokens > 0
    assert 0 < prediction.usage.output_tokens <= 24
    meta = chat.metadata()
    assert meta["base_url"] == upstream["base_url"]
    assert meta["upstream_model"] == "gemma-upstream"
    assert meta["endpoint"] == "chat"


@pytest.mark.llm
def test_temperature_zero_is_repeatable(chat: Runtime) -> None:
    first = chat.predict([CHAT], {"max_tokens": 12, "temperature": 0}).results
    second = chat.predict([CHAT], {"max_tokens": 12, "temperature": 0}).results
    assert first == second


@pytest.mark.llm
def test_completions_endpoint_honours_stop(upstream: dict[str, Any], tmp_path: Path) -> None:
    runtime = load_runtime(write_upstream(tmp_path, endpoint="completions", **upstream))
    result = runtime.predict(
        [{"prompt": "1, 2, 3, 4, 5,"}], {"max_tokens": 20, "temperature": 0, "stop": ["8"]}
    ).results[0]
    assert result["text"].strip()
    assert "8" not in result["text"]
    assert result["finish_reason"] == "stop"
    with pytest.raises(InvalidInput, match="response_format"):
        runtime.predict(["x"], {"response_format": {"type": "json_object"}})


@pytest.mark.llm
def test_json_schema_output_validates(upstream: dict[str, Any], tmp_path: Path) -> None:
    # llama-cpp-python's server only knows {"type": "json_object", "schema": ...}
    runtime = load_runtime(write_upstream(tmp_path, json_schema_as="json_object", **upstream))
    ask = {"messages": [{"role": "user", "content": "Invent a person: a name and an age."}]}
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    result = runtime.predict(
        [ask], {"max_tokens": 80, "temperature": 0, "response_format": fmt}
    ).results[0]
    assert result["finish_reason"] == "stop"
    jsonschema.validate(json.loads(result["text"]), PERSON)


@pytest.mark.llm
def test_upstream_refusing_the_input_is_invalid_input(chat: Runtime) -> None:
    with pytest.raises(InvalidInput, match=r"refused the input: .*context length"):
        chat.predict([{"prompt": "word " * 5000}], {"max_tokens": 1})
    with pytest.raises(InvalidInput, match=r"response_format\.type"):
        chat.predict([CHAT], {"response_format": {"type": "yaml"}})
    with pytest.raises(InvalidInput):
        chat.predict([{"neither": 1}], {})


@pytest.mark.llm
def test_llama_server_answers_500_to_a_json_schema_format(chat: Runtime) -> None:
    # llama-cpp-python's server reports its own request validation errors as 500s, so a
    # format it does not know counts as the model's failure (hence option json_schema_as)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    with pytest.raises(RuntimeFailure, match=r"(?s)answered 500: .*'text' or 'json_object'"):
        chat.predict([CHAT], {"max_tokens": 4, "response_format": fmt})


@pytest.mark.llm
def test_stream_yields_pieces_then_finish_and_usage(chat: Runtime) -> None:
    chunks = list(chat.stream(CHAT, {"max_tokens": 6, "temperature": 0}))
    pieces = [c.text for c in chunks[:-1]]
    assert len(pieces) >= 2
    assert "".join(pieces).strip()
    last = chunks[-1]
    assert last.text == ""
    assert last.finish_reason == "length"
    assert last.usage is not None
    assert 0 < last.usage.output_tokens <= 6


@pytest.mark.llm
def test_slow_upstream_is_an_inference_timeout(upstream: dict[str, Any], tmp_path: Path) -> None:
    runtime = load_runtime(write_upstream(tmp_path, timeout_s=0.05, **upstream))
    with pytest.raises(InferenceTimeout, match=r"did not answer within 0\.05 s"):
        runtime.predict([CHAT], {"max_tokens": 32, "temperature": 0})


@pytest.mark.llm
def test_load_checks_key_and_model(upstream: dict[str, Any], tmp_path: Path) -> None:
    secret = "wrong-key-0123"
    wrong_key = {**upstream, "api_key_env": None, "api_key": secret}
    with pytest.raises(RuntimeFailure, match="refused the API key") as refused:
        load_runtime(write_upstream(tmp_path / "key", **wrong_key))
    assert secret not in str(refused.value)
    with pytest.raises(RuntimeFailure, match="serves gemma-upstream"):
        load_runtime(write_upstream(tmp_path / "model", **{**upstream, "model": "gpt-9"}))


def test_unreachable_url_fails_load_naming_it(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(RuntimeFailure, match=f"upstream {url} cannot be reached"):
        load_runtime(write_upstream(tmp_path, base_url=url, model="m"))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"model": "m"}, "options.base_url': is required"),
        ({"base_url": "ftp://host/v1", "model": "m"}, "options.base_url"),
        ({"base_url": "http://h/v1"}, "options.model': is required"),
        ({"base_url": "http://h/v1", "model": "m", "endpoint": "edit"}, "options.endpoint"),
        (
            {"base_url": "http://h/v1", "model": "m", "apikey": "k"},
            "options.apikey': is not an option",
        ),
        ({"base_url": "http://h/v1", "model": "m", "timeout_s": 0}, "options.timeout_s"),
        (
            {"base_url": "http://h/v1", "model": "m", "api_key": "k", "api_key_env": "K"},
            "not both",
        ),
    ],
)
def test_bad_options_are_manifest_errors(
    options: dict[str, Any], field: str, tmp_path: Path
) -> None:
    with pytest.raises(ManifestError, match=field):
        load_runtime(write_upstream(tmp_path, **options))


def test_unset_key_variable_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    options = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": KEY_ENV}
    with pytest.raises(ConfigError, match=KEY_ENV):
        load_runtime(write_upstream(tmp_path, **options))


# -- a canned OpenAI-shaped server, for answers llama.cpp's server never gives -----------------


class Canned(ThreadingHTTPServer):
    """Answers the model list and a chat completion with ``status``; records each
    Authorization header it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), CannedHandler)
        self.status = 200
        self.message = ""
        self.authorizations: list[str] = []
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.shutdown()
        self.server_close()
        self.thread.join()


class CannedHandler(BaseHTTPRequestHandler):
    server: Canned

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.authorizations.append(self.headers.get("Authorization", ""))
        self.answer(200, {"object": "list", "data": [{"id": "canned", "object": "model"}]})

    def do_POST(self) -> None:
        self.server.authorizations.append(self.headers.get("Authorization", ""))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.server.status != 200:
            error = {"message": self.server.message, "type": "error", "code": None}
            self.answer(self.server.status, {"error": error})
            return
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "canned"},
            "finish_reason": "stop",
        }
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        self.answer(
            200,
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": "canned",
                "choices": [choice],
                "usage": usage,
            },
        )


@pytest.fixture
def canned() -> Iterator[Canned]:
    server = Canned()
    yield server
    server.stop()


def test_key_is_sent_and_never_shown(canned: Canned, tmp_path: Path) -> None:
    secret = "sk-literal-0123456789"
    runtime = load_runtime(
        write_upstream(tmp_path, base_url=canned.base_url, model="canned", api_key=secret)
    )
    prediction = runtime.predict([CHAT], {"max_tokens": 4})
    assert prediction.results == [{"text": "canned", "finish_reason": "stop"}]
    assert (prediction.usage.input_tokens, prediction.usage.output_tokens) == (3, 1)
    assert set(canned.authorizations) == {f"Bearer {secret}"}
    assert secret not in json.dumps(runtime.metadata())
    canned.status, canned.message = 500, f"bad key {secret}"
    with pytest.raises(RuntimeFailure) as failure:
        runtime.predict([CHAT], {})
    assert secret not in str(failure.value)
    assert "bad key ***" in str(failure.value)


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, InvalidInput), (422, InvalidInput), (404, RuntimeFailure), (429, RuntimeFailure)],
)
def test_upstream_statuses_map_to_whose_fault(
    canned: Canned, tmp_path: Path, status: int, error: type[Exception]
) -> None:
    runtime = load_runtime(write_upstream(tmp_path, base_url=canned.base_url, model="canned"))
    assert set(canned.authorizations) == {"Bearer not-needed"}
    canned.status, canned.message = status, "upstream says no"
    with pytest.raises(error, match="upstream says no"):
        runtime.predict([CHAT], {})


def test_upstream_gone_after_load_is_a_runtime_failure(canned: Canned, tmp_path: Path) -> None:
    runtime = load_runtime(write_upstream(tmp_path, base_url=canned.base_url, model="canned"))
    canned.stop()
    with pytest.raises(RuntimeFailure, match="cannot be reached"):
        runtime.predict([CHAT], {})
    with pytest.raises(RuntimeFailure, match="cannot be reached"):
        list(runtime.stream(CHAT, {}))
