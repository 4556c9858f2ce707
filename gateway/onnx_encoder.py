"""Sentence vectors from a sentence-transformers model exported to ONNX.

For a model that is a transformer, mean pooling and (optionally) unit
normalisation, such as all-MiniLM-L6-v2, the whole path from token ids to
the sentence vector is exported with ``torch.onnx`` once, in memory, and run
by onnxruntime. On this project's CPUs that scores a sentence 2-3 times
faster than eager PyTorch with the same vectors (to about 1e-6).
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def exportable(model: Any) -> bool:
    """Whether ``model`` is a transformer, mean pooling and maybe normalisation: what we export."""
    names = [type(m).__name__ for m in model]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return False
    config = model[1].get_config_dict()
    mean = config.get("pooling_mode") == "mean" or config.get("pooling_mode_mean_tokens")
    return bool(mean)


class OnnxEncoder:
    """Unit-length mean-pooled vectors, like ``model.encode(..., normalize_embeddings=True)``."""

    def __init__(self, model: Any, max_tokens: int, threads: int = 1, quantize: bool = False):
        import onnxruntime
        import torch

        self.tokenizer = model.tokenizer
        self.max_tokens = max_tokens
        sample = self.tokenizer(["a sample sentence"], return_tensors="pt")
        self.inputs = [n for n in _INPUTS if n in sample]
        graph = io.BytesIO()
        with warnings.catch_warnings():
            # tracing warnings about shapes: the axes below are declared dynamic
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _pooled(model[0].auto_model, self.inputs),
                tuple(sample[n] for n in self.inputs),
                graph,  # type: ignore[arg-type]  # a file object works; the stub says path
                input_names=self.inputs,
                output_names=["vector"],
                dynamic_axes={n: {0: "batch", 1: "tokens"} for n in self.inputs},
                opset_version=17,
                dynamo=False,
            )
        data = graph.getvalue()
        if quantize:
            data = _quantized(data)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            data, options, providers=["CPUExecutionProvider"]
        )

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Float32 unit vectors, ``batch_size`` texts per model call (bounds memory)."""
        return np.vstack(
            [self._run(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        ).astype(np.float32, copy=False)

    def _run(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="np"
        )
        feed = {n: batch[n].astype(np.int64) for n in self.inputs}
        return self.session.run(None, feed)[0]


def _pooled(encoder: Any, inputs: list[str]) -> Any:
    """A module from token ids to the unit-length mean of the encoder's token vectors."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, *tensors):
            named = dict(zip(inputs, tensors, strict=True))
            hidden = self.encoder(**named).last_hidden_state
            mask = named["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return torch.nn.functional.normalize(mean, dim=-1)

    return Pooled().eval()


def _quantized(graph: bytes) -> bytes:
    """Int8 weights for the graph's matrix products (onnxruntime dynamic quantisation)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(graph)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        return target.read_bytes()
