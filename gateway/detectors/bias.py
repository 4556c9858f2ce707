"""Policy kind ``bias``: stereotyping and derogatory statements about protected groups.

The detector works sentence by sentence. In a stream it scans each sentence
once it is complete and holds back only the unfinished one, so a long answer
costs one pass. Per sentence it combines four signals:

* ``lexicon``: group terms from YAML lexicons (one per protected attribute).
  A mention alone never breaches; it gates the classifier.
* ``slurs``: slur lists matched fuzzily after undoing l33t, spacing and
  punctuation obfuscation. Unambiguous slurs breach on their own.
* ``generalisation``: "all/most X", "X are naturally/always …", "typical X".
  It raises the classifier score by ``generalisation_boost``.
* ``classifier``: MiniLM fine-tuned to score stereotyping statements,
  including implicit ones no pattern names (``gateway.detectors.stereotype``,
  trained by ``scripts/train_bias_classifier.py``).

Dehumanising words ("vermin", "parasites") next to a group mention score at
least ``dehumanising_score``. Quoted speech and sentences matching an
allowlist pattern (educational or historical discussion) are not reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

# the ``regex`` engine runs these alternations of group terms several times faster
import regex as re
from pydantic import Field, field_validator
from rapidfuzz import fuzz, process

from gateway.contract.detector import Finding, ScanContext
from gateway.contract.kind import BuildContext, PolicyKind
from gateway.contract.policy import PolicyBase, check_patterns
from gateway.detectors.stereotype import StereotypeClassifier
from gateway.errors import ConfigError, YamlSyntaxError
from gateway.textnorm import fold, to_source_span
from gateway.yaml_source import load_source

HERE = Path(__file__).parent
# false-positive budgets the shipped calibration table covers
CALIBRATION_BUDGETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)
# below this classifier probability a sentence is read as benign: an
# ambiguous slur or a dehumanising word in it sets no floor. A constant, not
# a share of the threshold, so that the calibrated threshold does not move it
BENIGN = 0.25
# the threshold when no classifier runs: a generalisation pattern alone
# (0.5 + the boost) or a slur / dehumanising floor breaches
RULES_THRESHOLD = 0.7
LEXICON_DIR = HERE / "lexicons"
DEFAULT_CLASSIFIER = HERE / "data" / "bias_classifier.npz"
ATTRIBUTES = (
    "race_ethnicity",
    "nationality",
    "religion",
    "gender",
    "sexual_orientation",
    "age",
    "disability",
    "socioeconomic",
)
Signal = Literal["lexicon", "slurs", "generalisation", "classifier", "dehumanising"]
ALL_SIGNALS: list[Signal] = ["lexicon", "slurs", "generalisation", "classifier", "dehumanising"]

# Markers of discussion about a stereotype rather than assertion of one. They
# are deliberately specific: a broad marker such as "research shows" would
# also excuse "research shows women are worse at maths".
DEFAULT_ALLOW_PATTERNS = [
    r"\b(?:the|a|this|that|common|harmful|racist|sexist|old|false)\s+(?:stereotypes?|tropes?|myths?)\b",
    r"\bstereotyp(?:e|es|ed|ing)\s+(?:that|of|about)\b",
    r"\b(?:myth|misconception|falsehood|prejudice|canard)\s+that\b",
    r"\b(?:it is|it's|that is|that's)\s+(?:false|wrong|untrue|a myth|racist|sexist|bigoted)\s+"
    r"(?:to (?:say|claim|think|assume)|that)\b",
    r"\b(?:was|were)\s+(?:once\s+|widely\s+|commonly\s+)*(?:believed|claimed|argued|portrayed)\b",
    r"\bpropaganda\b",
    r"\b(?:debunk(?:ed|s)?|refut(?:e|ed|es))\b",
]


class BiasPolicy(PolicyBase):
    kind: Literal["bias"]
    # protected attributes to watch; extra lexicons may add more names
    groups: list[str] = Field(default_factory=lambda: list(ATTRIBUTES))
    signals: list[Signal] = Field(default_factory=lambda: list(ALL_SIGNALS))
    # the share of neutral sentences naming a group that may breach: the
    # threshold is read from the calibration table stored in the classifier
    # artefact for this budget (see docs/bias.md)
    fpr_budget: float = Field(default=0.05, gt=0.0, lt=1.0)
    # a sentence scoring at or above this is reported; set, it overrides
    # the calibrated threshold
    threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    # added to the classifier score when a generalisation pattern matches
    generalisation_boost: float = Field(default=0.2, ge=0.0, le=1.0)
    # floor for a sentence that names a group and uses a dehumanising word
    dehumanising_score: float = Field(default=0.9, ge=0.0, le=1.0)
    # rapidfuzz ratio (0-100) a de-obfuscated token needs to count as a slur;
    # entries of four letters or fewer must match exactly
    slur_similarity: float = Field(default=88.0, ge=50.0, le=100.0)
    # extra lexicon / slur YAML files, relative to the policy file
    lexicons: list[str] = Field(default_factory=list)
    slur_lists: list[str] = Field(default_factory=list)
    # replace the shipped group lexicons instead of extending them
    replace_lexicons: bool = False
    # classifier artefact; None is the shipped one
    classifier: str | None = None
    # the base model the artefact's adapters were trained on (a name or a
    # local directory)
    model: str = "all-MiniLM-L6-v2"
    # "fp32", or "int8": linear layers quantised after the adapters are
    # merged, faster, scores close to fp32; checked at build time
    variant: str = "fp32"
    # "onnx" runs the merged model with onnxruntime (faster, same scores);
    # "torch" with PyTorch
    runtime: Literal["onnx", "torch"] = "onnx"
    # "mentions" runs the classifier only on sentences naming a group (and
    # the sentence after one, see context_sentences); "all" on every sentence
    classify: Literal["mentions", "all"] = "mentions"
    # a sentence without a group term that opens with a pronoun, right after
    # one that has a group term ("My neighbour is Mexican. He came here
    # illegally."), is scored together with it, so references are not lost
    context_sentences: int = Field(default=1, ge=0, le=1)
    # quoted speech is reported speech, not the model's claim
    allow_quotes: bool = True
    # sentences matching one of these are discussion, not assertion;
    # None means the shipped defaults
    allow_patterns: list[str] | None = None
    extra_allow_patterns: list[str] = Field(default_factory=list)
    # longest sentence held back in a stream before it is scanned anyway
    max_sentence_chars: int = Field(default=400, ge=40, le=5000)
    redact_with: str = "[removed: biased statement]"

    @field_validator("allow_patterns", "extra_allow_patterns")
    @classmethod
    def _compiles(cls, value: list[str] | None) -> list[str] | None:
        return check_patterns(value)

    @field_validator("signals")
    @classmethod
    def _some_signal(cls, value: list[Signal]) -> list[Signal]:
        if not value:
            raise ValueError("a bias policy needs at least one signal")
        return value


# --- lexicons ---------------------------------------------------------------


@dataclass(frozen=True)
class Lexicon:
    # term (folded) -> "attribute/group"
    terms: dict[str, str]
    # place name (folded) -> "attribute/group"; counts only beside a people noun
    places: dict[str, str]
    # slur (plain spelling) -> "attribute/group"
    slurs: dict[str, str]
    ambiguous: frozenset[str]
    dehumanising: frozenset[str]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = load_source(path).data
    except YamlSyntaxError as exc:
        raise ConfigError(f"lexicon {'; '.join(exc.errors)}", exc.errors) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a lexicon must be a mapping")
    return data


def _group_file(path: Path, terms: dict[str, str], places: dict[str, str]) -> None:
    data = _read_yaml(path)
    attribute = data.get("attribute")
    if not isinstance(attribute, str) or not isinstance(data.get("groups"), dict):
        raise ConfigError(f"{path}: a group lexicon needs `attribute:` and a `groups:` mapping")
    for section, into in (("groups", terms), ("places", places)):
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: `{section}:` must map each group to a list of terms")
        for group, words in entries.items():
            if not isinstance(words, list) or not all(
                isinstance(t, str) and t.strip() for t in words
            ):
                raise ConfigError(f"{path}: {section}.{group} must be a list of non-empty strings")
            for word in words:
                # one space between words, as matched text is normalised
                key = " ".join(fold(word)[0].split())
                if not _WORDS.search(key):
                    raise ConfigError(
                        f"{path}: {section}.{group}: {word!r} has no letters or digits"
                    )
                into[key] = f"{attribute}/{group}"


def _slur_file(path: Path, slurs: dict[str, str], ambiguous: set[str], dehum: set[str]) -> None:
    data = _read_yaml(path)
    entries = data.get("slurs", {}) or {}
    if not isinstance(entries, dict):
        raise ConfigError(f"{path}: `slurs:` must map each term to attribute/group")
    for term, group in entries.items():
        slurs[_squash(str(term))] = str(group)
    ambiguous.update(_squash(str(t)) for t in data.get("ambiguous", []) or [])
    dehum.update(fold(str(t))[0] for t in data.get("dehumanising", []) or [])


def load_lexicon(
    extra_groups: Sequence[Path] = (), extra_slurs: Sequence[Path] = (), replace: bool = False
) -> Lexicon:
    """The shipped lexicons plus any extra files (later files win on conflicts)."""
    terms: dict[str, str] = {}
    places: dict[str, str] = {}
    if not replace:
        for path in sorted(LEXICON_DIR.glob("*.yaml")):
            if path.name != "slurs.yaml":
                _group_file(path, terms, places)
    for path in extra_groups:
        _group_file(path, terms, places)
    slurs: dict[str, str] = {}
    ambiguous: set[str] = set()
    dehum: set[str] = set()
    _slur_file(LEXICON_DIR / "slurs.yaml", slurs, ambiguous, dehum)
    for path in extra_slurs:
        _slur_file(path, slurs, ambiguous, dehum)
    return Lexicon(terms, places, slurs, frozenset(ambiguous), frozenset(dehum))


# --- obfuscation-tolerant tokens ------------------------------------------------

_LEET = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "3": "e",
        "4": "a",
        "5": "s",
        "7": "t",
        "8": "b",
        "@": "a",
        "$": "s",
        "!": "i",
        "|": "l",
        "+": "t",
    }
)
# words seen before are looked up, not fuzzy-matched again
SLUR_MEMO_SIZE = 100_000
_NON_LETTER = re.compile(r"[^a-z]")
_TOKEN = re.compile(r"\S+")


@lru_cache(maxsize=65536)
def _squash(token: str) -> str:
    """Lower-case letters only, with l33t digits and symbols read as letters."""
    folded = fold(token)[0]
    return _NON_LETTER.sub("", folded.translate(_LEET))


@lru_cache(maxsize=4096)
def _candidates(sentence: str) -> tuple[tuple[str, int, int, bool], ...]:
    """De-obfuscated words with their spans, including spaced-out letter runs."""
    tokens = [(m.start(), m.end(), _squash(m.group())) for m in _TOKEN.finditer(sentence)]
    out: list[tuple[str, int, int]] = []
    i = 0
    while i < len(tokens):
        s, e, word = tokens[i]
        # "n i g g e r" or "w-o-m-e-n" split by spaces: join single letters
        if len(word) == 1:
            j = i
            while j + 1 < len(tokens) and len(tokens[j + 1][2]) == 1:
                j += 1
            if j - i >= 2:
                out.append(("".join(t[2] for t in tokens[i : j + 1]), s, tokens[j][1]))
                i = j + 1
                continue
        if word:
            out.append((word, s, e))
        i += 1
    # two-word slurs and words split in two ("fag got"); a joined pair is
    # marked so that only an exact slur counts: fuzzily, ordinary pairs
    # such as "who are" come within a letter of a slur
    pairs = [
        (a[0] + b[0], a[1], b[2], True) for a, b in zip(out, out[1:], strict=False) if a[0] and b[0]
    ]
    # cached: the mention and slur checks both ask for each sentence's words
    return tuple([(w, s, e, False) for w, s, e in out] + pairs)


# --- sentences --------------------------------------------------------------------

# a sentence ends at . ! ? (plus closing quotes or brackets) before white
# space, or at a line break; list items and headings are their own sentences
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s)|\n")
# a sentence that opens by pointing back at people ("He came here
# illegally.", "They never…") inherits the previous sentence's group; others
# are judged alone, which keeps classifier calls to sentences that need them
_REFERS_BACK = re.compile(
    r"\W*(?:\w+\W+){0,2}?(?:he|she|they|them|his|her|their|these|those|such|the people)\b"
)
_QUOTED = re.compile(r"\"[^\"\n]{1,400}\"|\u201c[^\u201d\n]{1,400}\u201d")


def split_sentences(text: str, start: int, final: bool, max_chars: int):
    """Yield ``(s, e)`` spans of complete sentences in ``text[start:]``; return the cursor."""
    spans: list[tuple[int, int]] = []
    pos = start
    for m in _SENTENCE_END.finditer(text, start):
        end = m.end()
        while pos < end and end - pos > max_chars:
            cut = _forced_cut(text, pos, max_chars)
            spans.append((pos, cut))
            pos = cut
        spans.append((pos, end))
        pos = end
    while len(text) - pos > max_chars:
        cut = _forced_cut(text, pos, max_chars)
        spans.append((pos, cut))
        pos = cut
    if final and pos < len(text):
        spans.append((pos, len(text)))
        pos = len(text)
    trimmed = []
    for s, e in spans:
        piece = text[s:e]
        lead = len(piece) - len(piece.lstrip())
        tail = len(piece.rstrip())
        if tail > lead:
            trimmed.append((s + lead, s + tail))
    return trimmed, pos


def _forced_cut(text: str, pos: int, max_chars: int) -> int:
    space = text.rfind(" ", pos + max_chars // 2, pos + max_chars)
    return space + 1 if space > pos else pos + max_chars


# --- detector -----------------------------------------------------------------------


@dataclass
class _Sentence:
    start: int
    end: int
    text: str
    groups: list[str]
    mention_spans: list[tuple[int, int]]


@dataclass
class _Candidate:
    sent: _Sentence
    signals: dict[str, Any]
    groups: list[str]
    floor: float
    boost: float
    # what the classifier reads; None when it is off for this sentence
    classify_text: str | None
    score: float
    # the words that named the group, and what the sentence says of it
    terms: list[str]
    claim: str


class BiasDetector:
    blocking: bool = True
    hold_back: int | None

    def __init__(
        self,
        config: BiasPolicy,
        lexicon: Lexicon,
        classifier: Any | None,
        threshold: float | None = None,
    ):
        self.config = config
        # build() reads the calibrated one; an explicit threshold wins
        self.threshold = config.threshold or threshold or RULES_THRESHOLD
        self.hold_back = config.max_sentence_chars
        self._signals = set(config.signals)
        self._classifier = classifier if "classifier" in self._signals else None
        watched = set(config.groups)
        terms = {t: g for t, g in lexicon.terms.items() if g.split("/")[0] in watched}
        self._terms = terms
        self._places = {p: g for p, g in lexicon.places.items() if g.split("/")[0] in watched}
        self._place_re = _place_pattern(self._places) if self._places else None
        # one word of every term and place (the longest, usually the rarest):
        # a sentence with none of them cannot match, so most sentences skip
        # the long alternations
        self._term_heads = frozenset(_key_word(t) for t in terms)
        self._place_heads = frozenset(_key_word(p) for p in self._places)
        self._slurs = {s: g for s, g in lexicon.slurs.items() if g.split("/")[0] in watched}
        self._slur_names = list(self._slurs)
        self._slur_memo: dict[str, tuple[str, float] | None] = {}
        self._ambiguous = lexicon.ambiguous
        self._dehum = lexicon.dehumanising
        if terms:
            alternation = "|".join(
                re.escape(t).replace(r"\ ", r"\s+") for t in sorted(terms, key=len, reverse=True)
            )
            self._group_re: re.Pattern[str] | None = re.compile(
                rf"(?<![\w-])(?:{alternation})(?:s|es)?(?![\w-])"
            )
            g = rf"(?:{alternation})(?:s|es)?"
            self._general_re: list[tuple[re.Pattern[str], str]] = [
                (
                    re.compile(
                        rf"\b(?:all|most|every|typical|those|these)\s+(?:of\s+(?:the|them)\s+)?"
                        rf"(?:[a-z'-]+\s+){{0,2}}?{g}(?![\w-])"
                    ),
                    "all/most X",
                ),
                (
                    re.compile(
                        rf"(?<![\w-]){g}\s+(?:are|is|were|tend to be|seem)\s+"
                        r"(?:all\s+|just\s+|so\s+|simply\s+)?(?:naturally|always|inherently|"
                        r"innately|genetically|never|by nature|born|incapable|all|"
                        r"usually|typically|generally)\b"
                    ),
                    "X are naturally/always Y",
                ),
                (
                    re.compile(
                        rf"(?<![\w-]){g}\s+(?:always|never|can't|cannot|can never|"
                        r"tend to|are known|are known to|are unable|don't know how)\b"
                    ),
                    "X always/never Y",
                ),
                (
                    re.compile(
                        rf"\b(?:like|such)\s+(?:a\s+|all\s+)?(?:typical|true|real)\s+{g}"
                        r"(?![\w-])"
                    ),
                    "typical X",
                ),
            ]
        else:
            self._group_re = None
            self._general_re = []
        self._dehum_re = (
            re.compile(rf"\b(?:{'|'.join(re.escape(d) for d in sorted(self._dehum))})\b")
            if self._dehum
            else None
        )
        allow = DEFAULT_ALLOW_PATTERNS if config.allow_patterns is None else config.allow_patterns
        # compiled one by one: joined into one alternation, a verbose-mode
        # comment or a numbered backreference would change the others
        self._allow = []
        for pattern in [*allow, *config.extra_allow_patterns]:
            try:
                self._allow.append(re.compile(pattern, re.IGNORECASE))
            except re.error as exc:
                raise ConfigError(
                    f"bias policy {config.id!r}: allow pattern {pattern!r} does not compile: {exc}"
                ) from None

    def start(self, ctx: ScanContext) -> _BiasScan:
        return _BiasScan(self)

    def warm(self) -> None:
        if self._classifier is not None:
            self._classifier.logits(["The team met on Monday."])

    # each sentence is judged on its own, plus the previous one when that
    # carries the group the sentence refers to
    def judge(self, sentences: list[tuple[_Sentence, _Sentence | None]]) -> list[Finding]:
        return [self._finding(c) for c in self._scored(sentences) if c.score >= self.threshold]

    def score(self, text: str) -> float:
        """Highest sentence score in ``text``, before the threshold (for benchmarks)."""
        spans, _ = split_sentences(text, 0, True, self.config.max_sentence_chars)
        batch: list[tuple[_Sentence, _Sentence | None]] = []
        previous: _Sentence | None = None
        for s, e in spans:
            sent = _Sentence(s, e, text[s:e], *self.mentions(text[s:e]))
            batch.append((sent, previous if self.config.context_sentences else None))
            previous = sent
        return max((c.score for c in self._scored(batch)), default=0.0)

    def _scored(self, sentences: list[tuple[_Sentence, _Sentence | None]]) -> list[_Candidate]:
        candidates: list[_Candidate] = []
        for sent, previous in sentences:
            cand = self._signals_of(sent, previous)
            if cand is not None:
                candidates.append(cand)
        to_classify = [c for c in candidates if c.classify_text is not None]
        if to_classify and self._classifier is not None:
            probs = self._classifier.scores([c.classify_text for c in to_classify])
            for cand, prob in zip(to_classify, probs, strict=True):
                cand.signals["classifier"] = round(prob, 4)
                if prob < BENIGN and cand.floor < 1.0:
                    # an ambiguous term ("queer theory") or a dehumanising
                    # word ("calling refugees vermin is vile") in a sentence
                    # the classifier reads as benign does not set a floor;
                    # an unambiguous slur (floor 1.0) always does
                    cand.signals.pop("slur", None)
                    cand.signals.pop("dehumanising", None)
                    cand.floor = 0.0
                cand.score = max(cand.floor, min(1.0, prob + cand.boost))
        return candidates

    def _signals_of(self, sent: _Sentence, previous: _Sentence | None) -> _Candidate | None:
        cfg = self.config
        folded, origin = fold(sent.text)
        # mention and pattern spans are offsets into the folded text, slur
        # spans into the original; folding can shift offsets, so keep both
        quoted = _quoted_ranges(folded) if cfg.allow_quotes else []
        quoted_original = _quoted_ranges(sent.text) if cfg.allow_quotes else []
        signals: dict[str, Any] = {}
        kept = [
            (g, span)
            for g, span in zip(sent.groups, sent.mention_spans, strict=True)
            if not _inside(span, quoted)
        ]
        groups = [g for g, _ in kept]
        spans = [to_source_span(origin, a, b, len(sent.text)) for _, (a, b) in kept if b > a]
        terms = [sent.text[a:b] for a, b in spans]
        claim = _claim(sent.text, spans[0] if spans else None)
        floor = 0.0
        if "slurs" in self._signals:
            hit = self._slur(sent.text, quoted_original)
            if hit is not None:
                term, group, similarity, ambiguous = hit
                signals["slur"] = {"term": term, "similarity": round(similarity, 1)}
                groups.append(group)
                terms.append(term)
                if not ambiguous:
                    floor = 1.0
        if groups and "dehumanising" in self._signals and self._dehum_re is not None:
            m = self._dehum_re.search(folded)
            if m and not _inside((m.start(), m.end()), quoted):
                signals["dehumanising"] = m.group()
                floor = max(floor, cfg.dehumanising_score)
        boost = 0.0
        if groups and "generalisation" in self._signals:
            for regex, label in self._general_re:
                m = regex.search(folded)
                if m and not _inside((m.start(), m.end()), quoted):
                    signals["generalisation"] = label
                    boost = cfg.generalisation_boost
                    break
        text = sent.text
        # with classify: all, a pronoun-led sentence is read with the one
        # before it even when that names no group term ("The chess player
        # was new. He was shy.")
        refers_back = previous is not None and (previous.groups or cfg.classify == "all")
        if previous is not None and not groups and refers_back and _REFERS_BACK.match(folded):
            groups = list(previous.groups)
            text = f"{previous.text} {sent.text}"
            signals["context"] = "previous sentence"
            terms = self.group_terms(previous.text)
            claim = _claim(sent.text, None)
        # the allowlist is searched last: most sentences have nothing to
        # judge and never need it
        if self._classifier is not None and (groups or cfg.classify == "all"):
            if self._allowed(sent.text):
                return None
            return _Candidate(sent, signals, groups, floor, boost, text, 0.0, terms, claim)
        if (floor == 0.0 and "generalisation" not in signals) or self._allowed(sent.text):
            return None
        # without the classifier a generalisation about a group is judged
        # on the pattern alone
        base = 0.5 if "generalisation" in signals else 0.0
        return _Candidate(
            sent, signals, groups, floor, boost, None, max(floor, base + boost), terms, claim
        )

    def _allowed(self, sentence: str) -> bool:
        return any(p.search(sentence) for p in self._allow)

    def group_terms(self, text: str) -> list[str]:
        """The words in ``text`` that name a group, as written."""
        folded, origin = fold(text)
        spans = [
            to_source_span(origin, a, b, len(text)) for a, b in self.mentions(text)[1] if b > a
        ]
        return [text[a:b] for a, b in spans]

    def _finding(self, cand: _Candidate) -> Finding:
        sent, signals = cand.sent, cand.signals
        unique = list(dict.fromkeys(cand.groups)) or ["unspecified"]
        attributes = list(dict.fromkeys(g.split("/")[0] for g in unique))
        terms = list(dict.fromkeys(cand.terms))
        named = f" ({', '.join(terms)})" if terms else ""
        return Finding(
            sent.start,
            sent.end,
            float(cand.score),
            f"stereotyping or derogatory statement about {', '.join(unique)}{named}: {cand.claim}",
            {
                "group": unique[0],
                "groups": unique,
                "attributes": attributes,
                # the words that named the group, as written
                "group_terms": terms,
                # what is said of the group: the pattern that matched, if
                # any, and the words after the group term
                "generalisation": {"pattern": signals.get("generalisation"), "claim": cand.claim},
                "signals": signals,
                "score": round(float(cand.score), 4),
                "threshold": round(self.threshold, 4),
                "sentence": sent.text,
            },
        )

    def mentions(self, text: str) -> tuple[list[str], list[tuple[int, int]]]:
        if self._group_re is None and self._place_re is None:
            return [], []
        folded, origin = fold(text)
        groups, spans = [], []
        words = set(_WORDS.findall(folded))
        # singular forms too: the patterns accept a plural -s/-es after a term
        words.update([w[:-1] for w in words if w.endswith("s")])
        words.update([w[:-2] for w in words if w.endswith("es")])
        if self._group_re is not None and not words.isdisjoint(self._term_heads):
            for m in self._group_re.finditer(folded):
                groups.append(self._group_of(m.group()))
                spans.append((m.start(), m.end()))
        if (
            self._place_re is not None
            and not words.isdisjoint(self._place_heads)
            and not words.isdisjoint(_PEOPLE_WORDS)
        ):
            for m in self._place_re.finditer(folded):
                place = " ".join((m.group("before") or m.group("after")).split())
                groups.append(self._places[place])
                spans.append((m.start(), m.end()))
        if not groups:
            # "w o m e n", "mus1ims": look again with obfuscation undone
            terms = self._terms
            for word, _s, _e, _joined in _candidates(text):
                if len(word) > 3 and (word in terms or word.rstrip("s") in terms):
                    groups.append(terms.get(word) or terms[word.rstrip("s")])
                    spans.append((0, 0))
        return groups, spans

    def _group_of(self, matched: str) -> str:
        key = " ".join(matched.split())
        for candidate in (key, key[:-1], key[:-2]):
            if candidate in self._terms:
                return self._terms[candidate]
        return "unspecified"

    def _slur_word(self, word: str) -> tuple[str, float] | None:
        """The slur ``word`` is (or resembles), memoised: answers reuse most words."""
        if word in self._slur_memo:
            return self._slur_memo[word]
        hit: tuple[str, float] | None = None
        exact = next((w for w in (word, word[:-1], word[:-2]) if w in self._slurs), None)
        if exact is not None and (exact == word or word[len(exact) :] in ("s", "es")):
            hit = (exact, 100.0)
        elif len(word) >= 5:
            found = process.extractOne(
                word,
                self._slur_names,
                scorer=fuzz.ratio,
                score_cutoff=self.config.slur_similarity,
            )
            # short slurs only match exactly: fuzzy 4-letter matches are
            # mostly ordinary words
            if found is not None and len(found[0]) > 4:
                hit = (found[0], float(found[1]))
        if len(self._slur_memo) >= SLUR_MEMO_SIZE:
            self._slur_memo.clear()
        self._slur_memo[word] = hit
        return hit

    def _slur(self, sentence: str, quoted: list[tuple[int, int]]):
        if not self._slurs:
            return None
        best = None
        for word, s, e, joined in _candidates(sentence):
            if len(word) < 3:
                continue
            hit = self._slur_word(word)
            if hit is None or (quoted and _inside((s, e), quoted)):
                continue
            term, similarity = hit
            if joined and similarity < 100.0:
                continue
            ambiguous = term in self._ambiguous
            # on a tie an unambiguous slur wins: "fag got" is "faggot"
            if best is None or (similarity, not ambiguous) > (best[2], not best[3]):
                best = (term, self._slurs[term], similarity, ambiguous)
        return best


# words for people that turn a place name into a mention of its people
_PEOPLE_WORDS = frozenset(
    "people persons men women folk folks citizens residents natives locals immigrants "
    "migrants kids children families workers girls boys guys population".split()
)
_PEOPLE = rf"(?:{'|'.join(sorted(_PEOPLE_WORDS, key=len, reverse=True))})"
_WORDS = re.compile(r"\w+")


def _key_word(term: str) -> str:
    return max(_WORDS.findall(term), key=len)


def _place_pattern(places: dict[str, str]) -> re.Pattern[str]:
    """ "people from X", "men of X", "X people": a place name used for its people."""
    alternation = "|".join(
        re.escape(p).replace(r"\ ", r"\s+") for p in sorted(places, key=len, reverse=True)
    )
    return re.compile(
        rf"(?<![\w-])(?:{_PEOPLE}\s+(?:from|of|in)\s+(?:the\s+)?(?P<before>{alternation})"
        rf"|(?P<after>{alternation})\s+{_PEOPLE})(?![\w-])"
    )


_EDGE = re.compile(r"^[\s,;:.!?\"'\u201d\u2019)-]+|[\s,;:.!?\"'\u201c\u2018(-]+$")


def _claim(sentence: str, mention: tuple[int, int] | None) -> str:
    """What the sentence says of the group: the words after its first group
    term when there are at least two of them, else the whole sentence."""
    if mention is not None:
        rest = _EDGE.sub("", sentence[mention[1] :])
        if len(rest.split()) >= 2:
            return rest[:200]
    return _EDGE.sub("", sentence)[:200]


def _quoted_ranges(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _QUOTED.finditer(text)]


def _inside(span: tuple[int, int], ranges: list[tuple[int, int]]) -> bool:
    return any(s <= span[0] and span[1] <= e for s, e in ranges)


class _BiasScan:
    """Scans each sentence once, when it is complete."""

    __slots__ = ("_det", "_cursor", "_previous")

    def __init__(self, detector: BiasDetector):
        self._det = detector
        self._cursor = 0
        self._previous: _Sentence | None = None

    def feed(self, text: str, final: bool) -> list[Finding]:
        det = self._det
        spans, self._cursor = split_sentences(
            text, self._cursor, final, det.config.max_sentence_chars
        )
        if not spans:
            return []
        batch: list[tuple[_Sentence, _Sentence | None]] = []
        for s, e in spans:
            piece = text[s:e]
            groups, mention_spans = det.mentions(piece)
            sent = _Sentence(s, e, piece, groups, mention_spans)
            previous = self._previous if det.config.context_sentences else None
            batch.append((sent, previous))
            self._previous = sent
        return det.judge(batch)

    def hold_from(self, text: str) -> int:
        return min(self._cursor, len(text))


def build(config: BiasPolicy, ctx: BuildContext) -> BiasDetector:
    lexicon = load_lexicon(
        [ctx.base_dir / p for p in config.lexicons],
        [ctx.base_dir / p for p in config.slur_lists],
        replace=config.replace_lexicons,
    )
    known = {g.split("/")[0] for g in [*lexicon.terms.values(), *lexicon.places.values()]}
    unknown = [g for g in config.groups if g not in known]
    if unknown:
        raise ConfigError(
            f"bias policy {config.id!r}: unknown group(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    classifier = None
    if "classifier" in config.signals:
        path = ctx.base_dir / config.classifier if config.classifier else DEFAULT_CLASSIFIER
        try:
            stat = path.stat()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the bias classifier: {exc.strerror}") from None
        # a retrained artefact at the same path is a new classifier on reload
        key = (
            f"bias_classifier:{path}:{stat.st_mtime_ns}:{stat.st_size}:"
            f"{config.model}:{config.variant}:{config.runtime}"
        )
        classifier = ctx.resources.shared(
            key,
            lambda: StereotypeClassifier(path, config.model, config.variant, config.runtime),
        )
    threshold = config.threshold
    if threshold is None and classifier is not None:
        threshold = calibrated_threshold(
            classifier.meta, config.variant, config.fpr_budget, f"bias policy {config.id!r}"
        )
    return BiasDetector(config, lexicon, classifier, threshold)


def calibrated_threshold(meta: dict[str, Any], variant: str, budget: float, who: str) -> float:
    """The threshold the artefact's calibration table gives for ``budget``.

    The table holds thresholds for a few budgets, measured on held-out
    neutral sentences that name groups. Between two budgets the stricter
    one's threshold is used, so the calibrated rate never exceeds the budget.
    """
    table = (meta.get("calibration") or {}).get("variants", {}).get(variant)
    if not table:
        raise ConfigError(
            f"{who}: the classifier artefact has no calibration table for variant "
            f"{variant!r}; set `threshold`, or calibrate it (bench/bias_quality.py "
            "--write-calibration)"
        )
    pairs = sorted(zip(table["budgets"], table["thresholds"], strict=True))
    usable = [t for b, t in pairs if b <= budget + 1e-9]
    if not usable:
        raise ConfigError(
            f"{who}: fpr_budget {budget} is below the smallest calibrated budget "
            f"{pairs[0][0]}; set `threshold` instead"
        )
    return float(usable[-1])


KIND = PolicyKind(
    "bias",
    BiasPolicy,
    build,
    "Stereotyping and derogatory statements about protected groups, with evidence spans.",
)
