"""The stereotype classifier behind the ``bias`` policy's ``classifier`` signal.

all-MiniLM-L6-v2 fine-tuned with low-rank adapters (LoRA) on every linear
layer of its six encoder blocks, and a logistic head on the mean-pooled,
unit-length sentence vector. ``scripts/train_bias_classifier.py`` trains it.

Only the adapters and the head are shipped (a few hundred kilobytes), not a
second copy of the model: at load time each adapted weight becomes
``W + scale * B @ A`` in a private copy of the packaged base model, so a
score costs one ordinary MiniLM pass and nothing more. By default that model
is then exported to an ONNX graph and run by onnxruntime, which scores a
sentence 2-3 times faster than eager PyTorch on CPU with the same output
(``runtime: torch`` keeps PyTorch).

Artefact layout (``.npz``): ``adapter/<module path>/a`` (rank x in) and
``adapter/<module path>/b`` (out x rank) as float16, ``scale``, ``coef``,
``intercept`` and a ``meta`` JSON string recording how it was trained.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import ConfigError
from gateway.onnx_encoder import OnnxEncoder

# the linear layers of a BERT encoder block that get an adapter
ADAPTED = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
# sentences are scored alone; longer input is cut, as in training
MAX_TOKENS = 128
RUNTIMES = ("onnx", "torch")


def adapted_layers(encoder: Any) -> dict[str, Any]:
    """``{module path: torch.nn.Linear}`` for every layer that takes an adapter."""
    import torch

    return {
        name: module
        for name, module in encoder.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.startswith("encoder.")
        and name.endswith(ADAPTED)
    }


class StereotypeClassifier:
    """Probabilities that sentences state a stereotype; cached by sentence hash."""

    def __init__(
        self,
        path: Path,
        model: str = "all-MiniLM-L6-v2",
        variant: str = "fp32",
        runtime: str = "onnx",
        cache_size: int = 4096,
    ):
        from gateway.embedding import check_variant

        try:
            check_variant(variant)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
        self.runtime = runtime
        self.path = path
        self.model_name = model
        self.variant = variant
        try:
            with np.load(path) as data:
                self.meta = json.loads(str(data["meta"]))
                self.coef = data["coef"].astype(np.float32)
                self.intercept = float(data["intercept"][0])
                self._scale = float(data["scale"][0])
                names = [key[len("adapter/") : -2] for key in data.files if key.endswith("/a")]
                self._adapters: dict[str, tuple[np.ndarray, np.ndarray]] = {
                    name: (
                        data[f"adapter/{name}/a"].astype(np.float32),
                        data[f"adapter/{name}/b"].astype(np.float32),
                    )
                    for name in names
                }
        except (
            OSError,
            KeyError,
            ValueError,
            IndexError,
            TypeError,
            EOFError,
            zipfile.BadZipFile,
        ) as exc:
            raise ConfigError(f"{path}: not a bias classifier artefact: {exc}") from None
        if not self._adapters:
            raise ConfigError(f"{path}: not a bias classifier artefact: it holds no adapters")
        self._check_shapes()
        self._model: Any = None
        # a load that failed is not retried on every call; a reload with a
        # fixed artefact builds a new classifier
        self._load_error: ConfigError | None = None
        self._load_lock = threading.Lock()
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _check_shapes(self) -> None:
        """Check the artefact against itself and, for a local model, its config.json.

        The model's weights are loaded only on first use; its config is a few
        hundred bytes, so a wrong artefact fails when the policy is built.
        """
        if self.coef.ndim != 1:
            raise ConfigError(f"{self.path}: coef must be a vector, not {self.coef.shape}")
        for name, (a, b) in self._adapters.items():
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ConfigError(
                    f"{self.path}: adapter {name} has A {a.shape} and B {b.shape}; "
                    "A must be rank x in and B out x rank"
                )
        from gateway.embedding import resolve_model

        config_file = Path(resolve_model(self.model_name)) / "config.json"
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
            hidden, inner = int(config["hidden_size"]), int(config["intermediate_size"])
            blocks = int(config["num_hidden_layers"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # a hub model or another architecture: checked at load time
        if self.coef.shape[0] != hidden:
            raise ConfigError(
                f"{self.path}: the head has {self.coef.shape[0]} weights; "
                f"{self.model_name!r} gives {hidden}-dimensional vectors"
            )
        shapes = {
            "attention.self.query": (hidden, hidden),
            "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden),
            "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (inner, hidden),
            "output.dense": (hidden, inner),
        }
        expected = {
            f"encoder.layer.{i}.{suffix}": shape
            for i in range(blocks)
            for suffix, shape in shapes.items()
        }
        for name, (a, b) in self._adapters.items():
            if name not in expected:
                raise ConfigError(
                    f"{self.path}: adapters name layers that {self.model_name!r} "
                    f"does not have: {name}"
                )
            if (b.shape[0], a.shape[1]) != expected[name]:
                raise ConfigError(
                    f"{self.path}: adapter {name} is {b.shape[0]}x{a.shape[1]}, "
                    f"the model's layer is {expected[name][0]}x{expected[name][1]}"
                )

    def _load(self) -> Any:
        with self._load_lock:
            if self._load_error is not None:
                raise self._load_error
            if self._model is None:
                try:
                    self._model = self._merged_model()
                except ConfigError as exc:
                    self._load_error = exc
                    raise
                except Exception as exc:
                    self._load_error = ConfigError(f"{self.path}: cannot load the model: {exc}")
                    raise self._load_error from exc
        return self._model

    def _merged_model(self) -> Any:
        import torch
        from sentence_transformers import SentenceTransformer

        from gateway.embedding import _quantize, resolve_model

        # one core per scan, like the shared embedder: scans run side by side
        torch.set_num_threads(1)
        model = SentenceTransformer(resolve_model(self.model_name), device="cpu")
        model.max_seq_length = MAX_TOKENS
        layers = adapted_layers(model[0].auto_model)
        missing = sorted(set(self._adapters) - set(layers))
        if missing:
            raise ConfigError(
                f"{self.path}: adapters name layers that {self.model_name!r} does not have: "
                f"{', '.join(missing[:3])}"
            )
        with torch.no_grad():
            for name, (a, b) in self._adapters.items():
                weight = layers[name].weight
                if weight.shape != (b.shape[0], a.shape[1]):
                    raise ConfigError(
                        f"{self.path}: adapter {name} is {b.shape[0]}x{a.shape[1]}, "
                        f"the model's layer is {tuple(weight.shape)}"
                    )
                weight += self._scale * torch.from_numpy(b @ a)
        model.eval()
        if self.runtime == "onnx":
            return OnnxEncoder(model, MAX_TOKENS, quantize=self.variant == "int8")
        return _TorchEncoder(_quantize(model) if self.variant == "int8" else model)

    def logits(self, texts: list[str]) -> np.ndarray:
        """Raw scores (no cache), for benchmarks that rank sentences."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        vectors = self._load().encode(texts)
        return vectors.astype(np.float32) @ self.coef + self.intercept

    def scores(self, texts: list[str]) -> list[float]:
        keys = [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts]
        out: list[float | None] = []
        with self._lock:
            for key in keys:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                out.append(hit)
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            logits = self.logits([texts[i] for i in missing])
            probs = 1.0 / (1.0 + np.exp(-logits))
            with self._lock:
                for i, p in zip(missing, probs, strict=True):
                    out[i] = float(p)
                    self._cache[keys[i]] = float(p)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return out  # type: ignore[return-value]


class _TorchEncoder:
    """Unit-length mean-pooled vectors from the sentence-transformers model."""

    def __init__(self, model: Any):
        self.model = model

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts,
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
