"""Sentence embeddings from an ONNX export of a sentence-transformers model (onnxruntime).

The export is made once, at build time, by :func:`export_onnx` (needs torch); serving needs
only onnxruntime and ``tokenizers``. Pooling is the mean over the attention mask, as in
all-MiniLM-L6-v2, followed by L2 normalisation unless ``normalize`` is false. Measured against
sentence-transformers by ``benchmarks/embeddings_backend.py``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from modelhost.errors import MissingDependencyError, RuntimeFailure
from modelhost.inference import Usage
from modelhost.runtimes.base import Prediction, Runtime, RuntimeContext
from modelhost.runtimes.embeddings import _text
from modelhost.runtimes.onnx import run_options

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_onnx(model_dir: Path, target: Path, opset: int = 17) -> Path:
    """Export the transformer of a sentence-transformers directory to ONNX.

    The graph takes ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64, dynamic
    batch and sequence axes) and returns ``last_hidden_state``; pooling is left to the runtime.

    Args:
        model_dir: The sentence-transformers directory (``config.json``, weights, tokenizer).
        target: Where to write the ``.onnx`` file.
        opset: ONNX opset version.

    Returns:
        ``target``.

    Raises:
        MissingDependencyError: torch or transformers is not installed.
    """
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        raise MissingDependencyError("torch", "embeddings") from None
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)

    class _LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # a submodule, so its weights export as initializers

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                return_dict=True,
            ).last_hidden_state

    sample = tokenizer(["a sample sentence", "another, slightly longer one"], padding=True)
    args = tuple(torch.tensor(sample[name], dtype=torch.int64) for name in _INPUTS)
    axes = {0: "batch", 1: "sequence"}
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # "legacy TorchScript-based exporter" and tracer notes on shape-dependent branches
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit._trace.TracerWarning)
        # the attention-mask expansion indexes with non-negative indices only
        warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
        torch.onnx.export(
            _LastHiddenState().eval(),
            args,
            str(target),
            input_names=list(_INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes={name: axes for name in (*_INPUTS, "last_hidden_state")},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,  # the dynamo exporter needs onnxscript
        )
    return target


def _max_seq_length(model_dir: Path) -> int:
    config = model_dir / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    return 512


class EmbeddingsOnnxRuntime(Runtime):
    """Encodes text to vectors with onnxruntime.

    Artifacts: ``model`` (the sentence-transformers directory, for its tokenizer and
    ``sentence_bert_config.json``; default ``.``) and ``onnx`` (the graph made by
    :func:`export_onnx`; default ``model.onnx``). Options: ``normalize`` (default true),
    ``batch_size`` (default 32), ``arena_shrinkage`` (default true: onnxruntime's CPU arena
    gives back after each run what it grew for a long batch; see
    :func:`modelhost.runtimes.onnx.run_options`).
    """

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self._session: Any = None
        self._tokenizer: Any = None
        self._feeds: tuple[str, ...] = ()
        self.dimensions = 0
        self.max_seq_length = 0
        self._run_options: Any = None

    def load(self) -> None:
        """Open the tokenizer and an inference session on the graph."""
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError:
            raise MissingDependencyError("onnxruntime", "onnx") from None
        model_dir = self.context.file("model", ".")
        self.max_seq_length = _max_seq_length(model_dir)
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json may carry fixed padding/truncation; sentence-transformers pads to the
        # longest text of the batch and truncates at max_seq_length.
        pad = tokenizer.padding or {}
        tokenizer.no_padding()
        tokenizer.enable_padding(
            pad_id=int(pad.get("pad_id", 0)),
            pad_type_id=int(pad.get("pad_type_id", 0)),
            pad_token=str(pad.get("pad_token", "[PAD]")),
        )
        tokenizer.enable_truncation(max_length=self.max_seq_length)
        self._tokenizer = tokenizer
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, self.context.threads)
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(self.context.file("onnx", "model.onnx")),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._feeds = tuple(i.name for i in self._session.get_inputs())
        self._run_options = run_options(self.manifest.options)
        self.dimensions = int(self._session.get_outputs()[0].shape[-1])

    def _encode(self, texts: list[str], normalize: bool) -> tuple[np.ndarray, int]:
        encodings = self._tokenizer.encode_batch(texts)
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (hidden,) = self._session.run(
            ["last_hidden_state"], {name: arrays[name] for name in self._feeds}, self._run_options
        )
        mask = arrays["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        if normalize:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.clip(norms, 1e-12, None)
        return pooled.astype(np.float32, copy=False), int(arrays["attention_mask"].sum())

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model sees of ``texts`` (special tokens included, after truncation)."""
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
        return sum(sum(e.attention_mask) for e in encodings)

    def predict(self, inputs: list[Any], parameters: dict[str, Any]) -> Prediction:
        """One ``{"embedding": [...]}`` per input."""
        if self._session is None:
            raise RuntimeFailure(f"{self.manifest.ref} is not loaded")
        texts = [_text(item, i) for i, item in enumerate(inputs)]
        normalize = bool(parameters.get("normalize", self.manifest.options.get("normalize", True)))
        batch_size = max(1, int(self.manifest.options.get("batch_size", 32)))
        # Like sentence-transformers, batch texts of similar length to waste less on padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.empty((len(texts), self.dimensions), dtype=np.float32)
        tokens = 0
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            vectors[chunk], counted = self._encode([texts[i] for i in chunk], normalize)
            tokens += counted
        dims = parameters.get("dimensions")
        rows = vectors.tolist()
        if isinstance(dims, int) and 0 < dims < self.dimensions:
            rows = [row[:dims] for row in rows]
        results = [{"embedding": row} for row in rows]
        return Prediction(results=results, usage=Usage(input_tokens=tokens))

    def unload(self) -> None:
        """Close the session."""
        self._session = None
        self._tokenizer = None

    def metadata(self) -> dict[str, Any]:
        """Embedding size and sequence limit."""
        if self._session is None:
            return {}
        return {"dimensions": self.dimensions, "max_seq_length": self.max_seq_length}
