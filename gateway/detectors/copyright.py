"""Policy kind ``copyright``: text copied from an indexed corpus.

Three match types, selected per policy:

- ``verbatim``: at least ``min_words`` consecutive words identical to a source
  (after Unicode folding and ignoring punctuation and case).
- ``near_verbatim``: a span of at least ``near_min_words`` words whose word
  alignment with a source has similarity ``>= near_ratio`` (words dropped,
  inserted, swapped or replaced), or of at least ``near_long_words`` words
  with similarity ``>= near_long_ratio``.
- ``semantic``: a sentence whose embedding has cosine ``>= semantic_threshold``
  with an indexed passage (paraphrase).

The lexical path finds candidates through winnowed word n-gram anchors,
which measure containment: a 12-word copy inside a 500-word answer shares an
anchor with its source however long the answer is. A copy with a quarter of
its words edited keeps few intact 4-word runs, so near-verbatim matching also
uses a denser table of 3-word near anchors, trusted only when several point
at the same stretch of one source. Candidates are then aligned word by word
to get the exact spans in the response and the source.

Streaming: words are hashed once as they become final; a candidate is
aligned when no new anchor has extended it for a while, and ``hold_from``
keeps every open candidate (and the last words that could still start one)
unreleased, so a copied span is never released before it is judged and
redaction masks exactly the span found.
"""

from __future__ import annotations

import re
from collections import Counter
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
# a word that is in the copied span but out of order counts this much of a
# matched word: reordering is an edit, if a milder one than a new word
MOVED_CREDIT = 0.5
# a candidate found only through the shorter near anchors needs this many
NEAR_SEEDS = 2
# ... and is aligned without any full-length n-gram in common with this many
NEAR_SEEDS_ALONE = 3
# a near anchor shared by more than ``max_postings`` / this passages is skipped
NEAR_POSTINGS_DIV = 4


class CopyrightPolicy(PolicyBase):
    kind: Literal["copyright"]
    # name of the index in the gateway's ``indexes:`` configuration
    index: str = "sample"
    match: list[MatchType] = Field(
        default_factory=lambda: list[MatchType](["verbatim", "near_verbatim"])
    )
    # verbatim: this many consecutive identical words
    min_words: int = Field(default=12, ge=4, le=1000)
    # near-verbatim: span length in words and word-alignment similarity; a
    # span of at least ``near_long_words`` needs only ``near_long_ratio``
    # (a long aligned span is rarely chance, a short one may be a formula)
    near_min_words: int = Field(default=12, ge=6, le=1000)
    near_ratio: float = Field(default=0.85, gt=0.5, le=1.0)
    near_long_words: int = Field(default=16, ge=6, le=1000)
    near_long_ratio: float = Field(default=0.75, gt=0.5, le=1.0)
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
    __slots__ = ("doc", "q_first", "q_last", "pmin", "pmax", "seeds", "strong")

    def __init__(self, doc: int, q: int, pid: int, strong: bool):
        self.doc, self.q_first, self.q_last, self.pmin, self.pmax = doc, q, q, pid, pid
        self.seeds = 1
        self.strong = int(strong)  # seeds from the full-length anchors


class CopyScan:
    """Scan state of one response segment."""

    def __init__(self, detector: CopyrightDetector, index: CopyrightIndex):
        self.det = detector
        self.cfg = detector.config
        self.index = index
        self.n = index.anchor_words
        # the shorter near anchors, when the index has them and edited copies are wanted
        self.n_near = index.near_anchor_words if "near_verbatim" in self.cfg.match else 0
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
        self.by_doc: dict[int, list[_Cluster]] = {}  # the open clusters per document
        self.near_done = 0  # words before this have had their near anchors looked up
        # near seeds still waiting for a partner: query positions, passages, documents
        self.lone: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
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
            if self.lone is not None:
                # a lone near seed may still become the start of a candidate
                first = int(self.lone[0].min())
                hold = min(hold, self.starts[max(0, first - self.pad)])
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
        seeds: list[tuple[np.ndarray, np.ndarray, bool]] = []
        strong_pids = np.zeros(0, np.int64)
        if len(grams):
            if self.index.bloom is not None:
                self.present = np.concatenate([self.present, bloom_has(self.index.bloom, grams)])
            qpos, strong_pids = self.index.lookup(grams, self.cfg.max_postings)
            seeds.append((qpos + first_gram, strong_pids, True))
        if self.n_near:
            nq, npid = self._near_lookup(nw, final, strong_pids)
            seeds.append((nq, npid, False))
        # in response order, so a candidate only ever grows forward
        q_all = np.concatenate([x[0] for x in seeds]) if seeds else np.zeros(0, np.int64)
        if len(q_all):
            p_all = np.concatenate([x[1] for x in seeds])
            s_all = np.concatenate([np.full(len(x[0]), x[2]) for x in seeds])
            order = np.argsort(q_all, kind="stable")
            docs = self.index.passages[p_all[order], P_DOC]
            for q, pid, doc, strong in zip(
                q_all[order].tolist(),
                p_all[order].tolist(),
                docs.tolist(),
                s_all[order].tolist(),
                strict=True,
            ):
                self._add_seed(doc, q, pid, strong)
        out: list[Finding] = []
        still: list[_Cluster] = []
        done = False
        for c in self.open:
            if final or c.q_last + self.n + self.pad <= nw:
                done = True
                if self._worth_aligning(c):
                    out.extend(self._verify(c))
            else:
                still.append(c)
        if done:
            self.open = still
            self.by_doc = {}
            for c in still:
                self.by_doc.setdefault(c.doc, []).append(c)
        return out

    def _near_lookup(
        self, nw: int, final: bool, strong_pids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Near-anchor seeds for the words not looked up yet."""
        n3 = self.n_near
        start = self.near_done
        limit = nw - n3 + 1
        if limit <= start:
            none = np.zeros(0, np.int64)
            return self._near_seeds(none, none, strong_pids, nw, final)
        self.near_done = limit
        grams = ngram_hashes(self.hashes[start : limit + n3 - 1], n3)
        # a short n-gram is common far sooner than a long one
        cap = max(1, self.cfg.max_postings // NEAR_POSTINGS_DIV)
        qi, pids = self.index.lookup(grams, cap, near=True)
        return self._near_seeds(qi + start, pids, strong_pids, nw, final)

    def _near_seeds(
        self, qpos: np.ndarray, pids: np.ndarray, strong_pids: np.ndarray, nw: int, final: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """The seeds from the short near anchors that could be part of a copy.

        A short n-gram shared with one of thousands of documents is usually
        chance; an edited copy shares several with the same document close
        together. So a near seed is kept when another near seed of its
        document lies within ``2 * pad`` words, or when its document already
        has a candidate; a lone one waits ``pad`` words for a partner (and
        ``hold_from`` holds the text it could start).
        """
        docs = self.index.passages[pids, P_DOC] if len(pids) else np.zeros(0, np.int64)
        if self.lone is not None:
            qpos = np.concatenate([self.lone[0], qpos])
            pids = np.concatenate([self.lone[1], pids])
            docs = np.concatenate([self.lone[2], docs])
            self.lone = None
        if not len(qpos):
            return qpos, pids
        order = np.lexsort((qpos, docs))
        q_s, d_s = qpos[order], docs[order]
        paired = np.zeros(len(order), bool)
        if len(order) > 1:
            pair = (d_s[1:] == d_s[:-1]) & (q_s[1:] - q_s[:-1] <= 2 * self.pad)
            paired[1:] |= pair
            paired[:-1] |= pair
        use = np.zeros(len(qpos), bool)
        use[order] = paired
        known = set(self.by_doc)
        if len(strong_pids):
            known.update(self.index.passages[strong_pids, P_DOC].tolist())
        if known:
            use |= np.fromiter((d in known for d in docs.tolist()), bool, len(docs))
        if not final:
            wait = ~use & (qpos > nw - self.pad)
            if wait.any():
                self.lone = (qpos[wait], pids[wait], docs[wait])
        return qpos[use], pids[use]

    def _add_seed(self, doc: int, q: int, pid: int, strong: bool) -> None:
        # one cluster is one stretch of one source: close in the response and
        # close in the source (looked up per document: a response may touch
        # hundreds of documents through one common n-gram each)
        group = self.by_doc.get(doc)
        if group is None:
            group = self.by_doc[doc] = []
        for c in group:
            if (
                c.q_first - 2 * self.pad <= q <= c.q_last + 2 * self.pad
                and c.pmin - 2 <= pid <= c.pmax + 2
            ):
                c.q_first = min(c.q_first, q)
                c.q_last = max(c.q_last, q)
                c.pmin, c.pmax = min(c.pmin, pid), max(c.pmax, pid)
                c.seeds += 1
                c.strong += strong
                return
        c = _Cluster(doc, q, pid, strong)
        group.append(c)
        self.open.append(c)

    def _worth_aligning(self, c: _Cluster) -> bool:
        """Cheap necessary condition for a match, from the corpus-wide n-gram filter.

        A verbatim copy of ``min_words`` words is ``min_words - n + 1`` n-grams in a
        row that all occur in the corpus; a near-verbatim one keeps a few such
        n-grams between its edits. Most candidates (one shared formulaic n-gram)
        fail both and are never aligned.
        """
        if not c.strong and c.seeds < NEAR_SEEDS:
            # one short n-gram in common is chance; an edited copy shares several
            return False
        if self.index.bloom is None:
            return True
        qa = max(0, c.q_first - self.pad)
        qb = min(len(self.present), c.q_last + self.pad)
        region = self.present[qa:qb]
        longest = _longest_true(region)
        if longest >= self.cfg.min_words - self.n + 1:
            return True  # a verbatim run is possible
        if "near_verbatim" in self.cfg.match:
            # between edits a near copy keeps short shared runs; one stray
            # formulaic n-gram has neither a second anchor nor such a run
            need = max(2, (self.cfg.near_min_words - self.n + 1) // 4)
            if (c.seeds >= 2 or longest >= 3) and int(region.sum()) >= need:
                return True
            # edits every few words leave no 4-word run intact, but many short
            # runs shared with the same stretch of one source
            if c.seeds - c.strong >= NEAR_SEEDS_ALONE:
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
            cfg = self.cfg
            for a, b, sa, sb, sim, exact in _near_segments(blocks, q, s, cfg.near_min_words):
                need = cfg.near_ratio
                if b - a >= cfg.near_long_words:
                    need = min(need, cfg.near_long_ratio)
                if b - a < cfg.near_min_words or sim < need:
                    continue
                # an exact copy is judged by the verbatim threshold alone
                if want_verbatim and (exact or covered[a:b].mean() >= 0.8):
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
    """Length of the longest run of True (regions are short: bytes beat numpy here)."""
    if not len(flags):
        return 0
    return max(map(len, flags.view(np.uint8).tobytes().split(b"\x00")))


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
    blocks: list[tuple[int, int, int, int]], q: list[str], s: list[str], min_words: int = 1
) -> list[tuple[int, int, int, int, float, bool]]:
    """Spans aligned with few edits: (q0, q1, s0, s1, similarity, exact).

    ``blocks`` are the equal-word blocks of a word alignment; blocks of at
    least ``NEAR_ANCHOR`` words separated by at most ``GAP_WORDS`` unmatched
    words on either side form one copied span (spans under ``min_words``
    are dropped before they are scored). Its similarity is
    ``2 * matched / (span words + source words)``, where matched counts the
    aligned words plus half of the words that only moved: an unaligned word
    of the span that also occurs, unaligned, in the source span (a reordered
    clause, two swapped words). Only words inside an already aligned span get
    that credit, so text that merely shares vocabulary gains nothing.
    """
    out: list[tuple[int, int, int, int, float, bool]] = []
    seg: list[tuple[int, int, int, int]] = []

    def close() -> None:
        while seg and seg[-1][1] - seg[-1][0] < NEAR_ANCHOR:
            seg.pop()
        if seg and seg[-1][1] - seg[0][0] >= min_words:
            q0, s0 = seg[0][0], seg[0][2]
            q1, s1 = seg[-1][1], seg[-1][3]
            aligned = sum(b - a for a, b, _, _ in seg)
            matched = aligned + MOVED_CREDIT * _moved(seg, q, s)
            sim = 2 * matched / ((q1 - q0) + (s1 - s0))
            out.append((q0, q1, s0, s1, sim, len(seg) == 1))
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


def _moved(seg: list[tuple[int, int, int, int]], q: list[str], s: list[str]) -> int:
    """Words in the gaps of an aligned span that also sit in the source's gaps."""
    q_gap: Counter[str] = Counter()
    s_gap: Counter[str] = Counter()
    for (_, b, _, sb), (a, _, sa, _) in zip(seg, seg[1:], strict=False):
        q_gap.update(q[b:a])
        s_gap.update(s[sb:sa])
    if not q_gap or not s_gap:
        return 0
    return sum((q_gap & s_gap).values())


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
