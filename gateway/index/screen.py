"""A static-embedding screen in front of the semantic (paraphrase) layer.

Running the sentence transformer over every window of a 2,000-character
answer costs a few hundred milliseconds on two cores. Nearly all windows of
ordinary traffic are nowhere near a protected passage, so a cheap first stage
decides which windows are worth the model.

The screen is distilled from the same model at build time:

1. **Token table.** Every word-piece of the model's vocabulary goes through
   the model alone (``[CLS] piece [SEP]``); its mean-pooled output is that
   piece's static vector. This takes seconds and needs no training data.
2. **Weights from the corpus.** A text's vector is the weighted mean of its
   pieces' vectors, with smooth inverse frequency weights ``a / (a + p)``
   where ``p`` is the piece's frequency in the indexed corpus, so words
   common in *this* corpus count for little.
3. **Common directions removed.** Averaged vectors of any two texts share a
   large common part; the corpus mean and its top principal directions are
   subtracted before normalising, which is what makes cosines discriminate.

A window goes on to the real model only when its static cosine with some
passage reaches the policy's ``semantic_screen`` threshold. The defaults
keep 99% of the paraphrases the model finds (``bench/copyright_quality.py``
measures it) while sending a few percent of unrelated windows through.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SCREEN_FILE = "screen.npz"
SCREEN_VECTORS = "screen.faiss"
# smooth inverse frequency constant: pieces rarer than ~1 in 1,000 keep most weight
SIF_A = 1e-3
# principal directions removed; more need more passages to estimate
MAX_COMPONENTS = 8
PASSAGES_PER_COMPONENT = 50


def distil_table(
    model: Any, batch: int = 1024, step: Callable[[int], object] | None = None
) -> np.ndarray:
    """The static vector of every vocabulary piece (float32, rows by token id).

    ``step`` is told how many pieces each batch covered (a progress bar's ``update``).
    """
    import torch

    tok = model.tokenizer
    encoder = model[0].auto_model
    size = len(tok)
    table = np.zeros((size, encoder.config.hidden_size), np.float32)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    with torch.inference_mode():
        for start in range(0, size, batch):
            ids = torch.arange(start, min(size, start + batch))
            seq = torch.stack([torch.full_like(ids, cls), ids, torch.full_like(ids, sep)], 1)
            hidden = encoder(input_ids=seq, attention_mask=torch.ones_like(seq)).last_hidden_state
            table[start : start + len(ids)] = hidden.mean(1).numpy()
            if step is not None:
                step(len(ids))
    return table


class StaticScreen:
    """Encodes texts with the distilled table; fitted to one corpus."""

    def __init__(
        self,
        table: np.ndarray,
        weights: np.ndarray,
        mean: np.ndarray,
        components: np.ndarray,
        tokenizer: Any,
    ):
        self.table = table
        self.weights = weights
        self.mean = mean
        self.components = components
        self.tokenizer = tokenizer
        self._lock = threading.Lock()  # fast tokenizers are not safe to share across threads

    # -- building -------------------------------------------------------------
    @classmethod
    def fit(
        cls, model: Any, passages: list[str], table: np.ndarray | None = None
    ) -> tuple[StaticScreen, np.ndarray]:
        """Fit to ``passages`` (distilling ``model`` unless ``table`` is given).

        Also returns the passages' vectors in the screen's space.
        """
        tokenizer = model.tokenizer
        if table is None:
            table = distil_table(model)
        table = table - table.mean(axis=0)
        counts = np.ones(len(table), np.float64)  # add-one: unseen pieces are rare, not absent
        ids = _piece_ids(tokenizer, passages)
        for row in ids:
            np.add.at(counts, row, 1)
        weights = (SIF_A / (SIF_A + counts / counts.sum())).astype(np.float32)
        screen = cls(
            table.astype(np.float16),
            weights,
            np.zeros(table.shape[1], np.float32),
            np.zeros((0, table.shape[1]), np.float32),
            tokenizer,
        )
        raw = screen._raw(ids)
        if len(raw) >= 2:
            screen.mean = raw.mean(axis=0)
            k = min(MAX_COMPONENTS, len(raw) // PASSAGES_PER_COMPONENT)
            if k:
                _, _, vt = np.linalg.svd(raw - screen.mean, full_matrices=False)
                screen.components = vt[:k].astype(np.float32)
        return screen, screen._finish(raw)

    def save(self, directory: Path) -> None:
        np.savez(
            directory / SCREEN_FILE,
            table=self.table,
            weights=self.weights,
            mean=self.mean,
            components=self.components,
        )

    @classmethod
    def load(cls, directory: Path, model_path: str) -> StaticScreen:
        from transformers import AutoTokenizer

        with np.load(directory / SCREEN_FILE) as z:
            parts = {name: z[name] for name in ("table", "weights", "mean", "components")}
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        return cls(tokenizer=tokenizer, **parts)

    # -- encoding -------------------------------------------------------------
    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length static vectors of ``texts`` (float32)."""
        with self._lock:
            ids = _piece_ids(self.tokenizer, texts)
        return self._finish(self._raw(ids))

    def _raw(self, ids: list[list[int]]) -> np.ndarray:
        out = np.zeros((len(ids), self.table.shape[1]), np.float32)
        for i, row in enumerate(ids):
            if row:
                w = self.weights[row]
                out[i] = (w @ self.table[row].astype(np.float32)) / len(row)
        return out

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        x = raw - self.mean
        if len(self.components):
            x -= (x @ self.components.T) @ self.components
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return (x / np.maximum(norms, 1e-9)).astype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.table.nbytes + self.weights.nbytes)


def _piece_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
