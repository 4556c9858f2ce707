"""Policy kind ``retrieval_quality``: irrelevant retrieval and ungrounded answers.

* **Relevance**: cosine similarity (MiniLM sentence embeddings) between the
  user's query and each retrieved chunk. ``relevance_mode: all`` breaches
  when every chunk is below ``relevance_threshold``; ``top_k`` breaches when
  any of the ``top_k`` best chunks is (there are fewer than k good chunks).
  Chunks that plainly hold the query's content words count as relevant
  without an embedding; when enough do, the model is not called.
* **Groundedness**: each answer sentence is supported when some chunk
  passage is at least ``support_threshold`` similar to it. A sentence whose
  content words mostly appear in one chunk counts as supported without an
  embedding, which keeps the common quoting-the-source case cheap. The
  answer breaches when the supported share is below ``min_grounded_share``;
  each unsupported sentence is a finding with its span.

Without sources (not a RAG answer) there is nothing to judge and the scan
returns no findings; without a query the relevance check is skipped, or
raises when ``missing_query: error``. In a stream, sentences are scored as
they complete once the sources are known, and the verdict comes with the
final chunk; nothing is held back unless ``wait_for_sources: true``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
from pydantic import Field

from gateway.contract.detector import Finding, ScanContext
from gateway.contract.kind import BuildContext, PolicyKind
from gateway.contract.policy import PolicyBase
from gateway.detectors.bias import split_sentences
from gateway.errors import RetrievalInputError

_TEXT_FIELDS = ("text", "content", "chunk", "snippet", "page_content", "passage")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")
# function words carry no support: "the", "is"… match in every chunk
_STOP = frozenset(
    """a an and are as at be been but by can could did do does for from had has have he her
    his i if in into is it its may might more most no not of on or our she so some such than
    that the their them then there these they this those to was we were what when where which
    while who will with would you your also very just about over only""".split()
)
# in a question, the question words and the asker say nothing about the topic
_QUESTION_STOP = _STOP | frozenset(
    "how why me my mine myself should please tell explain know want need".split()
)


Check = Literal["relevance", "groundedness"]
ALL_CHECKS: tuple[Check, ...] = ("relevance", "groundedness")


class RetrievalQualityPolicy(PolicyBase):
    kind: Literal["retrieval_quality"]
    checks: list[Check] = Field(default_factory=lambda: list(ALL_CHECKS), min_length=1)
    relevance_threshold: float = Field(default=0.25, ge=-1.0, le=1.0)
    relevance_mode: Literal["all", "top_k"] = "all"
    top_k: int = Field(default=1, ge=1)
    # a chunk holding at least this share (and at least two) of the query's
    # content words is relevant without an embedding; above 1 turns it off.
    # It can only clear a chunk, never flag one: on 300 SOTU sentence queries
    # it cleared 1 foreign passage and 3% of own ones (bench/retrieval_quality.py);
    # short questions naming their topic clear far more often
    lexical_relevance: float = Field(default=0.5, ge=0.0, le=1.01)
    support_threshold: float = Field(default=0.55, ge=-1.0, le=1.0)
    min_grounded_share: float = Field(default=0.6, ge=0.0, le=1.0)
    # share of a sentence's content words found in one chunk that counts as
    # support on its own; above 1 turns the shortcut off
    lexical_support: float = Field(default=0.75, ge=0.0, le=1.01)
    # a sentence sharing at most this share of its content words with every
    # chunk is unsupported without an embedding (0 turns the shortcut off).
    # Paraphrases keep names, figures and key terms: in the MSRP test set no
    # paraphrase pair falls below 0.23, while 99% of unrelated pairs are under it
    lexical_unsupported: float = Field(default=0.15, ge=0.0, le=1.0)
    # sentences shorter than this (greetings, headings) are not judged
    min_sentence_chars: int = Field(default=25, ge=1)
    # chunks are split into passages of about this many characters, so one
    # long chunk does not dilute a sentence it supports
    passage_chars: int = Field(default=400, ge=50, le=5000)
    missing_query: Literal["skip", "error"] = "skip"
    model: str = "all-MiniLM-L6-v2"
    # an embedding variant gateway.embedding offers ("fp32", "int8": linear
    # layers quantised, faster, vectors close to fp32); checked at build time
    variant: str = "fp32"
    wait_for_sources: bool = False
    max_sentence_chars: int = Field(default=400, ge=40, le=5000)


def source_text(src: dict[str, Any]) -> str:
    for name in _TEXT_FIELDS:
        value = src.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return ""


def _content_words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower())) - _STOP


def _passages(text: str, size: int) -> list[str]:
    spans, _ = split_sentences(text, 0, True, size)
    out: list[str] = []
    current = ""
    for s, e in spans:
        piece = text[s:e]
        if current and len(current) + len(piece) + 1 > size:
            out.append(current)
            current = piece
        else:
            current = f"{current} {piece}" if current else piece
    if current:
        out.append(current)
    return out


class RetrievalQualityDetector:
    blocking: bool = True
    hold_back: int | None

    def __init__(self, config: RetrievalQualityPolicy, embedder: Any):
        self.config = config
        self.embedder = embedder
        self.hold_back = None if config.wait_for_sources else 0

    def warm(self) -> None:
        self.embedder.encode(["The team met on Monday."])

    def start(self, ctx: ScanContext) -> _QualityScan:
        return _QualityScan(self, ctx)

    def relevance(
        self, query: str, sources: list[dict[str, Any]], length: int = 0
    ) -> list[Finding]:
        cfg = self.config
        texts = [source_text(s) for s in sources]
        usable = [(s, t) for s, t in zip(sources, texts, strict=True) if t]
        if not usable:
            return []
        needed = 1 if cfg.relevance_mode == "all" else cfg.top_k
        if sum(self._lexically_relevant(query, t) for _, t in usable) >= needed:
            return []  # enough chunks plainly about the query: no embedding needed
        vectors = self.embedder.encode([query, *(t for _, t in usable)])
        sims = vectors[1:] @ vectors[0]
        order = np.argsort(-sims)
        scores = {str(usable[i][0].get("id", i)): round(float(sims[i]), 4) for i in order}
        if cfg.relevance_mode == "all":
            breach = bool(np.all(sims < cfg.relevance_threshold))
            what = "no retrieved chunk"
        else:
            k = min(cfg.top_k, len(sims))
            breach = len(sims) < cfg.top_k or bool(sims[order[k - 1]] < cfg.relevance_threshold)
            what = f"fewer than {cfg.top_k} retrieved chunk(s)"
        if not breach:
            return []
        best = float(sims[order[0]])
        return [
            Finding(
                0,
                length,
                1.0 - max(best, 0.0),
                f"{what} relevant to the query (best similarity {best:.2f}, "
                f"threshold {cfg.relevance_threshold})",
                {
                    "check": "relevance",
                    "similarity": scores,
                    "best": round(best, 4),
                    "threshold": cfg.relevance_threshold,
                    "mode": cfg.relevance_mode,
                },
            )
        ]

    def _lexically_relevant(self, query: str, chunk: str) -> bool:
        words = _content_words(query) - _QUESTION_STOP
        shared = len(words & _content_words(chunk))
        return shared >= 2 and shared >= self.config.lexical_relevance * len(words)


class _Support:
    """Chunk passages with their word sets and (lazily) embeddings."""

    def __init__(self, detector: RetrievalQualityDetector, sources: list[dict[str, Any]]):
        self.passages: list[tuple[str, str]] = []
        for i, src in enumerate(sources):
            text = source_text(src)
            for passage in _passages(text, detector.config.passage_chars) if text else []:
                self.passages.append((str(src.get("id", i)), passage))
        self.words = [_content_words(p) for _, p in self.passages]
        self._detector = detector
        self._vectors: np.ndarray | None = None

    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = self._detector.embedder.encode([p for _, p in self.passages])
        return self._vectors

    def judge(self, sentences: list[str]) -> list[tuple[bool, float, str | None, str]]:
        """Per sentence: (supported, best score, source id, how)."""
        cfg = self._detector.config
        out: list[tuple[bool, float, str | None, str] | None] = []
        to_embed: list[int] = []
        for idx, sentence in enumerate(sentences):
            words = _content_words(sentence)
            best, best_src = 0.0, None
            for (src_id, _), pw in zip(self.passages, self.words, strict=True):
                if words:
                    share = len(words & pw) / len(words)
                    if share > best:
                        best, best_src = share, src_id
            if words and best >= cfg.lexical_support:
                out.append((True, best, best_src, "lexical"))
            elif words and best <= cfg.lexical_unsupported:
                out.append((False, 0.0, best_src, "lexical"))
            else:
                out.append(None)
                to_embed.append(idx)
        if to_embed and self.passages:
            sent_vecs = self._detector.embedder.encode([sentences[i] for i in to_embed])
            sims = sent_vecs @ self.vectors().T
            for row, idx in enumerate(to_embed):
                j = int(np.argmax(sims[row]))
                score = float(sims[row, j])
                out[idx] = (score >= cfg.support_threshold, score, self.passages[j][0], "embedding")
        for idx in to_embed:
            if out[idx] is None:
                out[idx] = (False, 0.0, None, "no chunk text")
        return out  # type: ignore[return-value]


class _QualityScan:
    __slots__ = ("_det", "_ctx", "_cursor", "_support", "_judged", "_done", "_relevance_done")

    def __init__(self, detector: RetrievalQualityDetector, ctx: ScanContext):
        self._det = detector
        self._ctx = ctx
        self._cursor = 0
        self._support: _Support | None = None
        # (start, end, sentence, supported, score, source id, how)
        self._judged: list[tuple[int, int, str, bool, float, str | None, str]] = []
        self._done = False
        self._relevance_done = False

    def feed(self, text: str, final: bool) -> list[Finding]:
        if self._done:
            return []
        cfg = self._det.config
        if not self._ctx.sources:
            if final:
                self._done = True
            return []
        if "groundedness" in cfg.checks:
            if self._support is None:
                self._support = _Support(self._det, self._ctx.sources)
            spans, self._cursor = split_sentences(text, self._cursor, final, cfg.max_sentence_chars)
            spans = [(s, e) for s, e in spans if e - s >= cfg.min_sentence_chars]
            if spans:
                verdicts = self._support.judge([text[s:e] for s, e in spans])
                for (s, e), (ok, score, src, how) in zip(spans, verdicts, strict=True):
                    self._judged.append((s, e, text[s:e], ok, score, src, how))
        findings: list[Finding] = []
        if "relevance" in cfg.checks and not self._relevance_done:
            # relevance does not depend on the answer: judge it as soon as the
            # sources are known, so a stream can stop early and the end of the
            # answer carries no extra embedding work
            self._relevance_done = True
            query = (self._ctx.query or "").strip()
            if query:
                findings.extend(self._det.relevance(query, self._ctx.sources, len(text)))
            elif cfg.missing_query == "error":
                raise RetrievalInputError(
                    "retrieval_quality: no user query to judge relevance against"
                )
        if not final:
            return findings
        self._done = True
        if "groundedness" in cfg.checks and self._judged:
            supported = sum(1 for j in self._judged if j[3])
            share = supported / len(self._judged)
            if share < cfg.min_grounded_share:
                for s, e, sentence, ok, score, src, how in self._judged:
                    if ok:
                        continue
                    findings.append(
                        Finding(
                            s,
                            e,
                            1.0 - max(score, 0.0),
                            f"answer sentence not supported by the retrieved sources "
                            f"(grounded share {share:.2f} < {cfg.min_grounded_share})",
                            {
                                "check": "groundedness",
                                "sentence": sentence,
                                "best_similarity": round(score, 4),
                                "nearest_source": src,
                                "method": how,
                                "grounded_share": round(share, 4),
                                "sentences": len(self._judged),
                            },
                        )
                    )
        return findings

    def hold_from(self, text: str) -> int:
        if self._det.config.wait_for_sources and not self._done:
            return 0
        return len(text)


def _fits(embedder: Any, model: str, variant: str) -> bool:
    """Whether a shared embedder is the one this policy asks for."""
    return (
        embedder is not None
        and getattr(embedder, "model_name", model) == model
        and getattr(embedder, "variant", variant) == variant
    )


def build(config: RetrievalQualityPolicy, ctx: BuildContext) -> RetrievalQualityDetector:
    embedder = ctx.resources.embedder
    if not _fits(embedder, config.model, config.variant):
        from gateway.embedding import get_embedder

        embedder = get_embedder(config.model, config.variant)
    return RetrievalQualityDetector(config, embedder)


KIND = PolicyKind(
    "retrieval_quality",
    RetrievalQualityPolicy,
    build,
    "Retrieved chunks irrelevant to the query; answer sentences no chunk supports.",
)
