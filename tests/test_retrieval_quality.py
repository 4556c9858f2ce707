"""Policy kind ``retrieval_quality``: relevance and groundedness."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from pydantic import ValidationError

from gateway.contract.detector import ScanContext
from gateway.contract.kind import BuildContext, Resources
from gateway.detectors.retrieval_quality import RetrievalQualityPolicy, build
from gateway.errors import RetrievalInputError


class WordEmbedder:
    """Bag-of-words vectors: cosine is word overlap, so tests need no model."""

    model_name = "all-MiniLM-L6-v2"

    def __init__(self):
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), 512), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().replace(".", " ").replace("?", " ").split():
                out[i, zlib.crc32(word.encode()) % 512] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


ROUTER = "Hold the reset button on the router for ten seconds until the light blinks."
MIXER = "The industrial mixer kneads two hundred kilos of dough per hour."
COOKING = "Home cooks can knead bread dough by hand in about ten minutes."


def detector(embedder=None, **params):
    config = RetrievalQualityPolicy(id="rq", kind="retrieval_quality", **params)
    resources = Resources(embedder=embedder or WordEmbedder())
    return build(config, BuildContext(resources=resources))


def run(det, text, query=None, sources=(), chunk=None):
    ctx = ScanContext(query=query, sources=[dict(s) for s in sources])
    scan = det.start(ctx)
    out = []
    if chunk:
        for end in range(chunk, len(text), chunk):
            out.extend(scan.feed(text[:end], final=False))
    out.extend(scan.feed(text, final=True))
    return out


@pytest.mark.parametrize("chunk", [None, 6])
@pytest.mark.parametrize(
    ("query", "chunks", "mode", "k", "breach"),
    [
        ("how long do I hold the reset button on the router", [ROUTER], "all", 1, False),
        ("how long do I hold the reset button on the router", [MIXER], "all", 1, True),
        ("how long do I hold the reset button on the router", [MIXER, ROUTER], "all", 1, False),
        ("how long do I hold the reset button on the router", [MIXER, ROUTER], "top_k", 2, True),
        ("how long do I hold the reset button on the router", [ROUTER], "top_k", 2, True),
    ],
)
def test_relevance_table(query, chunks, mode, k, breach, chunk):
    det = detector(checks=["relevance"], relevance_threshold=0.3, relevance_mode=mode, top_k=k)
    sources = [{"id": f"c{i}", "text": t} for i, t in enumerate(chunks)]
    found = run(det, "Some answer text.", query=query, sources=sources, chunk=chunk)
    assert bool(found) is breach
    if breach:
        ev = found[0].evidence
        assert ev["check"] == "relevance" and set(ev["similarity"]) == {s["id"] for s in sources}


def test_a_chunk_plainly_about_the_query_needs_no_embedding():
    query = "how long do I hold the reset button on the router"
    embedder = WordEmbedder()
    det = detector(embedder, checks=["relevance"], relevance_threshold=0.3)
    assert run(det, "Answer.", query=query, sources=[{"id": "a", "text": ROUTER}]) == []
    assert embedder.calls == []
    # an unrelated chunk shares no words: the model decides, and it breaches
    found = run(det, "Answer.", query=query, sources=[{"id": "m", "text": MIXER}])
    assert found and embedder.calls == [[query, MIXER]]


def test_lexical_relevance_needs_enough_chunks_and_can_be_turned_off():
    query = "how long do I hold the reset button on the router"
    two = [{"id": "a", "text": ROUTER}, {"id": "m", "text": MIXER}]
    embedder = WordEmbedder()
    det = detector(embedder, checks=["relevance"], relevance_mode="top_k", top_k=2)
    assert run(det, "Answer.", query=query, sources=two)  # only one chunk is about it
    assert len(embedder.calls) == 1
    off = WordEmbedder()
    det = detector(off, checks=["relevance"], relevance_threshold=0.3, lexical_relevance=1.01)
    assert run(det, "Answer.", query=query, sources=[{"id": "a", "text": ROUTER}]) == []
    assert off.calls == [[query, ROUTER]]
    # one shared word is not enough, however short the query
    short = WordEmbedder()
    det = detector(short, checks=["relevance"], relevance_threshold=0.3)
    run(det, "Answer.", query="router colours?", sources=[{"id": "a", "text": ROUTER}])
    assert len(short.calls) == 1


def test_relevance_reads_other_text_fields():
    det = detector(checks=["relevance"], relevance_threshold=0.3)
    q = "how long do I hold the reset button on the router"
    for field in ("content", "chunk", "snippet"):
        assert run(det, "Answer.", query=q, sources=[{"id": "a", field: ROUTER}]) == []


def test_missing_query_skips_or_errors():
    sources = [{"id": "a", "text": ROUTER}]
    assert run(detector(checks=["relevance"]), "Answer.", sources=sources) == []
    with pytest.raises(RetrievalInputError, match="no user query"):
        run(detector(checks=["relevance"], missing_query="error"), "Answer.", sources=sources)


ANSWER = (
    "Hold the reset button on the router for ten seconds. "
    "The light blinks when the reset starts. "
    "The router was designed in Norway and won three design awards last year."
)


@pytest.mark.parametrize("chunk", [None, 5])
def test_groundedness_names_unsupported_sentences(chunk):
    det = detector(checks=["groundedness"], min_grounded_share=0.9, support_threshold=0.5)
    found = run(det, ANSWER, sources=[{"id": "manual", "text": ROUTER}], chunk=chunk)
    assert len(found) == 1
    f = found[0]
    assert ANSWER[f.start : f.end] == ANSWER.split(". ")[-1]
    assert f.evidence["grounded_share"] == pytest.approx(2 / 3, abs=1e-3)
    assert f.evidence["sentences"] == 3


def test_groundedness_passes_above_the_share():
    det = detector(checks=["groundedness"], min_grounded_share=0.6, support_threshold=0.5)
    assert run(det, ANSWER, sources=[{"id": "manual", "text": ROUTER}]) == []


def test_lexical_support_skips_the_embedder():
    emb = WordEmbedder()
    det = detector(emb, checks=["groundedness"], lexical_support=0.75)
    text = "Hold the reset button on the router for ten seconds."
    assert run(det, text, sources=[{"id": "m", "text": ROUTER}]) == []
    assert emb.calls == []


def test_lexically_unrelated_sentences_skip_the_embedder():
    emb = WordEmbedder()
    det = detector(emb, checks=["groundedness"], min_grounded_share=1.0, lexical_support=1.01)
    text = "Penguins migrate across Antarctic ice every winter."
    found = run(det, text, sources=[{"id": "m", "text": ROUTER}])
    assert [f.evidence["method"] for f in found] == ["lexical"]
    assert all(ROUTER not in call and text not in call for call in emb.calls)


def test_no_sources_means_nothing_to_judge():
    emb = WordEmbedder()
    assert run(detector(emb), ANSWER, query="router reset") == []
    assert emb.calls == []


def test_streamed_sentences_are_scored_once():
    emb = WordEmbedder()
    det = detector(emb, checks=["groundedness"], lexical_support=1.01, lexical_unsupported=0.0)
    run(det, ANSWER, sources=[{"id": "m", "text": ROUTER}], chunk=4)
    embedded = [t for call in emb.calls for t in call if t != ROUTER]
    assert len(embedded) == len(set(embedded)) == 3


def test_wait_for_sources_holds_the_answer():
    det = detector(wait_for_sources=True)
    scan = det.start(ScanContext(sources=[{"id": "m", "text": ROUTER}]))
    scan.feed("Hold the", final=False)
    assert scan.hold_from("Hold the") == 0
    assert detector().start(ScanContext()).hold_from("Hold the") == len("Hold the")


@pytest.mark.parametrize("params", [{"checks": []}, {"relevance_mode": "best"}, {"top_k": 0}])
def test_config_validation(params):
    with pytest.raises(ValidationError):
        RetrievalQualityPolicy(id="r", kind="retrieval_quality", **params)


@pytest.mark.slow
def test_real_embeddings_tell_relevant_from_irrelevant_retrieval():
    config = RetrievalQualityPolicy(id="rq", kind="retrieval_quality", checks=["relevance"])
    det = build(config, BuildContext())
    query = "How do I reset my home router?"
    assert run(det, "x", query=query, sources=[{"id": "a", "text": ROUTER}]) == []
    assert run(det, "x", query=query, sources=[{"id": "b", "text": MIXER}])
