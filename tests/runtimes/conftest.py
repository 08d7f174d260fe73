"""Model directories built once per session from the demo builders (real models)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelhost.demo import build_gemma, build_iris, build_minilm
from modelhost.manifest import load_manifest
from modelhost.runtimes import Runtime, RuntimeContext, create_runtime
from tests.upstream_server import UpstreamServer, start_llama_server


def load_runtime(directory: Path) -> Runtime:
    """Build and load the runtime of a version directory."""
    runtime = create_runtime(
        RuntimeContext(manifest=load_manifest(directory), path=directory, threads=2)
    )
    runtime.load()
    return runtime


def load_torch_embeddings(directory: Path) -> Runtime:
    """The sentence-transformers (torch) runtime of a minilm directory, whatever its backend."""
    from modelhost.runtimes.embeddings import EmbeddingsRuntime

    runtime = EmbeddingsRuntime(
        RuntimeContext(manifest=load_manifest(directory), path=directory, threads=2)
    )
    runtime.load()
    return runtime


@pytest.fixture(scope="session")
def iris_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return build_iris(tmp_path_factory.mktemp("iris"))


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_minilm(tmp_path_factory.mktemp("minilm"))[0]


@pytest.fixture(scope="session")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gemma(tmp_path_factory.mktemp("gemma"))[0]


@pytest.fixture(scope="session")
def llama_upstream(gemma_dir: Path) -> Iterator[UpstreamServer]:
    """llama-cpp-python's OpenAI-compatible server on the demo Gemma, wanting an API key."""
    with start_llama_server(gemma_dir / "model.gguf", api_key=secrets.token_hex(8)) as server:
        yield server
