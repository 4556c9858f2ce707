"""The embedding service: ONNX vectors equal PyTorch's; other model shapes stay in PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.embedding import Embedder, get_embedder
from gateway.onnx_encoder import exportable

TEXTS = [
    "The council approved three new bus routes on Tuesday.",
    "short",
    # over the model's 256-token limit: both paths must cut it the same way
    "word " * 400,
]


@pytest.mark.slow
def test_onnx_vectors_equal_pytorch_vectors():
    embedder = Embedder()
    vectors = embedder.encode(TEXTS)
    assert embedder._onnx is not None
    reference = embedder.model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    assert vectors.shape == (3, 384)
    assert np.abs(vectors - reference).max() < 1e-5
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_int8_and_other_model_shapes_stay_on_pytorch(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling

    int8 = Embedder(variant="int8")
    assert int8.encode(TEXTS[:1]).shape == (1, 384)
    assert int8._onnx is None

    base = get_embedder().model
    cls_pooled = SentenceTransformer(modules=[base[0], Pooling(384, pooling_mode="cls")])
    assert exportable(base) and not exportable(cls_pooled)
    cls_pooled.save(str(tmp_path / "cls-model"))
    embedder = Embedder(str(tmp_path / "cls-model"))
    vectors = embedder.encode(TEXTS[:1])
    assert embedder._onnx is None
    reference = embedder.model.encode(TEXTS[:1], normalize_embeddings=True)
    assert np.abs(vectors - reference).max() < 1e-6


@pytest.mark.slow
def test_onnx_vectors_from_several_threads_at_once():
    # scans run on two worker threads; the session and the tokenizer (always
    # called with the same truncation and padding) are shared between them
    from concurrent.futures import ThreadPoolExecutor

    embedder = Embedder(cache_size=0)
    embedder.encode(TEXTS[:1])
    batches = [[f"Sentence {i} about the bus routes.", "word " * (50 + i)] for i in range(40)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(embedder._onnx.encode, batches))
    for batch, vectors in zip(batches, results, strict=True):
        assert np.allclose(vectors, embedder._onnx.encode(batch), atol=1e-6)
