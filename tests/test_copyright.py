"""Policy kind ``copyright``: detection tables, policy options and the streaming contract."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.contract.detector import ScanContext
from gateway.contract.kind import BuildContext, Resources
from gateway.detectors.copyright import KIND, CopyrightDetector, CopyrightPolicy
from gateway.errors import ConfigError
from gateway.index import BuildParams, CopyrightIndex, IndexManager, build_index
from gateway.policy.kinds import default_registry

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "indexes" / "sample" / "corpus.jsonl"

# text that is not in the corpus, to wrap copies in
FILLER = (
    "Thanks for the question. Speech writing has a long history and many styles, and the "
    "best answers usually explain the context first. Here is what I found after reading "
    "several sources on the topic, with a few notes of my own along the way. "
)
TAIL = " I hope that helps, and let me know if you want a shorter version for your slides."


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> CopyrightIndex:
    out = tmp_path_factory.mktemp("cr") / "sample"
    build_index(SAMPLE, out, BuildParams(semantic=False))
    return CopyrightIndex(out)


def detector(index: CopyrightIndex, **cfg) -> CopyrightDetector:
    config = CopyrightPolicy(id="cr", kind="copyright", **cfg)
    return CopyrightDetector(config, lambda: index)


def doc_no(index: CopyrightIndex, doc_id: str) -> int:
    return index.doc_index[doc_id]


def source_words(index: CopyrightIndex, doc: int, start: int, count: int) -> str:
    return " ".join(index.doc_text(doc).split()[start : start + count])


def clean(text: str) -> str:
    # copies in the tables start and end on a word, so spans can be compared exactly
    return text.strip(" .,;:-\"'()")


def scan_whole(det: CopyrightDetector, text: str):
    return det.start(ScanContext()).feed(text, True)


def edit_words(text: str, rate: float, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split()
    n_edits = max(1, round(rate * len(words)))
    for _ in range(n_edits):
        i = rng.randrange(1, len(words) - 1)
        op = rng.choice(["drop", "swap", "replace"])
        if op == "drop":
            del words[i]
        elif op == "swap":
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            words[i] = rng.choice(["really", "quite", "truly", "indeed", "clearly"])
    return " ".join(words)


# -- detection table --------------------------------------------------------------

VERBATIM_CASES = [
    # (doc, first word, words, expect a verbatim finding)
    ("1941_franklin_d_roosevelt_d", 300, 12, True),
    ("1862_abraham_lincoln_r", 1500, 20, True),
    ("1996_william_j_clinton_d", 800, 60, True),
    ("1790_george_washington_n", 100, 150, True),
    ("1934_franklin_d_roosevelt_d", 200, 11, False),
]


@pytest.mark.parametrize(("doc_id", "first", "count", "hit"), VERBATIM_CASES)
def test_verbatim_copy_inside_unrelated_text(index, doc_id, first, count, hit):
    doc = doc_no(index, doc_id)
    copy = clean(source_words(index, doc, first, count))
    text = FILLER * 3 + copy + TAIL + FILLER
    found = scan_whole(detector(index, match=["verbatim"]), text)
    if not hit:
        assert found == []
        return
    (f,) = found
    assert text[f.start : f.end] == copy
    ev = f.evidence
    assert ev["match_type"] == "verbatim" and ev["source_id"] == doc_id
    assert ev["words"] == len(re.findall(r"\w+", copy))
    source = index.doc_text(doc)
    assert source[ev["source_span"][0] : ev["source_span"][1]] == copy == ev["source_text"]
    assert ev["source"]["owner"] and ev["source"]["title"].startswith("State of the Union")


def test_min_words_is_configurable(index):
    copy = clean(source_words(index, 3, 700, 14))
    assert scan_whole(detector(index, match=["verbatim"], min_words=12), copy)
    assert scan_whole(detector(index, match=["verbatim"], min_words=16), copy) == []


def test_case_punctuation_and_unicode_tricks_do_not_hide_a_copy(index):
    copy = clean(source_words(index, 5, 400, 20))
    disguised = copy.upper().replace(" ", "  ").replace("E", "\uff25")
    disguised = disguised[:30] + "\u200b" + disguised[30:]
    text = FILLER + disguised + TAIL
    (f,) = scan_whole(detector(index, match=["verbatim"]), text)
    assert f.start == len(FILLER) and f.end == len(FILLER) + len(disguised)


@pytest.mark.parametrize("seed", range(6))
def test_near_verbatim_copy_with_edits(index, seed):
    doc = seed % len(index.docs)
    copy = clean(source_words(index, doc, 150 + 40 * seed, 40))
    edited = edit_words(copy, 0.15, seed)
    text = FILLER + edited + TAIL
    found = scan_whole(detector(index, match=["verbatim", "near_verbatim"]), text)
    assert found, edited
    assert all(f.evidence["source_id"] == index.docs[doc]["id"] for f in found)
    near = [f for f in found if f.evidence["match_type"] == "near_verbatim"]
    assert near and 0.8 <= near[0].score < 1.0
    # the span covers most of the edited copy and nothing of the filler
    f = near[0]
    assert f.start >= len(FILLER) and f.end <= len(FILLER) + len(edited)
    assert f.end - f.start >= 0.8 * len(edited)


def test_near_verbatim_off_means_edited_copies_only_match_their_exact_runs(index):
    copy = clean(source_words(index, 2, 300, 30))
    words = copy.split()
    words[10] = "banana"
    words[20] = "orange"
    text = FILLER + " ".join(words) + TAIL
    assert scan_whole(detector(index, match=["verbatim"]), text) == []
    (f,) = scan_whole(detector(index, match=["near_verbatim"]), text)
    assert f.evidence["match_type"] == "near_verbatim"


def test_original_text_has_no_findings(index):
    text = (FILLER + TAIL) * 5
    assert scan_whole(detector(index, match=["verbatim", "near_verbatim"]), text) == []


def test_copies_from_two_sources_are_two_findings(index):
    a = clean(source_words(index, 1, 500, 25))
    b = clean(source_words(index, 8, 900, 25))
    text = FILLER + a + ". " + FILLER + b + TAIL
    found = scan_whole(detector(index), text)
    assert [text[f.start : f.end] for f in found] == [a, b]
    assert [f.evidence["source_id"] for f in found] == [index.docs[1]["id"], index.docs[8]["id"]]


# -- policy options ------------------------------------------------------------------


def test_allowlisted_source_and_licence(index):
    doc = doc_no(index, "1962_john_f_kennedy_d")
    text = FILLER + clean(source_words(index, doc, 300, 30)) + TAIL
    assert scan_whole(detector(index), text)
    assert scan_whole(detector(index, allow_sources=["1962_john_f_kennedy_d"]), text) == []
    assert scan_whole(detector(index, allow_licences=["Public-Domain"]), text) == []
    assert scan_whole(detector(index, allow_licences=["cc-by"]), text)


def test_attributed_short_quote_is_allowed(index):
    doc = doc_no(index, "1941_franklin_d_roosevelt_d")
    quote = clean(source_words(index, doc, 1000, 20))
    det = detector(index, quote_max_words=25)
    assert scan_whole(det, "As Franklin D. Roosevelt said: " + quote + TAIL) == []
    assert scan_whole(det, "From the State of the Union Address (1941): " + quote) == []
    # no attribution: flagged
    assert len(scan_whole(det, FILLER + quote + TAIL)) == 1
    # attribution to someone else: flagged
    assert len(scan_whole(det, "As Abraham Lincoln said: " + quote + TAIL)) == 1
    # too long for a quote even with attribution
    long_quote = clean(source_words(index, doc, 1000, 40))
    assert len(scan_whole(det, "As Franklin D. Roosevelt said: " + long_quote)) == 1


def test_attribution_after_a_streamed_quote_is_honoured(index):
    doc = doc_no(index, "1941_franklin_d_roosevelt_d")
    quote = clean(source_words(index, doc, 1000, 20))
    text = FILLER + quote + " (Franklin D. Roosevelt, 1941)." + TAIL
    det = detector(index, quote_max_words=25)
    scan = det.start(ScanContext())
    found = []
    named = text.index("Roosevelt, 1941") + len("Roosevelt")
    for end in range(5, len(text) + 5, 5):
        found += scan.feed(text[:end], end >= len(text))
        if end < named:
            # the quote stays held while it may still be attributed
            assert scan.hold_from(text[:end]) <= len(FILLER)
    assert found == []


def test_min_span_chars(index):
    copy = clean(source_words(index, 4, 100, 13))
    assert scan_whole(detector(index, min_span_chars=len(copy) + 1), copy) == []
    assert scan_whole(detector(index, min_span_chars=len(copy)), copy)


def test_policy_model_rejects_bad_parameters():
    with pytest.raises(ValidationError, match="treshold"):
        CopyrightPolicy(id="x", kind="copyright", treshold=0.5)
    with pytest.raises(ValidationError):
        CopyrightPolicy(id="x", kind="copyright", match=["fuzzy"])
    with pytest.raises(ValidationError, match="at least one"):
        CopyrightPolicy(id="x", kind="copyright", match=[])
    with pytest.raises(ValidationError):
        CopyrightPolicy(id="x", kind="copyright", near_ratio=1.5)


def test_kind_is_registered_and_builds_against_the_manager(index, tmp_path):
    assert default_registry().get("copyright") is KIND
    manager = IndexManager({"sample": index.path})
    config = CopyrightPolicy(id="x", kind="copyright", index="sample")
    det = KIND.build(config, BuildContext(resources=Resources(indexes=manager)))
    assert scan_whole(det, clean(source_words(index, 0, 10, 15)))
    with pytest.raises(ConfigError, match="unknown index 'other'"):
        KIND.build(
            config.model_copy(update={"index": "other"}),
            BuildContext(resources=Resources(indexes=manager)),
        )
    # without an app-provided manager, built indexes beside the policies are used
    root = tmp_path / "project"
    (root / "indexes").mkdir(parents=True, exist_ok=True)
    (root / "indexes" / "sample").symlink_to(index.path)
    resources = Resources()
    det = KIND.build(config, BuildContext(base_dir=root / "policies", resources=resources))
    assert scan_whole(det, clean(source_words(index, 0, 10, 15)))
    assert resources.indexes is not None and resources.indexes.names() == ["sample"]
    with pytest.raises(ConfigError, match="unknown index 'sample'"):
        KIND.build(config, BuildContext(base_dir=root / "nowhere" / "policies"))


def test_detector_uses_the_swapped_index_for_new_segments(tmp_path, index):
    out = tmp_path / "swap"
    shutil.copytree(index.path, out)
    manager = IndexManager({"sample": out})
    det = KIND.build(
        CopyrightPolicy(id="x", kind="copyright"),
        BuildContext(resources=Resources(indexes=manager)),
    )
    copy = clean(source_words(index, 3, 10, 30))
    running = det.start(ScanContext())
    from gateway.index import remove_documents

    remove_documents(out, [index.docs[3]["id"]])
    manager.reload("sample")
    # the scan that started before the swap keeps its index; a new one sees the takedown
    assert running.feed(copy, True)
    assert scan_whole(det, copy) == []


# -- the streaming contract -------------------------------------------------------


def stream(det: CopyrightDetector, text: str, seed: int):
    """Feed ``text`` in 3-7 character chunks; return findings with the release point."""
    rng = random.Random(seed)
    scan = det.start(ScanContext())
    released = 0
    events = []
    end = 0
    while end < len(text):
        end = min(len(text), end + rng.randint(3, 7))
        final = end == len(text)
        for f in scan.feed(text[:end], final):
            events.append((f, released))
        if not final:
            released = max(released, min(end, scan.hold_from(text[:end])))
    return events


@pytest.mark.parametrize(
    ("doc", "first", "count", "seed"),
    [(0, 40, 12, 1), (3, 500, 13, 2), (6, 200, 30, 3), (9, 1000, 60, 4), (12, 50, 200, 5)],
)
def test_stream_never_releases_a_copied_span_and_finds_it_exactly(index, doc, first, count, seed):
    copy = clean(source_words(index, doc, first, count))
    text = FILLER * 2 + copy + TAIL + FILLER * 2
    start = text.index(copy)
    events = stream(detector(index), text, seed)
    assert len(events) == 1
    finding, released_before = events[0]
    # exact span: redaction masks exactly the copy
    assert (finding.start, finding.end) == (start, start + len(copy))
    # block mode: nothing of the copy had left the gateway when it was found
    assert released_before <= start


def test_stream_near_verbatim_copy_is_held_until_judged(index):
    copy = clean(source_words(index, 7, 300, 45))
    edited = edit_words(copy, 0.12, 7)
    text = FILLER * 2 + edited + TAIL + FILLER
    start = text.index(edited)
    events = stream(detector(index), text, 11)
    assert events
    finding, released_before = events[0]
    assert released_before <= finding.start and finding.start >= start


def test_stream_findings_equal_whole_text_findings(index):
    a = clean(source_words(index, 2, 80, 25))
    b = clean(source_words(index, 11, 640, 18))
    text = FILLER + a + " and also " + b + TAIL
    whole = [(f.start, f.end) for f in scan_whole(detector(index), text)]
    streamed = [(f.start, f.end) for f, _ in stream(detector(index), text, 3)]
    assert streamed == whole and len(whole) == 2


def test_stream_hold_back_is_bounded_for_original_text(index):
    text = (FILLER + TAIL) * 6
    scan = detector(index).start(ScanContext())
    lags = []
    for end in range(7, len(text), 7):
        scan.feed(text[:end], False)
        lags.append(end - scan.hold_from(text[:end]))
    # original text flows: the held tail is about 20 words, not the whole answer
    assert max(lags) < 250


# -- engine and shipped policies -------------------------------------------------


@pytest.fixture
def sample_manager(tmp_path, index):
    return IndexManager({"sample": index.path})


def test_shipped_policy_tests_pass(sample_manager):
    from gateway.policy.testing import run_tests

    results = run_tests(
        [ROOT / "policies" / "copyright_test.yaml"], resources=Resources(indexes=sample_manager)
    )
    assert results
    failures = [(r.name, r.outcome, r.detail) for r in results if r.outcome != "PASS"]
    assert failures == []


def test_redact_masks_exactly_the_copied_span_in_a_stream(tmp_path, sample_manager, index):
    from gateway.policy.testing import run_tests

    copy = clean(source_words(index, 10, 77, 25))
    text = "Before. " + copy + ". After the copy comes more original text to finish."
    (tmp_path / "p.yaml").write_text(
        "policies:\n  - id: cr\n    kind: copyright\n    action: redact\n"
        "    redact_with: '[COPY]'\n",
        encoding="utf-8",
    )
    expected = text.replace(copy, "[COPY]")
    case = {
        "cases": [
            {
                "name": "redact",
                "text": text,
                "stream_chunk": 4,
                "expect": {"action": "redact", "breached": ["cr"], "text": expected},
            }
        ]
    }
    (tmp_path / "p_test.yaml").write_text(json.dumps(case), encoding="utf-8")
    (result,) = run_tests([tmp_path / "p_test.yaml"], resources=Resources(indexes=sample_manager))
    assert result.outcome == "PASS", result.detail


# -- semantic (loads the embedding model) -------------------------------------------


@pytest.fixture(scope="module")
def semantic_index(tmp_path_factory) -> CopyrightIndex:
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    fdr = next(r for r in rows if r["id"] == "1941_franklin_d_roosevelt_d")
    start = fdr["text"].index("In the future days")
    docs = [
        {"id": "fdr-freedoms", "text": fdr["text"][start : start + 700], "owner": fdr["owner"]},
        {"id": "washington", "text": rows[0]["text"][:700], "owner": rows[0]["owner"]},
    ]
    corpus = tmp_path_factory.mktemp("sem") / "c.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    out = corpus.parent / "idx"
    # sentence-sized passages: a paraphrased sentence is compared with its peers
    build_index(corpus, out, BuildParams(chunk_words=30, chunk_overlap=10))
    return CopyrightIndex(out)


@pytest.mark.slow
def test_semantic_paraphrase_is_found_and_original_text_is_not(semantic_index):
    det = detector(semantic_index, match=["semantic"])
    assert semantic_index.manifest.faiss["type"] == "Flat"
    paraphrase = (
        "Looking ahead to the days we want to make safe, we hope for a world built on four "
        "basic human freedoms, the first being freedom of speech and expression everywhere."
    )
    text = "Here is my answer. " + paraphrase + " That is the summary."
    found = scan_whole(det, text)
    assert [f.evidence["source_id"] for f in found] == ["fdr-freedoms"]
    f = found[0]
    assert f.evidence["match_type"] == "semantic" and f.score >= 0.8
    assert text[f.start : f.end].startswith("Looking ahead")
    assert f.evidence["source_text"].startswith("In the future days")
    unrelated = "Bake the bread at two hundred degrees for forty minutes, then let it cool down."
    assert scan_whole(det, unrelated) == []


@pytest.mark.slow
def test_semantic_stream_holds_each_sentence_until_judged(semantic_index):
    det = detector(semantic_index, match=["semantic"])
    paraphrase = (
        "Looking ahead to the days we want to make safe, we hope for a world built on four "
        "basic human freedoms, the first being freedom of speech and expression everywhere."
    )
    text = "Some opening words come first here. " + paraphrase + " Closing words follow it."
    events = stream(det, text, 5)
    assert len(events) == 1
    finding, released = events[0]
    assert released <= finding.start


class CountingEmbedder:
    """The real model, counting the windows that reach it."""

    def __init__(self, model: str):
        from gateway.embedding import get_embedder

        self.embedder = get_embedder(model)
        self.windows: list[str] = []

    def __call__(self, texts: list[str]):
        self.windows.extend(texts)
        return self.embedder.encode(texts)


@pytest.mark.slow
def test_screen_sends_only_candidate_windows_to_the_model(semantic_index):
    assert semantic_index.manifest.screen["vocabulary"] > 10000
    counting = CountingEmbedder(semantic_index.model)
    det = CopyrightDetector(
        CopyrightPolicy(id="cr", kind="copyright", match=["semantic"]),
        lambda: semantic_index,
        counting,
    )
    paraphrase = (
        "Looking ahead to the days we want to make safe, we hope for a world built on four "
        "basic human freedoms, the first being freedom of speech and expression everywhere."
    )
    unrelated = [
        "Bake the bread at two hundred degrees for forty minutes, then let it cool down.",
        "The quarterly report shows that the new database cluster reduced query latency.",
        "Our hiking trail follows the river for six miles before climbing to the ridge.",
    ]
    text = " ".join([unrelated[0], paraphrase, *unrelated[1:]])
    found = scan_whole(det, text)
    assert [f.evidence["source_id"] for f in found] == ["fdr-freedoms"]
    assert found[0].evidence["screen_score"] >= det.config.semantic_screen
    assert counting.windows == [paraphrase]

    unscreened = CountingEmbedder(semantic_index.model)
    det_all = CopyrightDetector(
        CopyrightPolicy(id="cr", kind="copyright", match=["semantic"], semantic_screen=None),
        lambda: semantic_index,
        unscreened,
    )
    again = scan_whole(det_all, text)
    assert [(f.start, f.end) for f in again] == [(f.start, f.end) for f in found]
    assert again[0].evidence["screen_score"] is None
    assert len(unscreened.windows) == 4


@pytest.mark.slow
def test_screen_follows_added_and_removed_documents(semantic_index, tmp_path):
    from gateway.index import add_documents, remove_documents

    out = tmp_path / "idx"
    shutil.copytree(semantic_index.path, out)
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    extra = tmp_path / "more.jsonl"
    extra.write_text(json.dumps({"id": "more", "text": rows[5]["text"][:600]}) + "\n")
    add_documents(out, extra)
    grown = CopyrightIndex(out)
    assert grown.screen_vectors.ntotal == grown.vectors.ntotal == len(grown)
    first, _ = grown.doc_passages(grown.doc_index["more"])
    own = grown.passage_text(first)
    assert grown.screen_search([own])[0] > 0.99  # the added passage is in the screen
    remove_documents(out, ["more"])
    shrunk = CopyrightIndex(out)
    assert shrunk.screen_search([own])[0] < 0.99  # and gone from it after a takedown
    det = detector(shrunk, match=["semantic"], semantic_threshold=0.95)
    assert scan_whole(det, own) == []


def test_policy_model_checks_the_screen_threshold():
    assert CopyrightPolicy(id="c", kind="copyright", semantic_screen=None).semantic_screen is None
    with pytest.raises(ValidationError, match="semantic_screen"):
        CopyrightPolicy(id="c", kind="copyright", semantic_screen=1.5)


@pytest.mark.slow
def test_index_without_a_screen_sends_every_window(tmp_path):
    corpus = tmp_path / "c.jsonl"
    text = SAMPLE.read_text(encoding="utf-8").splitlines()[0]
    corpus.write_text(json.dumps({"id": "w", "text": json.loads(text)["text"][:500]}) + "\n")
    build_index(corpus, tmp_path / "idx", BuildParams(chunk_words=30, screen=False))
    index = CopyrightIndex(tmp_path / "idx")
    assert index.manifest.screen is None and index.screen is None
    assert not (tmp_path / "idx" / "screen.npz").exists()
    counting = CountingEmbedder(index.model)
    det = CopyrightDetector(
        CopyrightPolicy(id="cr", kind="copyright", match=["semantic"]), lambda: index, counting
    )
    scan_whole(det, "Bake the bread at two hundred degrees for forty minutes, then let it cool.")
    assert len(counting.windows) == 1
