"""A loaded copyright index: documents, passages, n-gram anchors and vectors.

On disk an index is one directory::

    manifest.json   model, parameters, counts, corpus hash, FAISS type, build time
    docs.jsonl      one line per document: id, metadata, byte range, removed flag
    texts.bin       the UTF-8 text of every document, back to back
    passages.npy    int64 rows: doc, char start, char end, byte start, byte end
    anchors.npz     sorted winnowed word n-gram hashes and their passage rows,
                    plus a Bloom filter of every word n-gram
    vectors.faiss   passage embeddings (absent for a lexical-only index)
    screen.npz      the static-embedding screen distilled from the model (screen.py)
    screen.faiss    passage vectors in the screen's space, same rows as vectors.faiss

A loaded ``CopyrightIndex`` is never changed in place: updates write a new
directory and the ``IndexManager`` swaps the whole object, so a scan that
holds the old object keeps a consistent view.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from gateway.errors import IndexMissing, IndexUnavailable
from gateway.index.screen import SCREEN_FILE, SCREEN_VECTORS, StaticScreen
from gateway.index.text import tokens
from gateway.records.manifest import FILE as MANIFEST
from gateway.records.manifest import IndexManifest

FORMAT = 1

# passage row columns
P_DOC, P_CHAR0, P_CHAR1, P_BYTE0, P_BYTE1 = range(5)


def read_manifest(path: str | Path) -> IndexManifest:
    file = Path(path) / MANIFEST
    try:
        data = json.loads(file.read_text("utf-8"))
    except FileNotFoundError:
        raise IndexMissing(f"{path}: no index here ({MANIFEST} is missing)") from None
    except (OSError, ValueError) as exc:
        raise IndexUnavailable(f"{file}: cannot read the manifest: {exc}") from None
    try:
        return IndexManifest.from_json(data)
    except ValidationError as exc:
        raise IndexUnavailable(f"{file}: not a manifest this gateway can read: {exc}") from None


class CopyrightIndex:
    """Read-only view of one index directory, loaded into memory (texts are mapped)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if self.manifest.format != FORMAT:
            raise IndexUnavailable(f"{self.path}: index format {self.manifest.format} unknown")
        params = self.manifest.params
        self.anchor_words: int = params["anchor_words"]
        self.winnow: int = params["winnow"]
        self.docs: list[dict[str, Any]] = []
        with open(self.path / "docs.jsonl", encoding="utf-8") as fh:
            for line in fh:
                self.docs.append(json.loads(line))
        self.doc_index = {d["id"]: i for i, d in enumerate(self.docs)}
        # mapped, not read: worker processes share one copy in the page cache
        self.passages: np.ndarray = np.load(self.path / "passages.npy", mmap_mode="r")
        with np.load(self.path / "anchors.npz") as z:
            self.anchor_hash: np.ndarray = z["hash"]
            self.anchor_pid: np.ndarray = z["pid"]
            self.bloom: np.ndarray | None = z["bloom"] if "bloom" in z.files else None
        removed_docs = np.asarray([bool(d.get("removed")) for d in self.docs], dtype=bool)
        self.removed = (
            removed_docs[self.passages[:, P_DOC]] if len(self.passages) else np.zeros(0, bool)
        )
        # the mapping outlives the file object and survives the directory being
        # renamed or deleted by a later update, which is what hot swap needs
        with open(self.path / "texts.bin", "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self.blob: Any = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._token_cache: dict[tuple[int, int], list[str]] = {}
        self.vectors = self._read_faiss("vectors.faiss", self.manifest.faiss)
        self.screen: StaticScreen | None = None
        self.screen_vectors = None
        screen_info = self.manifest.screen
        if screen_info and self.vectors is not None and (self.path / SCREEN_FILE).exists():
            from gateway.embedding import resolve_model

            self.screen = StaticScreen.load(self.path, resolve_model(self.model or ""))
            self.screen_vectors = self._read_faiss(SCREEN_VECTORS, screen_info.get("faiss"))

    def _read_faiss(self, name: str, info: dict[str, Any] | None) -> Any:
        if not (self.path / name).exists():
            return None
        import faiss

        # one compute thread per call: the gateway runs scans concurrently
        # on two cores, and OpenMP fan-out would only oversubscribe them
        faiss.omp_set_num_threads(1)
        # mapped read-only, not read: worker processes share one copy in the
        # page cache (faiss maps flat indexes; others it reads as before). A
        # later update renames a new directory over this one, so the mapped
        # file is never rewritten under us
        flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) | getattr(faiss, "IO_FLAG_READ_ONLY", 0)
        index = faiss.read_index(str(self.path / name), flags)
        info = info or {}
        if info.get("nprobe") and hasattr(index, "nprobe"):
            index.nprobe = info["nprobe"]
        if info.get("ef_search") and hasattr(index, "hnsw"):
            index.hnsw.efSearch = info["ef_search"]
        return index

    # -- identity ---------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model(self) -> str | None:
        return self.manifest.model

    @property
    def has_vectors(self) -> bool:
        return self.vectors is not None

    def __len__(self) -> int:
        return len(self.passages)

    # -- text ---------------------------------------------------------------
    def doc_text(self, doc: int) -> str:
        d = self.docs[doc]
        return bytes(self.blob[d["byte_start"] : d["byte_end"]]).decode("utf-8")

    def region(self, first: int, last: int) -> tuple[str, int, int]:
        """Text of passages ``first..last`` (one document), its doc and char offset."""
        row0, row1 = self.passages[first], self.passages[last]
        text = bytes(self.blob[int(row0[P_BYTE0]) : int(row1[P_BYTE1])]).decode("utf-8")
        return text, int(row0[P_DOC]), int(row0[P_CHAR0])

    def region_tokens(self, first: int, last: int, text: str) -> list[str]:
        """Folded words of a region (``text`` is ``region(first, last)[0]``), cached.

        Popular passages are aligned again and again; the cache is bounded and
        belongs to this loaded index, so a swap never serves stale words.
        """
        key = (first, last)
        hit = self._token_cache.get(key)
        if hit is None:
            hit = tokens(text)
            if len(self._token_cache) >= 4096:
                self._token_cache.clear()
            self._token_cache[key] = hit
        return hit

    def passage_text(self, pid: int) -> str:
        return self.region(pid, pid)[0]

    def doc_passages(self, doc: int) -> tuple[int, int]:
        """First and last passage row of ``doc`` (rows of a document are consecutive)."""
        d = self.docs[doc]
        return d["passage_start"], d["passage_end"] - 1

    def evidence(self, doc: int) -> dict[str, Any]:
        d = self.docs[doc]
        return {"source_id": d["id"], "source": dict(d.get("meta") or {})}

    # -- lookups ------------------------------------------------------------
    def lookup(self, hashes: np.ndarray, max_postings: int) -> tuple[np.ndarray, np.ndarray]:
        """Anchors shared with the query: (query n-gram positions, passage rows).

        An n-gram stored in more than ``max_postings`` passages is formulaic
        (``of the united states``) and says nothing about copying, so it is
        skipped rather than flooding verification with candidates.
        """
        if len(hashes) == 0 or len(self.anchor_hash) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        lo = np.searchsorted(self.anchor_hash, hashes, side="left")
        hi = np.searchsorted(self.anchor_hash, hashes, side="right")
        counts = hi - lo
        keep = (counts > 0) & (counts <= max_postings)
        if not keep.any():
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        qpos = np.nonzero(keep)[0]
        lo, counts = lo[keep], counts[keep]
        rep_q = np.repeat(qpos, counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        pids = self.anchor_pid[np.repeat(lo, counts) + offsets].astype(np.int64)
        live = ~self.removed[pids]
        return rep_q[live], pids[live]

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` live passages per query vector: (cosine scores, passage rows)."""
        if self.vectors is None:
            raise IndexUnavailable(
                f"{self.path}: built without vectors; semantic matching needs them"
            )
        return self._search(self.vectors, vectors, k)

    def screen_search(self, texts: list[str]) -> np.ndarray:
        """Each text's best static cosine with a live passage (-1 when there is none)."""
        if self.screen is None or self.screen_vectors is None:
            raise IndexUnavailable(f"{self.path}: built without a screen")
        scores, _ = self._search(self.screen_vectors, self.screen.encode(texts), 1)
        if scores.shape[1] == 0:
            return np.full(len(texts), -1.0, np.float32)
        return scores[:, 0]

    def _search(self, index: Any, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if index.ntotal == 0:
            n = len(vectors)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        # ask for extra rows so removed passages do not crowd out live ones
        extra = k + min(int(self.removed.sum()), 4 * k)
        scores, rows = index.search(np.ascontiguousarray(vectors, np.float32), extra)
        out_s = np.full((len(vectors), k), -1.0, np.float32)
        out_r = np.full((len(vectors), k), -1, np.int64)
        for i in range(len(vectors)):
            j = 0
            for s, r in zip(scores[i], rows[i], strict=True):
                if r < 0 or self.removed[r]:
                    continue
                out_s[i, j], out_r[i, j] = s, r
                j += 1
                if j == k:
                    break
        return out_s, out_r

    # -- inspection ----------------------------------------------------------
    def memory(self) -> dict[str, int]:
        vec_bytes = 0
        if self.vectors is not None:
            vec_bytes = int(self.vectors.ntotal) * int(self.vectors.d) * 4
        screen_bytes = 0
        if self.screen_vectors is not None and self.screen is not None:
            screen_bytes = int(self.screen_vectors.ntotal) * int(self.screen_vectors.d) * 4
            screen_bytes += self.screen.nbytes
        return {
            "passages_bytes": int(self.passages.nbytes),
            "anchors_bytes": int(self.anchor_hash.nbytes + self.anchor_pid.nbytes),
            "bloom_bytes": int(self.bloom.nbytes) if self.bloom is not None else 0,
            "texts_bytes_mapped": len(self.blob),
            "vectors_bytes": vec_bytes,
            "screen_bytes": screen_bytes,
        }

    def counts(self) -> dict[str, int]:
        removed = sum(1 for d in self.docs if d.get("removed"))
        return {
            "documents": len(self.docs) - removed,
            "documents_removed": removed,
            "passages": int((~self.removed).sum()),
            "passages_removed": int(self.removed.sum()),
            "anchors": int(len(self.anchor_hash)),
            "vectors": int(self.vectors.ntotal) if self.vectors is not None else 0,
        }

    def close(self) -> None:
        if isinstance(self.blob, mmap.mmap):
            try:
                self.blob.close()
            except BufferError:  # a scan still holds a slice; the GC closes it later
                pass
