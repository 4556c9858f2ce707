"""A loaded copyright index: documents, passages, n-gram anchors and vectors.

On disk an index is one directory::

    manifest.json   model, parameters, counts, corpus hash, FAISS type, build time
    docs.jsonl      one line per document: id, metadata, byte range, removed flag
    texts.bin       the UTF-8 text of every document, back to back
    passages.npy    int64 rows: doc, char start, char end, byte start, byte end
    anchors.npz     sorted winnowed word n-gram hashes and their passage rows,
                    plus a Bloom filter of every word n-gram, plus (since the
                    near anchors were added) a second, denser table of
                    shorter n-grams for heavily edited copies
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


def manifest_json(path: str | Path) -> tuple[Path, Any]:
    """The manifest file of the index in ``path`` and its parsed JSON, of any index kind."""
    file = Path(path) / MANIFEST
    try:
        return file, json.loads(file.read_text("utf-8"))
    except FileNotFoundError:
        raise IndexMissing(f"{path}: no index here ({MANIFEST} is missing)") from None
    except (OSError, ValueError) as exc:
        raise IndexUnavailable(f"{file}: cannot read the manifest: {exc}") from None


def read_manifest(path: str | Path) -> IndexManifest:
    file, data = manifest_json(path)
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
        # an index built before the near anchors existed has none (0): it still
        # loads and matches, but heavily edited copies are found less often
        # until it is rebuilt
        self.near_anchor_words: int = int(params.get("near_anchor_words") or 0)
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
            has_near = self.near_anchor_words and "near_hash" in z.files
            self.near_hash: np.ndarray = z["near_hash"] if has_near else np.zeros(0, np.uint64)
            self.near_pid: np.ndarray = z["near_pid"] if has_near else np.zeros(0, np.uint32)
        if not len(self.near_hash):
            self.near_anchor_words = 0
        self._buckets = _Buckets(self.anchor_hash)
        self._near_buckets = _Buckets(self.near_hash)
        removed_docs = np.asarray([bool(d.get("removed")) for d in self.docs], dtype=bool)
        self.removed = (
            removed_docs[self.passages[:, P_DOC]] if len(self.passages) else np.zeros(0, bool)
        )
        # the mapping outlives the file object and survives the directory being
        # renamed or deleted by a later update, which is what hot swap needs
        with open(self.path / "texts.bin", "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self.blob: Any = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._token_cache: dict[int, list[str]] = {}
        # words shared by consecutive passages; None when the layout is unknown
        overlap = params.get("chunk_overlap")
        self._overlap: int | None = overlap if isinstance(overlap, int) and overlap >= 0 else None
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

        Regions overlap (every candidate takes its passages and their
        neighbours), so words are cached per passage and joined: consecutive
        passages of a document share exactly ``chunk_overlap`` words. The
        cache is bounded and belongs to this loaded index, so a swap never
        serves stale words.
        """
        if self._overlap is None:
            return tokens(text)
        out: list[str] = []
        for pid in range(first, last + 1):
            hit = self._token_cache.get(pid)
            if hit is None:
                hit = tokens(self.passage_text(pid))
                if len(self._token_cache) >= 16384:
                    self._token_cache.clear()
                self._token_cache[pid] = hit
            out.extend(hit if pid == first else hit[self._overlap :])
        return out

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
    def lookup(
        self, hashes: np.ndarray, max_postings: int, near: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Anchors shared with the query: (query n-gram positions, passage rows).

        ``near`` looks in the table of shorter near anchors instead. An n-gram
        stored in more than ``max_postings`` passages is formulaic (``of the
        united states``) and says nothing about copying, so it is skipped
        rather than flooding verification with candidates.
        """
        table, rows, buckets = self.anchor_hash, self.anchor_pid, self._buckets
        if near:
            table, rows, buckets = self.near_hash, self.near_pid, self._near_buckets
        if len(hashes) == 0 or len(table) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        lo = buckets.first_at_least(table, hashes)
        # most n-grams of a response are in no source: only those that are
        # need their number of postings
        qpos = np.nonzero(table[np.minimum(lo, len(table) - 1)] == hashes)[0]
        if not len(qpos):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        lo = lo[qpos]
        # the run of equal hashes is contiguous: look at most one past the cap
        # instead of searching again for its end
        ahead = lo[:, None] + np.arange(max_postings + 1)
        inside = ahead < len(table)
        same = table[np.minimum(ahead, len(table) - 1)] == hashes[qpos][:, None]
        counts = (same & inside).sum(axis=1)
        keep = counts <= max_postings
        if not keep.any():
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        qpos, lo, counts = qpos[keep], lo[keep], counts[keep]
        rep_q = np.repeat(qpos, counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        pids = rows[np.repeat(lo, counts) + offsets].astype(np.int64)
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
            "near_anchors_bytes": int(self.near_hash.nbytes + self.near_pid.nbytes),
            # bucket starts of both tables, computed at load
            "anchor_offsets_bytes": self._buckets.nbytes + self._near_buckets.nbytes,
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
            "near_anchors": int(len(self.near_hash)),
            "vectors": int(self.vectors.ntotal) if self.vectors is not None else 0,
        }

    def close(self) -> None:
        if isinstance(self.blob, mmap.mmap):
            try:
                self.blob.close()
            except BufferError:  # a scan still holds a slice; the GC closes it later
                pass


# hash tables up to this many entries (8 MB) are searched directly
SMALL_TABLE = 1 << 20


class _Buckets:
    """Where each range of leading hash bits starts in a sorted hash table.

    A binary search over a table of millions of hashes misses the cache at
    almost every step; with the start of every bucket of about 8 entries
    known, a lookup reads one offset and one or two cache lines of the
    table. The offsets (4 bytes per 8 entries) are computed when the index
    is loaded, so the file format does not change.
    """

    def __init__(self, table: np.ndarray):
        n = len(table)
        self.bits = int(min(28, max(1, np.ceil(np.log2(max(n, 2))) - 3)))
        self.shift = np.uint64(64 - self.bits)
        keys = (table >> self.shift).astype(np.int64)
        offsets = np.searchsorted(keys, np.arange((1 << self.bits) + 1))
        self.offsets = offsets.astype(np.uint32 if n < 2**32 else np.int64)

    @property
    def nbytes(self) -> int:
        return int(self.offsets.nbytes)

    def first_at_least(self, table: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        """For each hash, the first table position whose hash is not smaller (searchsorted)."""
        if len(table) <= SMALL_TABLE:
            # a table that fits the cache: one searchsorted costs less than the
            # temporary arrays of the bucket walk below
            return np.searchsorted(table, hashes, side="left")
        b = (hashes >> self.shift).astype(np.int64)
        lo = self.offsets[b].astype(np.int64)
        hi = self.offsets[b + 1].astype(np.int64)
        out = lo.copy()
        size = hi - lo
        # a crowded bucket (one hash in many passages): a binary search there
        crowded = size > 64
        if crowded.any():
            out[crowded] = np.searchsorted(table, hashes[crowded], side="left")
        rows = np.nonzero(~crowded & (size > 0))[0]
        if len(rows):
            width = int(size[rows].max())
            idx = lo[rows, None] + np.arange(width)
            inside = idx < hi[rows, None]
            ge = (table[np.minimum(idx, len(table) - 1)] >= hashes[rows, None]) & inside
            out[rows] = np.where(ge.any(axis=1), lo[rows] + ge.argmax(axis=1), hi[rows])
        return out
