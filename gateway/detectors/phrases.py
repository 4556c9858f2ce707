"""Policy kind ``phrases``: literal phrases and regular expressions.

Literals match on folded text (case, accents, compatibility forms and
zero-width characters normalised; any run of white space between words), so
``Confidential`` split as ``Con\u200bfidential`` or written in full-width
letters still matches.
"""

from __future__ import annotations

from typing import Literal

# the third-party ``regex`` engine finds literal prefixes and case-insensitive
# classes many times faster than ``re`` on long answers, with the same syntax
import regex
from pydantic import Field, field_validator, model_validator

from gateway.contract.detector import Finding, ScanContext, WindowScan
from gateway.contract.kind import BuildContext, PolicyKind
from gateway.contract.policy import PolicyBase
from gateway.textnorm import fold, to_source_span


class PhrasesPolicy(PolicyBase):
    kind: Literal["phrases"]
    phrases: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)
    case_sensitive: bool = False
    # fold Unicode (accents, full-width forms, zero-width characters)
    normalize: bool = True
    # literals must not start or end inside a word
    whole_words: bool = True
    # longest text a regex may match; the stream holds this much back
    max_match_chars: int = Field(default=200, ge=1, le=10000)

    @field_validator("phrases")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        for phrase in value:
            if not phrase.strip():
                raise ValueError("phrases must not be empty or blank")
        return value

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                compiled = regex.compile(pattern)
            except regex.error as exc:
                raise ValueError(f"pattern {pattern!r} does not compile: {exc}") from None
            if compiled.match(""):
                raise ValueError(f"pattern {pattern!r} matches the empty string")
        return value

    @model_validator(mode="after")
    def _something_to_match(self) -> PhrasesPolicy:
        if not self.phrases and not self.patterns:
            raise ValueError("a phrases policy needs at least one phrase or pattern")
        return self


class PhrasesDetector:
    blocking = False

    def __init__(self, config: PhrasesPolicy):
        self._case = not config.case_sensitive
        self._normalize = config.normalize
        alternatives: list[str] = []
        longest = 0
        for phrase in config.phrases:
            folded = self._fold(phrase)[0] if config.normalize else phrase
            words = folded.split()
            alternatives.append(r"\s+".join(regex.escape(w) for w in words))
            # room for extra white space and invisible characters in the source
            longest = max(longest, 2 * len(phrase) + 16)
        flags = regex.IGNORECASE if self._case else 0
        self._literal = None
        if alternatives:
            body = "(?:" + "|".join(alternatives) + ")"
            if config.whole_words:
                body = rf"(?<!\w){body}(?!\w)"
            # folded text is already lower case: no case-insensitive matching needed
            literal_flags = 0 if (self._case and self._normalize) else flags
            self._literal = regex.compile(body, literal_flags)
        self._patterns = [regex.compile(p, flags) for p in config.patterns]
        for pattern in config.patterns:
            longest = max(longest, _match_width(pattern, config.max_match_chars))
        self.hold_back = longest

    def _fold(self, text: str) -> tuple[str, list[int] | None]:
        if not self._normalize:
            return text, None
        return fold(text, case=self._case)

    def start(self, ctx: ScanContext) -> WindowScan:
        return WindowScan(self._find, self.hold_back)

    def _find(self, text: str, start: int, final: bool) -> list[Finding]:
        piece = text[start:]
        folded, origin = self._fold(piece)
        out: list[Finding] = []
        for compiled, label in self._regexes():
            for m in compiled.finditer(folded):
                if m.end() == m.start():
                    continue
                # a match touching the end may still grow with the next chunk
                if not final and m.end() >= len(folded):
                    continue
                s, e = to_source_span(origin, m.start(), m.end(), len(piece))
                out.append(
                    Finding(
                        start + s,
                        start + e,
                        1.0,
                        f"matched {label}",
                        {"match": piece[s:e], "rule": label},
                    )
                )
        return out

    def _regexes(self):
        if self._literal is not None:
            yield self._literal, "phrase"
        for compiled in self._patterns:
            yield compiled, f"pattern {compiled.pattern}"


def _match_width(pattern: str, cap: int) -> int:
    """Longest text ``pattern`` can match, or ``cap`` when it is unbounded."""
    try:
        from re import _parser  # type: ignore[attr-defined]

        widest = _parser.parse(pattern).getwidth()[1]
    except Exception:  # the private parser moved: fall back to the declared cap
        return cap
    # folding may add invisible characters back in the source text
    return min(cap, 2 * widest + 16)


def build(config: PhrasesPolicy, ctx: BuildContext) -> PhrasesDetector:
    return PhrasesDetector(config)


KIND = PolicyKind(
    "phrases", PhrasesPolicy, build, "Literal phrases and regular expressions, Unicode-folded."
)
