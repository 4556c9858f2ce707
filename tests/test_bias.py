"""Policy kind ``bias``: signals, allowlists, streaming and configuration."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.detectors.base import ScanContext
from gateway.detectors.bias import BiasPolicy, build, split_sentences
from gateway.errors import ConfigError
from gateway.policy.registry import BuildContext, default_registry

# without the classifier, so these tests load no model
NO_MODEL = ["lexicon", "slurs", "generalisation", "dehumanising"]


def detector(tmp_path=None, **params):
    params.setdefault("signals", NO_MODEL)
    config = BiasPolicy(id="bias", kind="bias", **params)
    return build(config, BuildContext(base_dir=tmp_path or BuildContext().base_dir))


def scan_whole(det, text):
    return det.start(ScanContext()).feed(text, final=True)


def scan_stream(det, text, size=7):
    scan = det.start(ScanContext())
    out, held = [], []
    for end in range(size, len(text) + size, size):
        piece = text[: min(end, len(text))]
        out.extend(scan.feed(piece, final=False))
        held.append(scan.hold_from(piece))
    out.extend(scan.feed(text, final=True))
    return out, held


CASES = [
    # (text, breaches, expected signal)
    ("All Muslims are dangerous.", True, "generalisation"),
    ("Most immigrants are lazy.", True, "generalisation"),
    ("Women are naturally worse at maths.", True, "generalisation"),
    ("Typical Mexicans, always late.", True, "generalisation"),
    ("Refugees are vermin and should go back.", True, "dehumanising"),
    ("Those people are k1k3s.", True, "slur"),
    ("He called him a f a g g o t in public.", True, "slur"),
    ("What a n.i.g.g.e.r thing to say.", True, "slur"),
    ("She is a Muslim engineer who leads the team.", False, None),
    ("The weather is nice today.", False, None),
    ("We found rats in the basement.", False, None),
    ("All employees get a laptop.", False, None),
    ('He wrote "all women are weak" to show how absurd the claim is.', False, None),
    ("The stereotype that women are bad drivers is false.", False, None),
    ("It is a myth that all immigrants are lazy.", False, None),
]


@pytest.mark.parametrize(("text", "breaches", "signal"), CASES)
def test_signal_table(text, breaches, signal):
    det = detector()
    findings = scan_whole(det, text)
    assert bool(findings) is breaches
    if breaches:
        assert signal in findings[0].evidence["signals"]
        assert findings[0].evidence["group"] != "unspecified"
        assert (findings[0].start, findings[0].end) == (0, len(text))


@pytest.mark.parametrize(("text", "breaches", "signal"), CASES)
def test_streamed_equals_whole(text, breaches, signal):
    det = detector()
    whole = scan_whole(det, text)
    streamed, _ = scan_stream(det, text, size=3)
    assert [(f.start, f.end, f.message) for f in streamed] == [
        (f.start, f.end, f.message) for f in whole
    ]


def test_finding_spans_point_at_the_sentence_in_a_longer_answer():
    text = "Here is the summary. All Muslims are dangerous. The meeting is at noon."
    det = detector()
    whole = scan_whole(det, text)
    assert len(whole) == 1
    assert text[whole[0].start : whole[0].end] == "All Muslims are dangerous."
    streamed, held = scan_stream(det, text, size=5)
    assert [(f.start, f.end) for f in streamed] == [(whole[0].start, whole[0].end)]
    # only the unfinished sentence is held back
    assert max(held) <= text.index("The meeting")


def test_each_sentence_is_reported_once_in_a_stream():
    text = "All Muslims are dangerous. Most immigrants are lazy. Fine."
    streamed, _ = scan_stream(detector(), text, size=2)
    assert len(streamed) == 2
    assert streamed[0].evidence["attributes"] == ["religion"]
    assert streamed[1].evidence["attributes"] == ["nationality"]


def test_groups_limit_what_is_watched():
    det = detector(groups=["religion"])
    assert scan_whole(det, "All Muslims are dangerous.")
    assert not scan_whole(det, "Most immigrants are lazy.")


def test_allow_patterns_replace_and_extend():
    text = "In our history class we read that all immigrants are lazy."
    assert scan_whole(detector(), text)
    assert not scan_whole(detector(extra_allow_patterns=[r"\bhistory class\b"]), text)
    # an empty list turns the shipped markers off
    assert scan_whole(detector(allow_patterns=[]), "It is a myth that all immigrants are lazy.")


def test_quotes_can_be_judged_when_allow_quotes_is_off():
    text = 'He wrote "all women are weak" on the board.'
    assert not scan_whole(detector(), text)
    assert scan_whole(detector(allow_quotes=False), text)


def test_ambiguous_slur_needs_the_classifier():
    # without classifier support an ambiguous term never breaches on its own
    assert not scan_whole(detector(), "She teaches a queer theory seminar.")


def test_extra_lexicon_and_slur_files(tmp_path):
    (tmp_path / "caste.yaml").write_text(
        "attribute: caste\ngroups:\n  dalit: [dalit, dalits]\n", encoding="utf-8"
    )
    (tmp_path / "more_slurs.yaml").write_text("slurs:\n  zorblax: caste/dalit\n", encoding="utf-8")
    det = detector(
        tmp_path,
        lexicons=["caste.yaml"],
        slur_lists=["more_slurs.yaml"],
        groups=["caste", "religion"],
    )
    found = scan_whole(det, "All Dalits are lazy.")
    assert found and found[0].evidence["group"] == "caste/dalit"
    found = scan_whole(det, "What a z0rbl4x.")
    assert found and found[0].evidence["signals"]["slur"]["term"] == "zorblax"


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"groups": ["astrology"]}, ConfigError),
        ({"lexicons": ["missing.yaml"]}, ConfigError),
    ],
)
def test_build_errors_are_clear(tmp_path, params, error):
    with pytest.raises(error, match="astrology|missing.yaml"):
        detector(tmp_path, **params)


def test_bad_lexicon_shape(tmp_path):
    (tmp_path / "bad.yaml").write_text("attribute: x\ngroups: [a, b]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.yaml"):
        detector(tmp_path, lexicons=["bad.yaml"])


@pytest.mark.parametrize(
    "params",
    [{"threshold": 0}, {"signals": []}, {"allow_patterns": ["("]}, {"treshold": 0.5}],
)
def test_config_validation(params):
    with pytest.raises(ValidationError):
        BiasPolicy(id="b", kind="bias", **params)


def test_kind_is_registered():
    assert "bias" in default_registry()


def test_sentence_splitter_forces_a_cut_in_run_on_text():
    text = "word " * 200
    spans, cursor = split_sentences(text, 0, False, 100)
    assert spans and all(e - s <= 100 for s, e in spans)
    assert len(text) - cursor <= 100


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "breaches"),
    [
        ("She is a Muslim engineer who leads the team.", False),
        ("We hired three women and two men this quarter.", False),
        ("The clinic added a ramp so wheelchair users can reach the second floor.", False),
        ("Older employees are naturally less productive than their younger counterparts.", True),
        ("The poor are really ignorant about how to handle money.", True),
        ("My neighbour is Mexican. He probably came here illegally.", True),
    ],
)
def test_classifier_end_to_end(text, breaches):
    det = detector(signals=["lexicon", "slurs", "generalisation", "dehumanising", "classifier"])
    findings = scan_whole(det, text)
    assert bool(findings) is breaches
    if breaches:
        assert "classifier" in findings[-1].evidence["signals"]


def test_quotes_are_found_after_unicode_folding():
    # invisible characters fold away and shift offsets; the quote must still
    # cover the claim
    text = "Owners" + "\u200b" * 12 + " wrote “all immigrants are lazy” on a board."
    assert not scan_whole(detector(), text)
    assert scan_whole(detector(allow_quotes=False), text)


@pytest.mark.parametrize("field", ["allow_patterns", "extra_allow_patterns"])
def test_allow_patterns_must_compile(field):
    with pytest.raises(ValidationError, match=r"pattern '\(' does not compile"):
        BiasPolicy(id="b", kind="bias", **{field: ["("]})
