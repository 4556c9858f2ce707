"""Policy kind ``length``: answers longer than a character or word budget."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from gateway.contract.detector import Finding, ScanContext
from gateway.contract.kind import BuildContext, PolicyKind
from gateway.contract.policy import PolicyBase

_WORD = re.compile(r"\S+")


class LengthPolicy(PolicyBase):
    kind: Literal["length"]
    max_chars: int | None = Field(default=None, ge=1)
    max_words: int | None = Field(default=None, ge=1)
    # empty answers are usually an upstream fault worth flagging
    min_chars: int | None = Field(default=None, ge=1)
    redact_with: str = ""

    @model_validator(mode="after")
    def _a_limit(self) -> LengthPolicy:
        if self.max_chars is None and self.max_words is None and self.min_chars is None:
            raise ValueError("a length policy needs max_chars, max_words or min_chars")
        return self


class _LengthScan:
    __slots__ = ("_cfg", "_words", "_word_cursor", "_reported", "_cut")

    def __init__(self, cfg: LengthPolicy):
        self._cfg = cfg
        self._words = 0
        self._word_cursor = 0
        self._reported = False
        self._cut: int | None = None

    def feed(self, text: str, final: bool) -> list[Finding]:
        if self._reported:
            # the overflow kept growing after it was found: report its full extent
            # once, at the end, so a redaction covers all of it
            if final and self._cut is not None:
                start, self._cut = self._cut, None
                return [
                    Finding(
                        start,
                        len(text),
                        1.0,
                        "answer is over the length limit",
                        {"limit_at": start},
                    )
                ]
            return []
        cfg = self._cfg
        cut: int | None = None
        if cfg.max_chars is not None and len(text) > cfg.max_chars:
            cut = cfg.max_chars
        if cfg.max_words is not None:
            word_cut = self._word_limit(text, final)
            if word_cut is not None:
                cut = word_cut if cut is None else min(cut, word_cut)
        if cut is not None:
            self._reported = True
            self._cut = None if final else cut
            return [
                Finding(cut, len(text), 1.0, "answer is over the length limit", {"limit_at": cut})
            ]
        if final and cfg.min_chars is not None and len(text.strip()) < cfg.min_chars:
            self._reported = True
            return [Finding(0, len(text), 1.0, "answer is under the minimum length", {})]
        return []

    def _word_limit(self, text: str, final: bool) -> int | None:
        # count words incrementally; the last word may still be growing
        limit = self._cfg.max_words or 0
        for m in _WORD.finditer(text, self._word_cursor):
            if not final and m.end() == len(text):
                break
            self._words += 1
            self._word_cursor = m.end()
            if self._words > limit:
                return m.start()
        return None

    def hold_from(self, text: str) -> int:
        # never release past the budget: the cut must land before it leaves
        held = len(text)
        if self._cfg.max_chars is not None:
            held = min(held, self._cfg.max_chars)
        if self._cfg.max_words is not None and self._words >= self._cfg.max_words:
            held = min(held, self._word_cursor)
        return held


class LengthDetector:
    blocking = False
    hold_back = 0

    def __init__(self, config: LengthPolicy):
        self._cfg = config

    def start(self, ctx: ScanContext) -> _LengthScan:
        return _LengthScan(self._cfg)


def build(config: LengthPolicy, ctx: BuildContext) -> LengthDetector:
    return LengthDetector(config)


KIND = PolicyKind("length", LengthPolicy, build, "Answers over a character or word budget.")
