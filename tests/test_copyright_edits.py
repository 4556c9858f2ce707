"""Heavily edited copies: a quarter of the words changed is still a copy; a summary is not.

The corpus is generated here (seeded), so the test needs no external data:
documents are sentences built from a made-up vocabulary, which gives every
document its own word sequences, as real texts have.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from gateway.contract.detector import ScanContext
from gateway.detectors.copyright import CopyrightDetector, CopyrightPolicy
from gateway.index import (
    BuildParams,
    CopyrightIndex,
    add_documents,
    build_index,
    index_is_current,
)
from gateway.index.text import words

SYLLABLES = "ka lo mi ter van sul dor pe ni ra bet os gal fu rin ze tam co hul ish".split()
FUNCTION = "the of and to in a that is for on with as by at from it this be are was".split()
SYNONYMS = {"the": "this", "of": "for", "and": "plus", "is": "was", "with": "alongside"}
FILLER = (
    "Thanks for asking. I went through the material you sent and wrote a short answer "
    "below, with the parts I found most useful first and my own notes after them. "
)
TAIL = " Let me know if you want the longer version or a list of the sources I used."


def vocabulary(rng: random.Random, n: int) -> list[str]:
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))))
    return sorted(out)


def document(rng: random.Random, vocab: list[str], n_words: int) -> str:
    """Sentences of content words (Zipf-like) and function words, like prose."""
    weights = 1 / np.arange(1, len(vocab) + 1)
    toks: list[str] = []
    while len(toks) < n_words:
        length = rng.randint(8, 18)
        sent = [
            rng.choice(FUNCTION) if rng.random() < 0.4 else rng.choices(vocab, weights)[0]
            for _ in range(length)
        ]
        sent[0] = sent[0].capitalize()
        toks.extend(sent[:-1] + [sent[-1] + "."])
    return " ".join(toks)


def edit_quarter(copy: list[str], seed: int) -> list[str]:
    """Change every fourth word: synonyms, other words, insertions, deletions, swaps.

    Spread evenly, so no run of more than three words is left intact (the
    verbatim matcher alone finds nothing).
    """
    rng = random.Random(seed)
    w = [[t] for t in copy]
    ops = ["synonym", "replace", "insert", "delete", "swap"]
    rng.shuffle(ops)
    for k, i in enumerate(range(1 + seed % 3, len(copy) - 1, 4)):
        op = ops[k % len(ops)]
        if op == "synonym":
            w[i] = [SYNONYMS.get(copy[i].lower(), "indeed")]
        elif op == "replace":
            w[i] = ["notably"]
        elif op == "insert":
            w[i] = [*w[i], "really"]
        elif op == "delete":
            w[i] = []
        else:
            w[i], w[i + 1] = w[i + 1], w[i]
    return [t for group in w for t in group]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[CopyrightIndex, list[dict]]:
    rng = random.Random(13)
    vocab = vocabulary(rng, 400)
    docs = [
        {"id": f"book-{i}", "text": document(rng, vocab, 900), "title": f"Book {i}"}
        for i in range(12)
    ]
    root = tmp_path_factory.mktemp("edits")
    path = root / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    build_index(path, root / "idx", BuildParams(semantic=False))
    return CopyrightIndex(root / "idx"), docs


def detector(index: CopyrightIndex, **cfg) -> CopyrightDetector:
    return CopyrightDetector(CopyrightPolicy(id="cr", kind="copyright", **cfg), lambda: index)


def scan(det: CopyrightDetector, text: str):
    return det.start(ScanContext()).feed(text, True)


def span_of(doc: dict, first: int, count: int) -> tuple[list[str], int, int]:
    """The whitespace words ``first .. first+count`` of a document and their char span."""
    w = words(doc["text"])
    toks = doc["text"].split()
    # generated text has one word per whitespace token, so both numberings agree
    assert len(toks) == len(w)
    return toks[first : first + count], w.starts[first], w.ends[first + count - 1]


@pytest.mark.parametrize(
    ("doc_no", "first", "count", "seed"),
    [(0, 100, 24, 1), (3, 400, 36, 2), (7, 250, 48, 3), (10, 600, 40, 4), (11, 50, 20, 5)],
)
def test_copy_with_a_quarter_of_the_words_edited_is_found_with_evidence(
    corpus, doc_no, first, count, seed
):
    index, docs = corpus
    doc = docs[doc_no]
    copy, s0, s1 = span_of(doc, first, count)
    edited = " ".join(edit_quarter(copy, seed))
    text = FILLER + edited + TAIL
    # a quarter of the words changed leaves no 12-word run for the verbatim matcher
    assert scan(detector(index, match=["verbatim"]), text) == []
    found = scan(detector(index), text)
    assert len(found) == 1, [f.message for f in found]
    (f,) = found
    ev = f.evidence
    assert ev["match_type"] == "near_verbatim" and ev["source_id"] == doc["id"]
    assert ev["source"] == {"title": f"Book {doc_no}"}
    # the response span lies inside the edited copy and covers most of it
    start = len(FILLER)
    assert start <= f.start and f.end <= start + len(edited)
    assert f.end - f.start >= 0.75 * len(edited)
    # the source span points at the copied passage and its text is the source's
    a, b = ev["source_span"]
    assert s0 - 30 <= a and b <= s1 + 30 and (b - a) >= 0.75 * (s1 - s0)
    assert ev["source_text"] == doc["text"][a:b]
    assert 0.75 <= f.score < 1.0


def test_the_same_edits_below_the_long_span_ratio_are_not_a_copy(corpus):
    """``near_long_ratio`` is what admits a heavily edited long span."""
    index, docs = corpus
    copy, _, _ = span_of(docs[3], 400, 36)
    text = FILLER + " ".join(edit_quarter(copy, 2)) + TAIL
    assert scan(detector(index), text)
    assert scan(detector(index, near_long_ratio=0.9, near_ratio=0.9), text) == []


def test_summary_sharing_names_and_key_words_is_not_a_copy(corpus):
    index, docs = corpus
    doc = docs[5]
    copy, _, _ = span_of(doc, 300, 60)
    content = [t.strip(".") for t in copy if t.lower().strip(".") not in FUNCTION]
    # the passage's rarest content words, restated in new sentences, plus two short quotes
    key = sorted(set(content), key=lambda t: (content.count(t), t))[:6]
    text = (
        f"In Book 5 the author writes about {key[0]} and {key[1]}. The main point is that "
        f"{key[2]} depends on {key[3]}, which the text illustrates with {key[4]}. "
        f'It describes "{" ".join(copy[10:14])}" and later "{" ".join(copy[30:34])}", '
        f"before closing on {key[5]}. Overall a clear argument about {key[0]} and {key[3]}."
    )
    assert scan(detector(index), text) == []
    # the same words in the passage's order, but every word sequence broken up
    shuffled = content[::2] + content[1::2]
    assert scan(detector(index), FILLER + " ".join(shuffled) + TAIL) == []


def test_streamed_heavily_edited_copy_is_held_until_judged(corpus):
    index, docs = corpus
    copy, _, _ = span_of(docs[7], 250, 48)
    edited = " ".join(edit_quarter(copy, 3))
    text = FILLER * 2 + edited + TAIL + FILLER
    start = text.index(edited)
    rng = random.Random(5)
    s = detector(index).start(ScanContext())
    released, end, events = 0, 0, []
    while end < len(text):
        end = min(len(text), end + rng.randint(3, 9))
        final = end == len(text)
        events += [(f, released) for f in s.feed(text[:end], final)]
        if not final:
            released = max(released, min(end, s.hold_from(text[:end])))
    (f, released_before) = events[0]
    assert f.evidence["source_id"] == docs[7]["id"]
    assert released_before <= f.start and f.start >= start


def test_index_records_near_anchors_and_an_older_index_still_loads(corpus, tmp_path):
    index, docs = corpus
    assert index.near_anchor_words == 3
    assert index.counts()["near_anchors"] > index.counts()["anchors"]
    assert index.manifest.params["near_anchor_words"] == 3
    # an index written before near anchors existed: no arrays, no parameters
    old = tmp_path / "old"
    shutil.copytree(index.path, old)
    with np.load(old / "anchors.npz") as z:
        kept = {k: z[k] for k in ("hash", "pid", "bloom")}
    np.savez(old / "anchors.npz", **kept)
    manifest = json.loads((old / "manifest.json").read_text())
    for key in ("near_anchor_words", "near_winnow"):
        manifest["params"].pop(key)
    (old / "manifest.json").write_text(json.dumps(manifest))
    legacy = CopyrightIndex(old)
    assert legacy.near_anchor_words == 0 and legacy.counts()["near_anchors"] == 0
    # the demo's ``ensure_index`` rebuilds such an index rather than keep it
    source = index.path.parent / "corpus.jsonl"
    assert index_is_current(source, index.path, BuildParams(semantic=False))
    assert not index_is_current(source, old, BuildParams(semantic=False))
    copy, _, _ = span_of(docs[0], 100, 24)
    (f,) = scan(detector(legacy), FILLER + " ".join(copy) + TAIL)
    assert f.evidence["match_type"] == "verbatim"
    # adding documents keeps the older layout consistent (no partial near table)
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": "late", "text": docs[1]["text"][::-1]}) + "\n")
    add_documents(old, extra)
    assert CopyrightIndex(old).counts()["near_anchors"] == 0


def test_policy_checks_the_long_span_parameters():
    with pytest.raises(ValidationError):
        CopyrightPolicy(id="x", kind="copyright", near_long_ratio=0.4)
    with pytest.raises(ValidationError):
        CopyrightPolicy(id="x", kind="copyright", near_long_words=2)
    p = CopyrightPolicy(id="x", kind="copyright")
    assert (p.near_min_words, p.near_ratio, p.near_long_words, p.near_long_ratio) == (
        12,
        0.85,
        16,
        0.75,
    )


def test_build_rejects_bad_near_anchor_parameters(tmp_path: Path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "one two three four five"}) + "\n")
    with pytest.raises(ValueError, match="near_anchor_words"):
        build_index(corpus, tmp_path / "i", BuildParams(semantic=False, near_anchor_words=9))
    build_index(corpus, tmp_path / "j", BuildParams(semantic=False, near_anchor_words=0))
    assert CopyrightIndex(tmp_path / "j").near_anchor_words == 0
    assert re.match(r"\d", str(CopyrightIndex(tmp_path / "j").manifest.generation))


def test_bucketed_lookup_agrees_with_a_binary_search(monkeypatch):
    """The bucket offsets only speed the search up; every position must be the same."""
    from gateway.index import store
    from gateway.index.store import _Buckets

    # the bucket walk serves large tables; these small ones must take it too
    monkeypatch.setattr(store, "SMALL_TABLE", 0)

    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 5000):
        table = np.sort(
            np.concatenate(
                [
                    rng.integers(0, 2**64, n, dtype=np.uint64),
                    # one hash in 100 passages: a crowded bucket
                    np.repeat(rng.integers(0, 2**64, 2, dtype=np.uint64), 100),
                ]
            )
        )
        keys = np.concatenate(
            [
                rng.integers(0, 2**64, 300, dtype=np.uint64),
                table[rng.integers(0, len(table), 100)],
                np.asarray([0, 2**64 - 1], dtype=np.uint64),
            ]
        )
        got = _Buckets(table).first_at_least(table, keys)
        assert (got == np.searchsorted(table, keys, side="left")).all()
