"""Runtimes: one module per framework behind the :class:`Runtime` ABC."""

from __future__ import annotations

import importlib

from modelhost.manifest import RuntimeKind
from modelhost.runtimes.base import (
    Lane,
    Prediction,
    Runtime,
    RuntimeContext,
    StreamChunk,
)

_CLASSES: dict[RuntimeKind, str] = {
    RuntimeKind.SKLEARN: "modelhost.runtimes.sklearn:SklearnRuntime",
    RuntimeKind.ONNX: "modelhost.runtimes.onnx:OnnxRuntime",
    RuntimeKind.LLAMACPP: "modelhost.runtimes.llamacpp:LlamaCppRuntime",
    RuntimeKind.EMBEDDINGS: "modelhost.runtimes.embeddings:EmbeddingsRuntime",
    RuntimeKind.PYTHON: "modelhost.runtimes.python:PythonRuntime",
    RuntimeKind.CASCADE: "modelhost.runtimes.cascade:CascadeRuntime",
    RuntimeKind.OPENAI_UPSTREAM: "modelhost.runtimes.openai_upstream:OpenAIUpstreamRuntime",
    RuntimeKind.FEATURE: "modelhost.runtimes.feature:FeatureRuntime",
}


def create_runtime(context: RuntimeContext) -> Runtime:
    """Build (not load) the runtime named by the manifest."""
    manifest = context.manifest
    path = _CLASSES[manifest.runtime]
    if manifest.runtime is RuntimeKind.EMBEDDINGS and manifest.options.get("backend") == "onnx":
        path = "modelhost.runtimes.embeddings_onnx:EmbeddingsOnnxRuntime"
    module_name, _, class_name = path.partition(":")
    cls: type[Runtime] = getattr(importlib.import_module(module_name), class_name)
    return cls(context)


__all__ = [
    "Lane",
    "Prediction",
    "Runtime",
    "RuntimeContext",
    "StreamChunk",
    "create_runtime",
]
