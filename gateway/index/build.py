"""Building, extending and pruning copyright indexes on disk.

Every write goes to a hidden sibling directory that is renamed over the
index only when complete, so an interrupted build leaves the previous index
intact and the next run simply starts again (``safely restartable``). A
reader (``IndexManager``) that looks while the two renames happen finds no
manifest and keeps serving the index it already has.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import IndexUnavailable
from gateway.index.corpus import CorpusReport, Document, read_corpus
from gateway.index.screen import SCREEN_FILE, SCREEN_VECTORS, StaticScreen, distil_table
from gateway.index.store import (
    FORMAT,
    MANIFEST,
    P_BYTE0,
    P_BYTE1,
    CopyrightIndex,
    read_manifest,
)
from gateway.index.text import bloom_add, bloom_size, chunk_spans, ngram_hashes, winnow, words
from gateway.records.manifest import CorpusInfo, Counts, IndexManifest, Update

log = logging.getLogger(__name__)

# past this many passages a flat (exact) FAISS search costs more than the
# latency budget on two cores, so large corpora get an IVF index instead
FLAT_MAX = 20_000


@dataclass
class BuildParams:
    """How a corpus is cut and hashed; recorded in the manifest."""

    # semantic matching compares response sentences with passages, so passages
    # are kept near paragraph size; lexical anchors ignore passage edges
    chunk_words: int = 50
    chunk_overlap: int = 10
    # anchors: winnowed hashes of ``anchor_words``-word n-grams; every copy of
    # at least ``winnow + anchor_words - 1`` words shares one with its source
    anchor_words: int = 4
    winnow: int = 6
    # near anchors: a denser table of shorter n-grams, so a copy with a quarter
    # of its words edited (few intact 4-word runs left) still shares one with
    # its source; 0 leaves them out (the index of an older build has none)
    near_anchor_words: int = 3
    near_winnow: int = 3
    semantic: bool = True
    model: str = "all-MiniLM-L6-v2"
    # a static-embedding first stage, so most windows skip the model (screen.py)
    screen: bool = True
    faiss: str = "auto"  # auto | flat | ivf | hnsw
    flat_max: int = FLAT_MAX
    batch_size: int = 64

    def check(self) -> None:
        if self.chunk_words < 8:
            raise ValueError("chunk_words must be at least 8")
        if not 0 <= self.chunk_overlap < self.chunk_words:
            raise ValueError("chunk_overlap must be >= 0 and smaller than chunk_words")
        if not 2 <= self.anchor_words <= 8:
            raise ValueError("anchor_words must be between 2 and 8")
        if not 1 <= self.winnow <= 32:
            raise ValueError("winnow must be between 1 and 32")
        if self.near_anchor_words and not 2 <= self.near_anchor_words <= 8:
            raise ValueError("near_anchor_words must be 0 (off) or between 2 and 8")
        if not 1 <= self.near_winnow <= 32:
            raise ValueError("near_winnow must be between 1 and 32")
        if self.faiss not in ("auto", "flat", "ivf", "hnsw"):
            raise ValueError("faiss must be auto, flat, ivf or hnsw")


@dataclass
class UpdateReport:
    """What a build, add or remove did, including every input it refused."""

    path: str
    operation: str
    documents: int = 0
    passages: int = 0
    seconds: float = 0.0
    corpus: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    faiss: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["docs_per_second"] = round(self.documents / self.seconds, 1) if self.seconds else None
        return out


def _byte_offsets(text: str) -> np.ndarray | None:
    """Byte offset of each char index (``None`` when text is ASCII: they are equal)."""
    if text.isascii():
        return None
    sizes = np.fromiter((len(ch.encode("utf-8")) for ch in text), dtype=np.int64, count=len(text))
    return np.concatenate([[0], np.cumsum(sizes)])


class _Writer:
    """Accumulates documents into a new index directory."""

    def __init__(
        self,
        tmp: Path,
        params: BuildParams,
        base: CopyrightIndex | None,
        embed: Callable[[list[str]], np.ndarray] | None,
    ):
        self.tmp = tmp
        self.params = params
        self.embed = embed
        self.docs: list[dict[str, Any]] = [dict(d) for d in base.docs] if base else []
        self.passage_parts: list[np.ndarray] = [base.passages] if base is not None else []
        self.n_passages = len(base.passages) if base is not None else 0
        self.hash_parts: list[np.ndarray] = [base.anchor_hash] if base is not None else []
        self.pid_parts: list[np.ndarray] = [base.anchor_pid] if base is not None else []
        self.near_hash_parts: list[np.ndarray] = [base.near_hash] if base is not None else []
        self.near_pid_parts: list[np.ndarray] = [base.near_pid] if base is not None else []
        # every n-gram (not just anchors) goes into a Bloom filter, which lets a
        # scan skip candidates that cannot hold a long enough shared run
        self.base_bloom = base.bloom if base is not None else None
        self.gram_parts: list[np.ndarray] = []
        if base is not None:
            shutil.copyfile(base.path / "texts.bin", tmp / "texts.bin")
        self.blob = open(tmp / "texts.bin", "ab")  # noqa: SIM115
        self.blob_size = self.blob.tell()
        self.pending: list[str] = []
        self.vector_parts: list[np.ndarray] = []
        self.new_passages = 0

    def add(self, doc: Document) -> int:
        text = doc.text
        data = text.encode("utf-8")
        w = words(text)
        spans = chunk_spans(w, self.params.chunk_words, self.params.chunk_overlap)
        if not spans:  # punctuation only: nothing a word-level match could find
            spans_chars = [(0, len(text))]
        else:
            spans_chars = [(w.starts[a], w.ends[b - 1]) for a, b in spans]
        boff = _byte_offsets(text)
        doc_row = len(self.docs)
        first = self.n_passages
        rows = np.zeros((len(spans_chars), 5), dtype=np.int64)
        for i, (c0, c1) in enumerate(spans_chars):
            b0 = c0 if boff is None else int(boff[c0])
            b1 = c1 if boff is None else int(boff[c1])
            rows[i] = (doc_row, c0, c1, self.blob_size + b0, self.blob_size + b1)
            if self.embed is not None:
                self.pending.append(text[c0:c1])
        # anchors over the whole document, so n-grams across passage edges count;
        # each belongs to the passage its first word falls in
        grams = ngram_hashes(w.hashes, self.params.anchor_words)
        picks = winnow(grams, self.params.winnow)
        self.gram_parts.append(grams)
        stride = max(1, self.params.chunk_words - self.params.chunk_overlap)
        if len(picks):
            local = np.minimum(picks // stride, len(spans_chars) - 1)
            self.hash_parts.append(grams[picks])
            self.pid_parts.append((first + local).astype(np.uint32))
        if self.params.near_anchor_words:
            near = ngram_hashes(w.hashes, self.params.near_anchor_words)
            near_picks = winnow(near, self.params.near_winnow)
            if len(near_picks):
                local = np.minimum(near_picks // stride, len(spans_chars) - 1)
                self.near_hash_parts.append(near[near_picks])
                self.near_pid_parts.append((first + local).astype(np.uint32))
        self.passage_parts.append(rows)
        self.docs.append(
            {
                "id": doc.id,
                "meta": doc.meta,
                "byte_start": self.blob_size,
                "byte_end": self.blob_size + len(data),
                "chars": len(text),
                "passage_start": first,
                "passage_end": first + len(spans_chars),
            }
        )
        self.blob.write(data)
        self.blob_size += len(data)
        self.n_passages += len(spans_chars)
        self.new_passages += len(spans_chars)
        if self.embed is not None and len(self.pending) >= 4 * self.params.batch_size:
            self._flush()
        return len(spans_chars)

    def flush(self) -> None:
        """Encode the passages still waiting for the model."""
        self._flush()

    def _flush(self) -> None:
        if self.pending and self.embed is not None:
            self.vector_parts.append(self.embed(self.pending))
            self.pending = []

    def finish(self) -> tuple[np.ndarray | None, int]:
        self._flush()
        self.blob.close()
        passages = (
            np.concatenate(self.passage_parts) if self.passage_parts else np.zeros((0, 5), np.int64)
        )
        np.save(self.tmp / "passages.npy", passages)
        hashes = np.concatenate(self.hash_parts) if self.hash_parts else np.zeros(0, np.uint64)
        pids = np.concatenate(self.pid_parts) if self.pid_parts else np.zeros(0, np.uint32)
        order = np.argsort(hashes, kind="stable")
        grams = np.concatenate(self.gram_parts) if self.gram_parts else np.zeros(0, np.uint64)
        if self.base_bloom is not None and len(self.base_bloom):
            # an added batch joins the existing filter; it fills up, which only
            # costs extra candidate checks, until the next full build
            bloom = self.base_bloom.copy()
        else:
            bloom = np.zeros(bloom_size(len(np.unique(grams))) // 8, np.uint8)
        bloom_add(bloom, grams)
        near_h = (
            np.concatenate(self.near_hash_parts) if self.near_hash_parts else np.zeros(0, np.uint64)
        )
        near_p = (
            np.concatenate(self.near_pid_parts) if self.near_pid_parts else np.zeros(0, np.uint32)
        )
        near_order = np.argsort(near_h, kind="stable")
        np.savez(
            self.tmp / "anchors.npz",
            hash=hashes[order],
            pid=pids[order],
            bloom=bloom,
            near_hash=near_h[near_order],
            near_pid=near_p[near_order],
        )
        with open(self.tmp / "docs.jsonl", "w", encoding="utf-8") as fh:
            for d in self.docs:
                fh.write(json.dumps(d, ensure_ascii=False) + "\n")
        vectors = np.concatenate(self.vector_parts) if self.vector_parts else None
        return vectors, len(passages)

    def abort(self) -> None:
        if not self.blob.closed:
            self.blob.close()


def make_faiss(vectors: np.ndarray, kind: str, flat_max: int = FLAT_MAX) -> tuple[Any, dict]:
    """A FAISS inner-product index for unit vectors, chosen by corpus size."""
    import faiss

    n, dim = vectors.shape
    if kind == "auto":
        kind = "flat" if n <= flat_max else "ivf"
    info: dict[str, Any] = {"metric": "inner_product", "dim": dim}
    index: Any
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        info["type"] = "Flat"
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
        info.update(type="HNSW32", ef_search=64)
    else:
        # 2048 lists keep training to seconds on one core; with nprobe 16 a
        # query still scans under 1% of a million passages
        nlist = max(16, min(2048, int(4 * math.sqrt(max(n, 1)))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        rng = np.random.default_rng(0)
        sample = vectors[rng.choice(n, size=min(n, 40 * nlist), replace=False)]
        index.train(np.ascontiguousarray(sample, np.float32))
        nprobe = 16
        index.nprobe = nprobe
        info.update(type=f"IVF{nlist},Flat", nlist=nlist, nprobe=nprobe)
    if n:
        index.add(np.ascontiguousarray(vectors, np.float32))
    return index, info


def _embedder(params: BuildParams) -> Callable[[list[str]], np.ndarray] | None:
    if not params.semantic:
        return None
    from gateway.embedding import get_embedder

    embedder = get_embedder(params.model)
    return lambda texts: embedder.encode(texts, batch_size=params.batch_size)


def _tmp_dir(out: Path) -> Path:
    tmp = out.parent / f".{out.name}.partial"
    if tmp.exists():
        print(f"note: removing an unfinished build at {tmp}", file=sys.stderr)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


INDEX_FILES = frozenset(
    {
        MANIFEST,
        "docs.jsonl",
        "texts.bin",
        "passages.npy",
        "anchors.npz",
        "vectors.faiss",
        SCREEN_FILE,
        SCREEN_VECTORS,
    }
)


def _swap(tmp: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        # the directory may also hold the corpus it was built from (the
        # shipped sample does); those files move into the new build
        for item in out.iterdir():
            if item.name not in INDEX_FILES and not (tmp / item.name).exists():
                if item.is_file():
                    os.link(item, tmp / item.name)
                else:
                    shutil.copytree(item, tmp / item.name)
        os.rename(out, old)
    os.rename(tmp, out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _progress(total: int | None, enabled: bool, desc: str, unit: str = "doc"):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, file=sys.stderr)


@contextmanager
def _stage(enabled: bool, what: str) -> Iterator[None]:
    """A start and an end line, with the seconds taken, for a stage without steps to count."""
    if not enabled:
        yield
        return
    print(f"{what}...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    yield
    print(f"{what}: done in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)


def _ingest(
    writer: _Writer,
    docs: Iterable[Document],
    report: CorpusReport,
    progress: bool,
    desc: str,
) -> int:
    # passages are encoded in batches as documents are read, so one bar covers both
    if writer.embed is not None:
        desc = f"{desc} and encoding"
    count = 0
    with _progress(None, progress, desc) as bar:
        for doc in docs:
            writer.add(doc)
            count += 1
            # documents vary in size; the passages count shows the work done
            postfix = {"passages": writer.new_passages}
            if report.problems:
                postfix["problems"] = len(report.problems)
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
        writer.flush()
    return count


def build_index(
    corpus: str | Path,
    out: str | Path,
    params: BuildParams | None = None,
    *,
    progress: bool = False,
) -> UpdateReport:
    """Index ``corpus`` into the directory ``out`` (replacing any index there)."""
    params = params or BuildParams()
    params.check()
    out = Path(out)
    started = time.time()
    t0 = time.perf_counter()
    tmp = _tmp_dir(out)
    embed = None
    if params.semantic:
        with _stage(progress, f"loading the model {params.model}"):
            embed = _embedder(params)
    report = CorpusReport()
    writer = _Writer(tmp, params, None, embed)
    try:
        n_docs = _ingest(writer, read_corpus(corpus, report), report, progress, "reading")
        with _stage(progress, "writing the lexical index"):
            vectors, n_passages = writer.finish()
        faiss_info = None
        if params.semantic:
            import faiss

            if vectors is None:
                dim = _model_dim(params.model)
                vectors = np.zeros((0, dim), np.float32)
            with _stage(progress, f"indexing {len(vectors)} passage vectors"):
                index, faiss_info = make_faiss(vectors, params.faiss, params.flat_max)
                faiss.write_index(index, str(tmp / "vectors.faiss"))
        screen_info = (
            _build_screen(tmp, params, progress) if params.semantic and params.screen else None
        )
        seconds = time.perf_counter() - t0
        manifest = IndexManifest(
            format=FORMAT,
            name=out.name,
            created_at=_iso(started),
            updated_at=_iso(time.time()),
            build_seconds=round(seconds, 3),
            model=params.model if params.semantic else None,
            params=asdict(params),
            counts=Counts(
                documents=n_docs,
                passages=n_passages,
                anchors=int(sum(len(h) for h in writer.hash_parts)),
                vectors=0 if vectors is None else len(vectors),
            ),
            corpus=CorpusInfo(path=str(corpus), sha256=report.sha256, **report.summary()),
            faiss=faiss_info,
            screen=screen_info,
        )
        with _stage(progress, f"writing {out}"):
            manifest.write(tmp)
            _swap(tmp, out)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return UpdateReport(
        str(out),
        "build",
        n_docs,
        n_passages,
        round(seconds, 3),
        report.summary(),
        [str(p) for p in report.problems],
        faiss_info["type"] if faiss_info else None,
    )


def _passage_texts(directory: Path, first: int = 0) -> list[str]:
    """Text of the passages from row ``first`` on, read back from a written directory."""
    rows = np.load(directory / "passages.npy")[first:]
    data = (directory / "texts.bin").read_bytes()
    return [data[int(r[P_BYTE0]) : int(r[P_BYTE1])].decode("utf-8") for r in rows]


# a model's token table is the same for every corpus: distil it once per process
_DISTILLED: dict[str, np.ndarray] = {}


def _build_screen(tmp: Path, params: BuildParams, progress: bool = False) -> dict[str, Any]:
    """Distil and fit the static screen to the passages just written, and index them."""
    import faiss

    from gateway.embedding import get_embedder

    t0 = time.perf_counter()
    model = get_embedder(params.model).model
    table = _DISTILLED.get(params.model)
    if table is None:
        # every vocabulary piece goes through the model once: the longest stage of a small build
        with _progress(len(model.tokenizer), progress, "distilling the screen", "piece") as bar:
            table = _DISTILLED[params.model] = distil_table(model, step=bar.update)
    texts = _passage_texts(tmp)
    with _stage(progress, f"fitting the screen to {len(texts)} passages"):
        screen, vectors = StaticScreen.fit(model, texts, table)
        screen.save(tmp)
        index, info = make_faiss(vectors, params.faiss, params.flat_max)
        faiss.write_index(index, str(tmp / SCREEN_VECTORS))
    return {
        "components_removed": len(screen.components),
        "vocabulary": len(screen.table),
        "faiss": info,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _extend_screen(base: CopyrightIndex, tmp: Path, first: int) -> None:
    """Add passages from row ``first`` to a copy of the base index's screen.

    The weights and removed directions stay as fitted at build time; a rebuild
    refits them when the corpus has changed a lot.
    """
    import faiss

    shutil.copyfile(base.path / SCREEN_FILE, tmp / SCREEN_FILE)
    index = faiss.read_index(str(base.path / SCREEN_VECTORS))
    texts = _passage_texts(tmp, first)
    if texts and base.screen is not None:
        index.add(np.ascontiguousarray(base.screen.encode(texts), np.float32))
    faiss.write_index(index, str(tmp / SCREEN_VECTORS))


def _model_dim(model: str) -> int:
    from gateway.embedding import get_embedder

    return get_embedder(model).dim


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _load(out: Path) -> CopyrightIndex:
    return CopyrightIndex(out)


def add_documents(
    index_dir: str | Path, corpus: str | Path, *, progress: bool = False
) -> UpdateReport:
    """Add the documents of ``corpus`` to an index without rebuilding it.

    Ids already in the index are refused as duplicates; remove them first
    to replace a document. A flat FAISS index stays flat: rebuild when it
    grows past ``flat_max`` passages.
    """
    out = Path(index_dir)
    base = _load(out)
    params = BuildParams(**base.manifest.params)
    if not base.near_anchor_words:
        # an index from before the near anchors: new documents follow its
        # layout, and a rebuild adds the near anchors to all of them
        params.near_anchor_words = 0
    t0 = time.perf_counter()
    tmp = _tmp_dir(out)
    embed = _embedder(params) if base.has_vectors else None
    report = CorpusReport()
    writer = _Writer(tmp, params, base, embed)
    try:
        known = [d["id"] for d in base.docs]
        n_docs = _ingest(writer, read_corpus(corpus, report, known), report, progress, "adding")
        vectors, n_passages = writer.finish()
        if base.has_vectors:
            import faiss

            index = faiss.read_index(str(base.path / "vectors.faiss"))
            if vectors is not None and len(vectors):
                index.add(np.ascontiguousarray(vectors, np.float32))
            faiss.write_index(index, str(tmp / "vectors.faiss"))
        if base.screen is not None:
            _extend_screen(base, tmp, len(base.passages))
        manifest = _updated_manifest(base, writer, "add", n_docs, report)
        manifest.write(tmp)
        base.close()
        _swap(tmp, out)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return UpdateReport(
        str(out),
        "add",
        n_docs,
        writer.new_passages,
        round(time.perf_counter() - t0, 3),
        report.summary(),
        [str(p) for p in report.problems],
        (manifest.faiss or {}).get("type"),
    )


def remove_documents(index_dir: str | Path, ids: Iterable[str]) -> UpdateReport:
    """Take documents down by id: their text is erased and they never match again.

    Anchors of removed documents are dropped and their text bytes are
    overwritten; their vectors stay in FAISS but are filtered out of every
    search (a rebuild compacts them away).
    """
    out = Path(index_dir)
    base = _load(out)
    t0 = time.perf_counter()
    problems: list[str] = []
    targets: list[int] = []
    for doc_id in ids:
        row = base.doc_index.get(doc_id)
        if row is None:
            problems.append(f"{doc_id}: unknown-id: no document with this id in the index")
        elif base.docs[row].get("removed"):
            problems.append(f"{doc_id}: already-removed: the document was removed before")
        else:
            targets.append(row)
    tmp = _tmp_dir(out)
    try:
        for name in ("texts.bin", "passages.npy", "vectors.faiss", SCREEN_FILE, SCREEN_VECTORS):
            if (base.path / name).exists():
                shutil.copyfile(base.path / name, tmp / name)
        docs = [dict(d) for d in base.docs]
        with open(tmp / "texts.bin", "r+b") as fh:
            for row in targets:
                d = docs[row]
                d["removed"] = True
                d["removed_at"] = _iso(time.time())
                fh.seek(d["byte_start"])
                fh.write(b" " * (d["byte_end"] - d["byte_start"]))
        with open(tmp / "docs.jsonl", "w", encoding="utf-8") as fh:
            for d in docs:
                fh.write(json.dumps(d, ensure_ascii=False) + "\n")
        gone = np.zeros(len(docs), bool)
        gone[targets] = True
        for row, d in enumerate(docs):
            gone[row] |= bool(d.get("removed"))
        if len(base.anchor_pid):
            keep = ~gone[base.passages[base.anchor_pid.astype(np.int64), 0]]
        else:
            keep = np.zeros(0, bool)
        bloom = base.bloom if base.bloom is not None else np.zeros(0, np.uint8)
        if len(base.near_pid):
            near_keep = ~gone[base.passages[base.near_pid.astype(np.int64), 0]]
        else:
            near_keep = np.zeros(0, bool)
        np.savez(
            tmp / "anchors.npz",
            hash=base.anchor_hash[keep],
            pid=base.anchor_pid[keep],
            bloom=bloom,
            near_hash=base.near_hash[near_keep],
            near_pid=base.near_pid[near_keep],
        )
        old = base.manifest
        manifest = old.model_copy(
            update={
                "generation": old.generation + 1,
                "updated_at": _iso(time.time()),
                "updates": (
                    *old.updates,
                    Update(op="remove", documents=len(targets), at=_iso(time.time())),
                ),
                "counts": old.counts.model_copy(
                    update={
                        "documents_removed": int(gone.sum()),
                        "anchors": int(np.count_nonzero(keep)),
                    }
                ),
            }
        )
        manifest.write(tmp)
        base.close()
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return UpdateReport(
        str(out), "remove", len(targets), 0, round(time.perf_counter() - t0, 3), {}, problems
    )


def _updated_manifest(
    base: CopyrightIndex, writer: _Writer, op: str, n_docs: int, report: CorpusReport
) -> IndexManifest:
    old = base.manifest
    counts = {
        "documents": old.counts.documents + n_docs,
        "passages": writer.n_passages,
        "anchors": int(sum(len(h) for h in writer.hash_parts)),
    }
    if base.has_vectors:
        counts["vectors"] = writer.n_passages
    update = Update(op=op, documents=n_docs, at=_iso(time.time()), corpus_sha256=report.sha256)
    return old.model_copy(
        update={
            "generation": old.generation + 1,
            "updated_at": _iso(time.time()),
            "updates": (*old.updates, update),
            "counts": old.counts.model_copy(update=counts),
        }
    )


def ensure_index(
    corpus: str | Path,
    out: str | Path,
    params: BuildParams | None = None,
    *,
    progress: bool = False,
) -> Path:
    """Build ``out`` from ``corpus`` unless an index built from the same corpus is there.

    The demo calls this on first run; later runs reuse the index (and keep
    any documents added or removed since).
    """
    out = Path(out)
    if not index_is_current(corpus, out, params):
        build_index(corpus, out, params, progress=progress)
    return out


def index_is_current(
    corpus: str | Path, out: str | Path, params: BuildParams | None = None
) -> bool:
    """Whether ``out`` holds an index of ``corpus`` as it is now, with the layers ``params`` ask."""
    try:
        manifest = read_manifest(Path(out))
    except IndexUnavailable:
        return False
    report = CorpusReport()
    for _ in read_corpus(corpus, report):
        pass
    params = params or BuildParams()
    same_corpus = manifest.corpus.sha256 == report.sha256
    has_layers = not params.semantic or (
        bool(manifest.model) and (bool(manifest.screen) or not params.screen)
    )
    # an index from before the near anchors finds fewer heavily edited copies
    has_near = not params.near_anchor_words or bool(manifest.params.get("near_anchor_words"))
    return same_corpus and has_layers and has_near


__all__ = [
    "BuildParams",
    "UpdateReport",
    "add_documents",
    "build_index",
    "ensure_index",
    "ensure_sample",
    "index_is_current",
    "make_faiss",
    "remove_documents",
    "sample_is_current",
]


def ensure_sample(
    indexes_dir: str | Path = "indexes",
    name: str = "sample",
    *,
    semantic: bool = True,
    progress: bool = False,
) -> Path:
    """Build the shipped sample index (``indexes/sample/corpus.jsonl``) if needed."""
    out = Path(indexes_dir) / name
    return ensure_index(
        out / "corpus.jsonl", out, BuildParams(semantic=semantic), progress=progress
    )


def sample_is_current(
    indexes_dir: str | Path = "indexes", name: str = "sample", *, semantic: bool = True
) -> bool:
    """Whether ``ensure_sample`` would find the shipped sample index built and up to date."""
    out = Path(indexes_dir) / name
    return index_is_current(out / "corpus.jsonl", out, BuildParams(semantic=semantic))
