"""The ``phrases`` kind: folding, word boundaries, regexes, streaming boundaries."""

from __future__ import annotations

import pytest

from gateway.contract.detector import ScanContext
from gateway.detectors.phrases import PhrasesDetector, PhrasesPolicy


def detector(**kw) -> PhrasesDetector:
    return PhrasesDetector(PhrasesPolicy(id="p", kind="phrases", **kw))


def spans(det: PhrasesDetector, text: str, chunk: int | None = None) -> list[str]:
    scan = det.start(ScanContext())
    found = []
    if chunk:
        for i in range(chunk, len(text) + chunk, chunk):
            found += scan.feed(text[:i], final=i >= len(text))
    else:
        found = scan.feed(text, final=True)
    return [text[f.start : f.end] for f in found]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("top secret", ["top secret"]),
        ("TOP SECRET", ["TOP SECRET"]),
        ("Top   secret", ["Top   secret"]),
        ("top\nsecret", ["top\nsecret"]),
        ("top se\u200bcret", ["top se\u200bcret"]),
        ("ｔｏｐ ｓｅｃｒｅｔ", ["ｔｏｐ ｓｅｃｒｅｔ"]),
        ("tóp sécret", ["tóp sécret"]),
        ("topsecret", []),
        ("stop secrets", []),
        ("a top secret, and another Top Secret.", ["top secret", "Top Secret"]),
    ],
)
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_literal_folding(text, expected, chunk):
    assert spans(detector(phrases=["Top Secret"]), text, chunk) == expected


def test_case_sensitive_and_no_normalise():
    det = detector(phrases=["Top Secret"], case_sensitive=True, normalize=False)
    assert spans(det, "top secret Top Secret") == ["Top Secret"]
    assert spans(det, "ｔｏｐ ｓｅｃｒｅｔ") == []


def test_partial_words_allowed_when_asked():
    assert spans(detector(phrases=["secret"], whole_words=False), "secretly") == ["secret"]


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_regex_not_reported_until_complete(chunk):
    det = detector(patterns=[r"\d{3}-\d{4}"])
    assert spans(det, "call 555-1234 or 555-9876", chunk) == ["555-1234", "555-9876"]


def test_hold_back_covers_bounded_regex_and_caps_unbounded():
    assert detector(patterns=[r"\d{3}-\d{4}"]).hold_back == 2 * 8 + 16
    assert detector(patterns=[r"x+"], max_match_chars=50).hold_back == 50


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"phrases": [" "]}, "must not be empty"),
        ({"patterns": ["("]}, "does not compile"),
        ({"patterns": ["a*"]}, "matches the empty string"),
        ({}, "at least one phrase or pattern"),
    ],
)
def test_invalid_configs(bad, message):
    with pytest.raises(ValueError, match=message):
        PhrasesPolicy(id="p", kind="phrases", **bad)
