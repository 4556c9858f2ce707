"""Policy kind ``copyright``: text copied from an indexed corpus.

Three match types, selected per policy:

- ``verbatim``: at least ``min_words`` consecutive words identical to a source
  (after Unicode folding and ignoring punctuation and case).
- ``near_verbatim``: a span of at least ``near_min_words`` words whose word
  alignment with a source has similarity ``>= near_ratio`` (words dropped,
  swapped or replaced).
- ``semantic``: a sentence whose embedding has cosine ``>= semantic_threshold``
  with an indexed passage (paraphrase).

The lexical path finds candidates through winnowed word n-gram anchors,
which measure containment: a 12-word copy inside a 500-word answer shares an
anchor with its source however long the answer is. Candidates are then
aligned word by word to get the exact spans in the response and the source.

Streaming: words are hashed once as they become final; a candidate is
aligned when no new anchor has extended it for a while, and ``hold_from``
keeps every open candidate (and the last words that could still start one)
unreleased, so a copied span is never released before it is judged and
redaction masks exactly the span found.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import Field, field_validator
from rapidfuzz.distance import Indel

from gateway.contract.detector import Finding, ScanContext
from gateway.contract.kind import BuildContext, PolicyKind
from gateway.contract.policy import PolicyBase
from gateway.index.store import P_DOC, CopyrightIndex
from gateway.index.text import (
    Words,
    bloom_has,
    ngram_hashes,
    sentences,
    spans,
    words,
)
from gateway.textnorm import fold

_WORD = re.compile(r"\w+")

MatchType = Literal["verbatim", "near_verbatim", "semantic"]
MATCH_TYPES: tuple[str, ...] = ("verbatim", "near_verbatim", "semantic")

# words between the edits of a near-verbatim copy: a longer unmatched stretch
# ends the copied span
GAP_WORDS = 4
# shortest run of identical words that anchors a near-verbatim alignment
NEAR_ANCHOR = 2


class CopyrightPolicy(PolicyBase):
    kind: Literal["copyright"]
    # name of the index in the gateway's ``indexes:`` configuration
    index: str = "sample"
    match: list[MatchType] = Field(
        default_factory=lambda: list[MatchType](["verbatim", "near_verbatim"])
    )
    # verbatim: this many consecutive identical words
    min_words: int = Field(default=12, ge=4, le=1000)
    # near-verbatim: span length in words and word-alignment similarity
    near_min_words: int = Field(default=12, ge=6, le=1000)
    near_ratio: float = Field(default=0.8, gt=0.5, le=1.0)
    # semantic: cosine similarity between a response sentence and a passage
    semantic_threshold: float = Field(default=0.6, gt=0.0, le=1.0)
    semantic_min_words: int = Field(default=8, ge=3, le=200)
    # embedding variant for response windows (see gateway.embedding)
    embedding: Literal["fp32", "int8"] = "fp32"
    # static-embedding first stage (gateway.index.screen): only windows whose
    # static cosine with some passage reaches this go through the model; null
    # sends every window. Used when the index was built with a screen.
    semantic_screen: float | None = Field(default=0.45, gt=-1.0, lt=1.0)
    # ignore any match shorter than this many characters of the response
    min_span_chars: int = Field(default=0, ge=0)
    # sources that may be quoted at any length: ids, or licences such as
    # ``public-domain`` or a partner's licence name (compared case-insensitively)
    allow_sources: list[str] = Field(default_factory=list)
    allow_licences: list[str] = Field(default_factory=list)
    # a copy of at most this many words is allowed when the response names the
    # source (one of ``attribution_fields`` of its metadata); 0 disables
    quote_max_words: int = Field(default=0, ge=0, le=1000)
    attribution_fields: list[str] = Field(default_factory=lambda: ["title", "owner"])
    # anchors shared by more passages than this are formulaic and skipped
    max_postings: int = Field(default=16, ge=1, le=100000)
    timeout_ms: int = Field(default=5000, gt=0, le=60000)

    @field_validator("match")
    @classmethod
    def _some_match(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("match needs at least one of verbatim, near_verbatim, semantic")
        return list(dict.fromkeys(value))


IndexGetter = Callable[[], CopyrightIndex]


class CopyrightDetector:
    """Built once per policy; each segment scan snapshots the current index."""

    def __init__(
        self,
        config: CopyrightPolicy,
        get_index: IndexGetter,
        embed: Callable[[list[str]], np.ndarray] | None = None,
    ):
        self.config = config
        self._get_index = get_index
        self._embed = embed
        self.semantic = "semantic" in config.match
        self.lexical = "verbatim" in config.match or "near_verbatim" in config.match
        # the embedding model runs in a worker thread; lexical work is about a
        # millisecond and stays on the loop
        self.blocking = self.semantic
        # a rough character figure for the engine; ``hold_from`` is exact
        self.hold_back = 16 * (max(config.min_words, config.near_min_words) + 24)
        if self.semantic:
            self.hold_back = max(self.hold_back, 2000)

    def start(self, ctx: ScanContext) -> CopyScan:
        return CopyScan(self, self._get_index())

    def warm(self) -> None:
        if self.semantic:
            self.embed(["The team met on Monday."], self._get_index().model or "all-MiniLM-L6-v2")

    def embed(self, texts: list[str], model: str) -> np.ndarray:
        if self._embed is not None:
            return self._embed(texts)
        from gateway.embedding import get_embedder

        return get_embedder(model, self.config.embedding).encode(texts)


class _Cluster:
    __slots__ = ("doc", "q_first", "q_last", "pmin", "pmax", "seeds")

    def __init__(self, doc: int, q: int, pid: int):
        self.doc, self.q_first, self.q_last, self.pmin, self.pmax = doc, q, q, pid, pid
        self.seeds = 1


class CopyScan:
    """Scan state of one response segment."""

    def __init__(self, detector: CopyrightDetector, index: CopyrightIndex):
        self.det = detector
        self.cfg = detector.config
        self.index = index
        self.n = index.anchor_words
        # words before an anchor that may still belong to the copy it anchors;
        # the index guarantees an anchor in every ``winnow + n - 1`` copied words
        self.pad = index.winnow + self.n + GAP_WORDS + 2
        self.hashes = np.zeros(0, np.uint64)
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.toks: list[str] = []
        # per word n-gram: may it occur anywhere in the corpus (Bloom filter)
        self.present = np.zeros(0, bool)
        self.stable = 0  # text before this offset is split into final words
        self.open: list[_Cluster] = []
        self.pending: list[tuple[Finding, list[str]]] = []  # short quotes awaiting attribution
        self.seen: set[tuple[int, int, str, str]] = set()
        self.sem_cursor = 0  # text before this offset has been judged semantically

    # -- protocol ---------------------------------------------------------
    def feed(self, text: str, final: bool) -> list[Finding]:
        out: list[Finding] = []
        if self.det.lexical:
            out.extend(self._lexical(text, final))
        if self.det.semantic:
            out.extend(self._semantic(text, final))
        return self._admit(out, text, final)

    def hold_from(self, text: str) -> int:
        hold = len(text)
        if self.det.lexical:
            hold = min(hold, self.stable)
            nw = len(self.starts)
            if nw:
                hold = min(hold, self.starts[max(0, nw - self.pad - self.n)])
            for c in self.open:
                hold = min(hold, self.starts[max(0, c.q_first - self.pad)])
        if self.det.semantic:
            hold = min(hold, self.sem_cursor)
        for f, _ in self.pending:
            hold = min(hold, f.start)
        return hold

    # -- lexical ------------------------------------------------------------
    def _lexical(self, text: str, final: bool) -> list[Finding]:
        new = words(text[self.stable :], self.stable)
        if not final and len(new) and new.ends[-1] >= len(text):
            # the last word may continue in the next chunk
            new = Words(new.hashes[:-1], new.starts[:-1], new.ends[:-1], new.tokens[:-1])
        before = len(self.starts)
        if len(new):
            self.hashes = np.concatenate([self.hashes, new.hashes])
            self.starts.extend(new.starts)
            self.ends.extend(new.ends)
            self.toks.extend(new.tokens)
            self.stable = new.ends[-1]
        if final:
            self.stable = len(text)
        nw = len(self.starts)
        first_gram = max(0, before - self.n + 1)
        grams = ngram_hashes(self.hashes[first_gram:], self.n)
        if len(grams):
            if self.index.bloom is not None:
                self.present = np.concatenate([self.present, bloom_has(self.index.bloom, grams)])
            qpos, pids = self.index.lookup(grams, self.cfg.max_postings)
            if len(qpos):
                docs = self.index.passages[pids, P_DOC]
                for q, pid, doc in zip(
                    (qpos + first_gram).tolist(), pids.tolist(), docs.tolist(), strict=True
                ):
                    self._add_seed(int(doc), q, pid)
        out: list[Finding] = []
        still: list[_Cluster] = []
        for c in self.open:
            if final or c.q_last + self.n + self.pad <= nw:
                if self._worth_aligning(c):
                    out.extend(self._verify(c))
            else:
                still.append(c)
        self.open = still
        return out

    def _add_seed(self, doc: int, q: int, pid: int) -> None:
        for c in self.open:
            # one cluster is one stretch of one source: close in the response
            # and close in the source
            if c.doc == doc and q - c.q_last <= 2 * self.pad and c.pmin - 2 <= pid <= c.pmax + 2:
                c.q_last = max(c.q_last, q)
                c.pmin, c.pmax = min(c.pmin, pid), max(c.pmax, pid)
                c.seeds += 1
                return
        self.open.append(_Cluster(doc, q, pid))

    def _worth_aligning(self, c: _Cluster) -> bool:
        """Cheap necessary condition for a match, from the corpus-wide n-gram filter.

        A verbatim copy of ``min_words`` words is ``min_words - n + 1`` n-grams in a
        row that all occur in the corpus; a near-verbatim one keeps a few such
        n-grams between its edits. Most candidates (one shared formulaic n-gram)
        fail both and are never aligned.
        """
        if self.index.bloom is None:
            return True
        qa = max(0, c.q_first - self.pad)
        qb = min(len(self.present), c.q_last + self.pad)
        region = self.present[qa:qb]
        if _longest_true(region) >= self.cfg.min_words - self.n + 1:
            return True  # a verbatim run is possible
        if "near_verbatim" in self.cfg.match:
            # between edits a near copy keeps short shared runs; one stray
            # formulaic n-gram has neither a second anchor nor such a run
            need = max(2, (self.cfg.near_min_words - self.n + 1) // 4)
            if int(region.sum()) >= need and (c.seeds >= 2 or _longest_true(region) >= 3):
                return True
        return False

    def _verify(self, c: _Cluster) -> list[Finding]:
        idx = self.index
        first, last = idx.doc_passages(c.doc)
        p0, p1 = max(first, c.pmin - 1), min(last, c.pmax + 1)
        src_text, doc, base = idx.region(p0, p1)
        s = idx.region_tokens(p0, p1, src_text)
        qa = max(0, c.q_first - self.pad)
        qb = min(len(self.starts), c.q_last + self.n + self.pad)
        q = self.toks[qa:qb]
        if not q or not s:
            return []
        hits: list[tuple[str, int, int, int, int, float]] = []
        # one word alignment (longest common subsequence, in C++) gives both the
        # exact runs and the lightly edited stretches around them
        blocks = _extend(
            [
                (op.src_start, op.src_end, op.dest_start, op.dest_end)
                for op in Indel.opcodes(q, s)
                if op.tag == "equal"
            ],
            q,
            s,
        )
        want_verbatim = "verbatim" in self.cfg.match
        covered = np.zeros(len(q), bool)
        if want_verbatim:
            for a, b, sa, sb in blocks:
                if b - a >= self.cfg.min_words:
                    covered[a:b] = True
                    hits.append(("verbatim", a, b, sa, sb, 1.0))
        if "near_verbatim" in self.cfg.match:
            for a, b, sa, sb, sim in _near_segments(blocks):
                if b - a < self.cfg.near_min_words or sim < self.cfg.near_ratio:
                    continue
                # an exact copy is judged by the verbatim threshold alone
                if want_verbatim and (sim >= 0.999 or covered[a:b].mean() >= 0.8):
                    continue
                hits.append(("near_verbatim", a, b, sa, sb, sim))
        if not hits:
            return []
        # character offsets only for what is reported: most candidates are not
        s_starts, s_ends = spans(src_text, base, max(h[4] for h in hits))
        return [
            self._finding(
                kind, qa + a, qa + b, s_starts[sa], s_ends[sb - 1], src_text, base, doc, sim
            )
            for kind, a, b, sa, sb, sim in hits
        ]

    def _finding(
        self,
        kind: str,
        qa: int,
        qb: int,
        s0: int,
        s1: int,
        src_text: str,
        base: int,
        doc: int,
        score: float,
    ) -> Finding:
        ev = self.index.evidence(doc)
        ev.update(
            match_type=kind,
            words=qb - qa,
            source_span=[s0, s1],
            source_text=src_text[s0 - base : s1 - base],
            index=self.index.name,
            index_generation=self.index.manifest.generation,
        )
        return Finding(
            self.starts[qa],
            self.ends[qb - 1],
            round(float(score), 4),
            f"{kind.replace('_', '-')} copy of {ev['source_id']} ({qb - qa} words)",
            ev,
        )

    # -- semantic -----------------------------------------------------------
    def _semantic(self, text: str, final: bool) -> list[Finding]:
        spans = sentences(text, self.sem_cursor)
        if not final and spans:
            spans = spans[:-1]  # the last sentence may still grow
        if not spans:
            if final:
                self.sem_cursor = len(text)
            return []
        self.sem_cursor = len(text) if final else spans[-1][1]
        windows: list[tuple[int, int]] = []
        for s, e in spans:
            w = words(text[s:e], s)
            if len(w) < self.cfg.semantic_min_words:
                continue
            if len(w) <= 64:
                windows.append((s, e))  # the whole sentence, as passages are embedded
                continue
            step = 48
            for a in range(0, max(1, len(w) - 16), step):
                b = min(len(w), a + 64)
                windows.append((w.starts[a], w.ends[b - 1]))
                if b == len(w):
                    break
        if not windows:
            return []
        idx = self.index
        texts = [text[s:e] for s, e in windows]
        screened: list[float | None] = [None] * len(windows)
        if self.cfg.semantic_screen is not None and idx.screen is not None:
            static = idx.screen_search(texts)
            keep = np.nonzero(static >= self.cfg.semantic_screen)[0]
            windows = [windows[i] for i in keep]
            texts = [texts[i] for i in keep]
            screened = [round(float(static[i]), 4) for i in keep]
            if not windows:
                return []
        vecs = self.det.embed(texts, idx.model or "all-MiniLM-L6-v2")
        scores, rows = idx.search(vecs, 1)
        out: list[Finding] = []
        for (s, e), score, row, static_score in zip(
            windows, scores[:, 0], rows[:, 0], screened, strict=True
        ):
            if row < 0 or score < self.cfg.semantic_threshold:
                continue
            src_text, doc, base = idx.region(int(row), int(row))
            ev = idx.evidence(doc)
            ev.update(
                match_type="semantic",
                words=len(words(text[s:e])),
                source_span=[base, base + len(src_text)],
                source_text=src_text,
                passage=int(row),
                screen_score=static_score,
                index=idx.name,
                index_generation=idx.manifest.generation,
            )
            out.append(
                Finding(
                    s,
                    e,
                    round(float(score), 4),
                    f"paraphrase of {ev['source_id']} (cosine {score:.2f})",
                    ev,
                )
            )
        return out

    # -- policy filters ---------------------------------------------------------
    def _admit(self, found: list[Finding], text: str, final: bool) -> list[Finding]:
        cfg = self.cfg
        out: list[Finding] = []
        allow_lic = {x.casefold() for x in cfg.allow_licences}
        # longest first, so a partial alignment of a copy already reported
        # (two candidate groups over one edited copy) is dropped
        for f in sorted(found, key=lambda f: f.start - f.end):
            key = (f.start, f.end, f.evidence["source_id"], f.evidence["match_type"])
            half = (f.end - f.start) / 2
            if any(
                k[2] == key[2] and k[3] == key[3] and min(k[1], f.end) - max(k[0], f.start) >= half
                for k in self.seen
            ):
                continue
            self.seen.add(key)
            if f.end - f.start < cfg.min_span_chars:
                continue
            src = f.evidence.get("source") or {}
            if f.evidence["source_id"] in cfg.allow_sources:
                continue
            if allow_lic and str(src.get("licence", "")).casefold() in allow_lic:
                continue
            if cfg.quote_max_words and f.evidence["words"] <= cfg.quote_max_words:
                names = [
                    str(src[k]) for k in cfg.attribution_fields if len(str(src.get(k) or "")) >= 3
                ]
                if names:
                    self.pending.append((f, names))
                    continue
            out.append(f)
        if self.pending:
            said = _word_string(text)
            keep: list[tuple[Finding, list[str]]] = []
            for f, names in self.pending:
                if any(_word_string(name) in said for name in names):
                    continue  # an attributed short quote is allowed
                if final:
                    out.append(f)
                else:
                    keep.append((f, names))
            self.pending = keep
        out.sort(key=lambda f: f.start)
        return out


def _longest_true(flags: np.ndarray) -> int:
    if not len(flags) or not flags.any():
        return 0
    padded = np.concatenate([[False], flags, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return int((edges[1::2] - edges[::2]).max())


def _word_string(text: str) -> str:
    """Folded words joined by single spaces and padded, for whole-word containment."""
    return " " + " ".join(_WORD.findall(fold(text)[0])) + " "


def _extend(
    blocks: list[tuple[int, int, int, int]], q: list[str], s: list[str]
) -> list[tuple[int, int, int, int]]:
    """Grow each equal block while the words on both sides still agree.

    A global alignment may pair a leading ``our`` or ``the`` with an earlier
    occurrence, which would cut a word off a copied span; redaction needs the
    exact run.
    """
    out: list[tuple[int, int, int, int]] = []
    for a, b, sa, sb in blocks:
        while a > 0 and sa > 0 and q[a - 1] == s[sa - 1]:
            a -= 1
            sa -= 1
        while b < len(q) and sb < len(s) and q[b] == s[sb]:
            b += 1
            sb += 1
        if out and a < out[-1][1]:
            # grown into the previous block: keep the longer one
            if b - a > out[-1][1] - out[-1][0]:
                out[-1] = (a, b, sa, sb)
            continue
        out.append((a, b, sa, sb))
    return out


def _near_segments(
    blocks: list[tuple[int, int, int, int]],
) -> list[tuple[int, int, int, int, float]]:
    """Spans aligned with few edits: (q0, q1, s0, s1, similarity).

    ``blocks`` are the equal-word blocks of a word alignment; blocks of at
    least ``NEAR_ANCHOR`` words separated by at most ``GAP_WORDS`` unmatched
    words on either side form one copied span.
    """
    out: list[tuple[int, int, int, int, float]] = []
    seg: list[tuple[int, int, int, int]] = []

    def close() -> None:
        while seg and seg[-1][1] - seg[-1][0] < NEAR_ANCHOR:
            seg.pop()
        if seg:
            q0, s0 = seg[0][0], seg[0][2]
            q1, s1 = seg[-1][1], seg[-1][3]
            matched = sum(b - a for a, b, _, _ in seg)
            out.append((q0, q1, s0, s1, 2 * matched / ((q1 - q0) + (s1 - s0))))
        seg.clear()

    for blk in blocks:
        if not seg:
            if blk[1] - blk[0] >= NEAR_ANCHOR:
                seg.append(blk)
            continue
        if blk[0] - seg[-1][1] <= GAP_WORDS and blk[2] - seg[-1][3] <= GAP_WORDS:
            seg.append(blk)
        else:
            close()
            if blk[1] - blk[0] >= NEAR_ANCHOR:
                seg.append(blk)
    close()
    return out


def build(config: CopyrightPolicy, ctx: BuildContext) -> CopyrightDetector:
    from gateway.errors import ConfigError
    from gateway.index.manager import IndexManager

    manager = ctx.resources.indexes
    if manager is None:
        # no app-provided manager (``gateway policy test``/``check``): use the
        # built indexes beside the policy directory, shared by every policy
        manager = ctx.resources.indexes = IndexManager.from_root(ctx.base_dir.parent / "indexes")
    name = config.index
    if not manager.has(name):
        hint = ""
        if isinstance(manager, IndexManager):
            corpus = ctx.base_dir.parent / "indexes" / name / "corpus.jsonl"
            if corpus.is_file():
                hint = (
                    f"; it is not built yet: gateway index build --corpus {corpus} "
                    f"--out {corpus.parent}"
                )
        raise ConfigError(
            f"policy {config.id}: unknown index {name!r} "
            f"(configured: {', '.join(manager.names()) or 'none'}){hint}"
        )
    return CopyrightDetector(config, lambda: manager.get(name))


KIND = PolicyKind(
    "copyright",
    CopyrightPolicy,
    build,
    "Verbatim, near-verbatim and paraphrased copies of an indexed corpus, with source spans.",
)
