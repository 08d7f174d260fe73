"""Sentence embeddings with sentence-transformers (torch on the CPU)."""

from __future__ import annotations

import os
from typing import Any

from modelhost.errors import InvalidInput, MissingDependencyError, RuntimeFailure
from modelhost.inference import Usage
from modelhost.runtimes.base import Prediction, Runtime, RuntimeContext


def _text(item: Any, index: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return str(item["text"])
    raise InvalidInput('each input is a string or {"text": string}', param=f"inputs[{index}]")


class EmbeddingsRuntime(Runtime):
    """Encodes text to vectors. The model directory is ``artifacts.model`` (default ``.``).

    Options: ``normalize`` (default true), ``batch_size`` (default 32).
    """

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self._model: Any = None
        self.dimensions = 0

    def load(self) -> None:
        """Load the sentence-transformers directory, offline."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise MissingDependencyError("sentence-transformers", "embeddings") from None
        torch.set_num_threads(max(1, self.context.threads))
        self._model = SentenceTransformer(
            str(self.context.file("model", ".")), device="cpu", local_files_only=True
        )
        get_dims = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        dims = get_dims()
        self.dimensions = int(dims or 0)

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model's tokenizer makes of ``texts`` (special tokens included)."""
        encoded = self._model.tokenizer(texts, add_special_tokens=True, truncation=True)
        return sum(len(ids) for ids in encoded["input_ids"])

    def predict(self, inputs: list[Any], parameters: dict[str, Any]) -> Prediction:
        """One ``{"embedding": [...]}`` per input."""
        if self._model is None:
            raise RuntimeFailure(f"{self.manifest.ref} is not loaded")
        texts = [_text(item, i) for i, item in enumerate(inputs)]
        normalize = bool(parameters.get("normalize", self.manifest.options.get("normalize", True)))
        vectors = self._model.encode(
            texts,
            batch_size=int(self.manifest.options.get("batch_size", 32)),
            normalize_embeddings=normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        dims = parameters.get("dimensions")
        rows = vectors.tolist()
        if isinstance(dims, int) and 0 < dims < self.dimensions:
            rows = [row[:dims] for row in rows]
        results = [{"embedding": row} for row in rows]
        return Prediction(results=results, usage=Usage(input_tokens=self.count_tokens(texts)))

    def unload(self) -> None:
        """Drop the model."""
        self._model = None

    def metadata(self) -> dict[str, Any]:
        """Embedding size and sequence limit."""
        if self._model is None:
            return {}
        return {"dimensions": self.dimensions, "max_seq_length": self._model.max_seq_length}
