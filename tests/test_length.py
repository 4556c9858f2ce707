"""The ``length`` kind: budgets in characters and words, whole and streamed."""

from __future__ import annotations

import pytest

from gateway.contract.detector import ScanContext
from gateway.detectors.length import LengthDetector, LengthPolicy
from tests.test_engine import load, run


def findings(text: str, chunk: int | None = None, **limits):
    det = LengthDetector(LengthPolicy(id="l", kind="length", **limits))
    scan = det.start(ScanContext())
    out = []
    if chunk:
        for i in range(chunk, len(text) + chunk, chunk):
            out += scan.feed(text[:i], final=i >= len(text))
    else:
        out = scan.feed(text, final=True)
    return [(f.start, f.end) for f in out]


@pytest.mark.parametrize(
    "text, limits, expected",
    [
        ("abcdef", {"max_chars": 10}, []),
        ("abcdefghijkl", {"max_chars": 10}, [(10, 12)]),
        ("a b c d", {"max_words": 3}, [(6, 7)]),
        ("a b c", {"max_words": 3}, []),
        ("  ", {"min_chars": 1}, [(0, 2)]),
        ("ok", {"min_chars": 1}, []),
    ],
)
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_length_table(text, limits, expected, chunk):
    got = findings(text, chunk, **limits)
    # streamed, the overflow is reported when found and again at its full extent
    assert [
        (s, max(e for s2, e in got if s2 == s)) for s in dict.fromkeys(s for s, _ in got)
    ] == expected


def test_a_limit_is_required():
    with pytest.raises(ValueError, match="needs max_chars, max_words or min_chars"):
        LengthPolicy(id="l", kind="length")


def test_stream_never_releases_past_the_budget():
    det = LengthDetector(LengthPolicy(id="l", kind="length", max_chars=5))
    scan = det.start(ScanContext())
    assert scan.hold_from("abc") == 3
    assert scan.hold_from("abcdefgh") == 5


@pytest.mark.parametrize(
    "text, limit, expected_cut",
    [
        ("one two three four five", 3, "one two three "),
        ("one two", 3, "one two"),
    ],
)
@pytest.mark.parametrize("chunk", [None, 2])
async def test_length_words_truncates(tmp_path, text, limit, expected_cut, chunk):
    ps = load(
        tmp_path,
        f"""
policies:
  - id: len
    kind: length
    max_words: {limit}
    action: redact
""",
    )
    guard = await run(ps, text, chunk=chunk)
    assert guard.segments["0"].released_text == expected_cut
