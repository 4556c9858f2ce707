"""Quality of the ``copyright`` detector, tuned on a dev split and reported on a blind one.

Protocol
--------
The State of the Union addresses are split by a hash of the address id
(crc32 of the id, modulo 10), so the split does not depend on file order:

==========  ==========  ====================================================
bucket      indexed?    used for
==========  ==========  ====================================================
0-3         yes         dev copies and dev summaries are taken from these
4-7         yes         blind copies and blind summaries
8           no          dev negatives: original text by other presidents
9           no          blind negatives
==========  ==========  ====================================================

Every indexed address is in the one protected index; only the *queries*
differ by split. The two splits also use different generators, so a
threshold cannot be fitted to the quirks of one edit model:

- filler and news negatives: MSRP train sentences (dev), MSRP test (blind);
- edits: different synonym tables, inserted words, deletion preferences and
  reordering moves (adjacent swaps for dev, moved 2-4-word chunks for blind);
- summaries: different sentence templates.

``--tune`` searches ``near_ratio`` and ``near_min_words`` on the dev split only
(it never builds a blind case) and prints the grid; the policy defaults were
set from it. Without ``--tune`` the bench reports both splits at the policy
defaults (or the ``--near-ratio`` / ``--near-min-words`` given), each figure
as ``{count, rate, low, high}`` with a 95% Wilson interval.

Cases
-----
Positives, each embedded in 30-150 words of news sentences on either side:
verbatim copies of exactly 12 and 24 words; near-verbatim copies of 15-60
words with about 15% and about 25% of the source words edited (synonyms and
other substitutions, insertions, deletions, local reordering).

Negatives:

- summaries: text *about* an indexed passage that repeats its names, numbers
  and salient content words in new sentences, not its word sequences; 40%
  also hold one short quote of 4-6 words, another 40% a sentence stringing
  two or three quotes of 3-5 words together in the passage's order;
- held-out addresses: 100-word windows of addresses that are not indexed
  (same genre and topics). Windows that share a 12-word run with the
  protected corpus are real repeats and are counted apart;
- news: 8 MSRP sentences per response.

A positive is found when the findings that name its source together cover
at least half of the copied span; ``<family>_one_finding`` gives the
stricter reading (one finding alone). Every family also reports its recall
by copy length where that matters.

The semantic (MSRP paraphrase) section is unchanged; ``--skip-semantic`` skips
it. Prints one JSON object. Reads ../shared/data; run from the repository root:

    nice -n 10 .venv/bin/python bench/copyright_quality.py --quick --skip-semantic  # 1-2 min
    nice -n 10 .venv/bin/python bench/copyright_quality.py --skip-semantic          # 2-4 min
    nice -n 10 .venv/bin/python bench/copyright_quality.py --tune --quick           # ~15 min
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from rapidfuzz.distance import Indel, Levenshtein

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.contract.detector import ScanContext  # noqa: E402
from gateway.detectors.copyright import CopyrightDetector, CopyrightPolicy  # noqa: E402
from gateway.index import BuildParams, CopyrightIndex, build_index  # noqa: E402
from gateway.index.text import ngram_hashes, words  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SPLITS = ("dev", "blind")


# -- data ----------------------------------------------------------------------------


def load_sotu() -> list[dict]:
    with gzip.open(DATA / "corpus" / "sotu.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def load_msrp(split: str) -> list[tuple[int, str, str, str, str]]:
    rows = []
    path = DATA / "paraphrase" / f"msr_paraphrase_{split}.txt"
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        parts = line.split("\t")
        if len(parts) != 5 or parts[0] not in ("0", "1"):
            continue
        rows.append((int(parts[0]), parts[1], parts[2], parts[3], parts[4]))
    return rows


def bucket_of(doc_id: str) -> int:
    return zlib.crc32(doc_id.encode("utf-8")) % 10


def role(doc_id: str) -> str:
    """``dev`` / ``blind`` (indexed, copy source) or ``dev-held`` / ``blind-held`` (not indexed)."""
    b = bucket_of(doc_id)
    if b <= 3:
        return "dev"
    if b <= 7:
        return "blind"
    return "dev-held" if b == 8 else "blind-held"


# -- statistics -------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = 1.96) -> dict:
    """Count, rate and 95% Wilson score interval (percent)."""
    if n == 0:
        return {"count": 0, "n": 0, "rate": None, "low": None, "high": None}
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return {
        "count": k,
        "n": n,
        "rate": round(100 * p, 2),
        "low": round(100 * max(0.0, mid - half), 2),
        "high": round(100 * min(1.0, mid + half), 2),
    }


# -- edit generators --------------------------------------------------------------------
# Two deliberately different edit models. The detector is tuned on ``dev`` and
# reported on ``blind``; their synonym tables share no source word.

DEV_SYNONYMS = {
    "great": "large",
    "country": "nation",
    "people": "citizens",
    "government": "administration",
    "must": "should",
    "important": "significant",
    "increase": "growth",
    "present": "current",
    "power": "strength",
    "war": "conflict",
    "duty": "obligation",
    "shall": "will",
    "subject": "matter",
    "however": "but",
    "many": "numerous",
    "necessary": "needed",
    "made": "done",
    "large": "big",
    "public": "common",
    "which": "that",
    "upon": "on",
    "among": "between",
    "whole": "entire",
    "attention": "notice",
    "measures": "steps",
    "interest": "concern",
    "believe": "think",
    "object": "aim",
    "means": "ways",
    "provide": "supply",
    "world": "globe",
    "years": "decades",
    "recommend": "suggest",
    "proper": "appropriate",
    "condition": "state",
    "effect": "impact",
    "amount": "sum",
    "policy": "approach",
    "secure": "ensure",
    "foreign": "overseas",
}
DEV_INSERT = ["also", "indeed", "clearly", "really", "now", "truly", "still", "very"]

BLIND_SYNONYMS = {
    "congress": "legislature",
    "law": "statute",
    "nation": "country",
    "citizens": "people",
    "states": "nations",
    "time": "period",
    "new": "fresh",
    "peace": "harmony",
    "should": "ought to",
    "national": "federal",
    "every": "each",
    "great": "major",
    "good": "fine",
    "support": "back",
    "year": "twelvemonth",
    "american": "u.s.",
    "help": "assist",
    "economy": "economic system",
    "important": "key",
    "first": "initial",
    "work": "labor",
    "america": "the united states",
    "children": "kids",
    "future": "years ahead",
    "program": "scheme",
    "million": "millions",
    "part": "portion",
    "military": "armed",
    "strong": "robust",
    "make": "create",
    "free": "unrestricted",
    "tax": "levy",
    "budget": "spending plan",
    "security": "safety",
    "the": "this",
    "and": "as well as",
    "but": "yet",
    "because": "since",
    "also": "as well",
    "know": "understand",
}
BLIND_INSERT = ["in fact", "of course", "moreover", "certainly", "as a result", "above all"]
BLIND_DROP_FIRST = {"the", "a", "an", "very", "that", "all", "of", "our"}


def edit_copy(rng: random.Random, toks: list[str], rate: float, model: str) -> list[str]:
    """Edit about ``rate`` of the words of ``toks`` (a copy's source words).

    Each operation touches one or a few source positions; operations are
    drawn until the touched share reaches the rate. Touched positions are not
    edited twice, so the realised rate is close to the requested one.
    """
    w = [[t] for t in toks]  # each source word may become a phrase or vanish
    n = len(toks)
    want = max(1, round(rate * n))
    touched: set[int] = set()
    syn = DEV_SYNONYMS if model == "dev" else BLIND_SYNONYMS
    ins = DEV_INSERT if model == "dev" else BLIND_INSERT
    if model == "dev":
        ops, weights = ("synonym", "insert", "delete", "swap"), (0.45, 0.2, 0.2, 0.15)
    else:
        ops, weights = ("synonym", "insert", "delete", "move", "swap"), (0.4, 0.2, 0.15, 0.15, 0.1)
    guard = 0
    while len(touched) < want and guard < 50 * n:
        guard += 1
        op = rng.choices(ops, weights)[0]
        free = [i for i in range(n) if i not in touched]
        if not free:
            break
        if op == "synonym":
            cands = [i for i in free if toks[i].lower().strip(".,;:") in syn]
            if cands:
                i = rng.choice(cands)
                w[i] = syn[toks[i].lower().strip(".,;:")].split()
            else:  # no table word left: an unrelated substitution
                i = rng.choice(free)
                w[i] = [rng.choice(list(syn.values())).split()[0]]
            touched.add(i)
        elif op == "insert":
            i = rng.choice(free)
            w[i] = (
                [*w[i], *rng.choice(ins).split()]
                if rng.random() < 0.5
                else [
                    *rng.choice(ins).split(),
                    *w[i],
                ]
            )
            touched.add(i)
        elif op == "delete":
            cands = free
            if model == "blind":
                pref = [i for i in free if toks[i].lower() in BLIND_DROP_FIRST]
                cands = pref or free
            i = rng.choice(cands)
            w[i] = []
            touched.add(i)
        elif op == "swap":
            pairs = [i for i in free if i + 1 < n and i + 1 not in touched]
            if not pairs:
                continue
            i = rng.choice(pairs)
            w[i], w[i + 1] = w[i + 1], w[i]
            touched.update((i, i + 1))
        else:  # move a 2-4-word chunk 1-3 positions right
            size = rng.randint(2, 4)
            starts = [
                i
                for i in free
                if i + size + 3 < n and all(j not in touched for j in range(i, i + size + 3))
            ]
            if not starts:
                continue
            i = rng.choice(starts)
            shift = rng.randint(1, 3)
            chunk = w[i : i + size]
            w[i : i + size + shift] = w[i + size : i + size + shift] + chunk
            touched.update(range(i, i + size))
    return [t for group in w for t in group]


def realised_edits(src: list[str], out: list[str]) -> tuple[float, float]:
    """How much a copy differs from its source, two readings.

    ``lost``: share of source words not kept in order (1 - LCS / source
    words). ``edits``: word-level Levenshtein distance / source words (a swap
    of two words counts 2, an inserted word 1).
    """
    a = [t.lower().strip(".,;:") for t in src]
    b = [t.lower().strip(".,;:") for t in out]
    lcs = (len(a) + len(b) - Indel.distance(a, b)) // 2
    return 1 - lcs / len(a), Levenshtein.distance(a, b) / len(a)


# -- summaries ---------------------------------------------------------------------------

STOP = set(
    """a an the and or but if of to in on at by for with from as is are was were be been being
    it its this that these those which who whom whose what when where why how not no nor so than
    too very can will would shall should may might must do does did done have has had having i we
    you he she they them us our your his her their my me him all any each every some such other
    more most much many few own same only also just there here then now upon into over under
    again further once about against between through during before after above below up down out
    off while because until both one""".split()
)

DEV_TEMPLATES = [
    "In this part of the address, {owner} turns to {a} and {b}.",
    "The passage is mostly about {a}, with a note on {b}.",
    "{owner} spoke about {a} in {year}, linking it to {b} and {c}.",
    "A reader today would notice how much weight the speech gives to {a}.",
    "Historians often cite this section when they discuss {a} and {c}.",
    "The main point concerns {b}; {a} comes up as the example.",
    "Put simply, the president wants Congress to act on {c}.",
    "It also mentions {d}, though only briefly.",
]
BLIND_TEMPLATES = [
    "Here {owner} discusses {a}, and the argument leans on {b}.",
    "Summary: the {year} message covers {a}, {b} and {c}.",
    "The key theme is {b}. The speaker relates it to {a}.",
    "Why does it matter? Because {a} shaped the debate over {c} at the time.",
    "Critics later questioned the claims about {d}.",
    "In short, the text asks lawmakers to think again about {a}.",
    "Scholars read the remarks on {c} as a response to events of {year}.",
    "Compared with earlier years, the attention to {a} and {d} is new.",
]
QUOTE_JOINS = {
    "dev": ["The speech refers to", "and goes on to", "before it ends with"],
    "blind": ["We read of", "then of", "and finally of"],
}
COMMENTARY = {
    "dev": [
        "That context helps explain the tone of the whole speech.",
        "Let me know if you would like the full text or a shorter overview.",
        "This is a paraphrase, not a quotation, of the original remarks.",
    ],
    "blind": [
        "I can expand on any of these points if that helps.",
        "Other addresses from the same decade take a similar line.",
        "The wording here is mine; see the original for the exact phrasing.",
    ],
}


def salient(toks: list[str], df: Counter, n_docs: int) -> list[str]:
    """Names, numbers and rare content words of a passage, in text order, no repeats."""
    scored: list[tuple[float, int, str]] = []
    seen: set[str] = set()
    for i, t in enumerate(toks):
        word = t.strip(".,;:!?\"'()[]")
        key = word.lower()
        if not word or key in STOP or key in seen or len(word) < 3:
            continue
        seen.add(key)
        idf = math.log((n_docs + 1) / (df.get(key, 0) + 1))
        bonus = 2.0 if word[:1].isupper() and i > 0 else 0.0
        bonus += 2.0 if any(ch.isdigit() for ch in word) else 0.0
        scored.append((idf + bonus, i, word))
    top = sorted(scored, reverse=True)[:8]
    return [w for _, _, w in sorted(top, key=lambda x: x[1])]


def summary(
    rng: random.Random, passage: list[str], doc: dict, split: str, df: Counter, n_docs: int
) -> str:
    keys = salient(passage, df, n_docs) or ["the issues of the day"]
    templates = DEV_TEMPLATES if split == "dev" else BLIND_TEMPLATES
    picked = rng.sample(templates, rng.randint(3, 5))
    out = []
    for tpl in picked:
        a, b, c, d = (rng.choice(keys) for _ in range(4))
        out.append(tpl.format(owner=doc["name"], year=doc["year"], a=a, b=b, c=c, d=d))
    roll = rng.random()
    if roll < 0.4:
        # a short quote, as a discussion of a text often has
        k = rng.randint(4, 6)
        a = rng.randrange(0, max(1, len(passage) - k))
        out.insert(rng.randrange(len(out) + 1), f'He calls it "{" ".join(passage[a : a + k])}".')
    elif roll < 0.8:
        # several short quotes in the passage's own order, joined by new words:
        # the closest a discussion comes to the text without copying it
        quotes = []
        pos = 0
        for _ in range(3):
            k = rng.randint(3, 5)
            if pos + k >= len(passage):
                break
            a = rng.randrange(pos, min(len(passage) - k, pos + 15))
            quotes.append(" ".join(passage[a : a + k]))
            pos = a + k + rng.randint(3, 8)
        joins = QUOTE_JOINS[split]
        line = f'{joins[0]} "{quotes[0]}"' if quotes else ""
        for j, quote in enumerate(quotes[1:], 1):
            line += f' {joins[j]} "{quote}"'
        if line:
            out.insert(rng.randrange(len(out) + 1), line + ".")
    out.append(rng.choice(COMMENTARY[split]))
    return " ".join(out)


# -- the harness --------------------------------------------------------------------------

OVERRIDES: dict = {}


def detector(index: CopyrightIndex, **cfg) -> CopyrightDetector:
    config = CopyrightPolicy(id="bench", kind="copyright", **{**OVERRIDES, **cfg})
    return CopyrightDetector(config, lambda: index)


def scan(det: CopyrightDetector, text: str):
    return det.start(ScanContext()).feed(text, True)


def filler(rng: random.Random, sentences: list[str], n_words: int) -> str:
    out: list[str] = []
    count = 0
    while count < n_words:
        s = rng.choice(sentences)
        out.append(s)
        count += len(s.split())
    return " ".join(out)


class Corpus:
    """The protected index and the per-split material drawn from the data."""

    def __init__(self) -> None:
        sotu = load_sotu()
        self.by_role: dict[str, list[dict]] = {}
        for d in sotu:
            self.by_role.setdefault(role(d["id"]), []).append(d)
        self.protected = self.by_role["dev"] + self.by_role["blind"]
        self.news = {
            "dev": [s for r in load_msrp("train") for s in (r[3], r[4])],
            "blind": [s for r in load_msrp("test") for s in (r[3], r[4])],
        }
        tmp = Path(tempfile.mkdtemp(prefix="cr-bench-"))
        corpus = tmp / "sotu.jsonl"
        with open(corpus, "w", encoding="utf-8") as fh:
            for d in self.protected:
                rec = {"id": d["id"], "text": d["text"], "owner": d["name"], "year": d["year"]}
                fh.write(json.dumps(rec) + "\n")
        t0 = time.perf_counter()
        report = build_index(corpus, tmp / "idx", BuildParams(semantic=False))
        self.build_s = time.perf_counter() - t0
        self.report = report
        self.index = CopyrightIndex(tmp / "idx")
        self.words = {d["id"]: words(d["text"]) for d in self.protected}
        self.df: Counter = Counter()
        for d in self.protected:
            self.df.update({t for t in self.words[d["id"]].tokens})

    def info(self) -> dict:
        return {
            "documents_indexed": self.report.documents,
            "passages": self.report.passages,
            "anchors": self.index.counts()["anchors"],
            "build_seconds": round(self.build_s, 2),
            "addresses": {k: len(v) for k, v in sorted(self.by_role.items())},
        }


Case = tuple[str, str, tuple[int, int], str]  # (family, text, span, source id)


def positives(c: Corpus, split: str, rng: random.Random, n: int) -> list[Case]:
    """Copies from the split's own indexed addresses, in the split's own news filler."""
    docs = c.by_role[split]
    news = c.news[split]
    out: list[Case] = []

    def place(span_text: str, doc_id: str) -> tuple[str, tuple[int, int], str]:
        before = filler(rng, news, rng.randint(30, 150))
        after = filler(rng, news, rng.randint(30, 150))
        start = len(before) + 1
        return before + " " + span_text + " " + after, (start, start + len(span_text)), doc_id

    def source(length: int) -> tuple[dict, list[str]]:
        while True:
            d = rng.choice(docs)
            toks = d["text"].split()
            if len(toks) > length + 2:
                a = rng.randrange(0, len(toks) - length)
                return d, toks[a : a + length]

    for family, length in (("verbatim_12", 12), ("verbatim_24", 24)):
        for _ in range(n):
            d, toks = source(length)
            # whitespace words may carry punctuation-joined pieces; the detector's
            # words are what counts, so trim to exactly ``length`` of them
            text = " ".join(toks)
            w = words(text)
            while len(w) > length:
                toks = toks[:-1]
                text = " ".join(toks)
                w = words(text)
            if len(w) < length:
                continue
            out.append((family, *place(text, d["id"])))
    for family, rate in (("near_15pct", 0.15), ("near_25pct", 0.25)):
        for _ in range(n):
            length = rng.randint(15, 60)
            d, toks = source(length)
            edited = edit_copy(rng, toks, rate, split)
            out.append((family, *place(" ".join(edited), d["id"])))
    return out


def negatives(c: Corpus, split: str, rng: random.Random, n: int) -> list[Case]:
    out: list[Case] = []
    docs = c.by_role[split]
    n_docs = len(c.protected)
    for _ in range(n):
        d = rng.choice(docs)
        toks = d["text"].split()
        a = rng.randrange(0, max(1, len(toks) - 80))
        text = summary(rng, toks[a : a + rng.randint(40, 80)], d, split, c.df, n_docs)
        out.append(("summary", text, (0, len(text)), d["id"]))
    news = c.news[split]
    for i in range(0, min(len(news) - 8, 8 * n), 8):
        text = " ".join(news[i : i + 8])
        out.append(("news", text, (0, len(text)), ""))
    return out


def held_out(c: Corpus, split: str) -> tuple[list[tuple[str, list[tuple[int, int, bool]]]], dict]:
    """100-word windows of the split's addresses that are not indexed.

    Ground truth comes from every 12-word run of the protected corpus: a
    window that shares one really repeats indexed text (addresses reuse
    formulas) and is counted apart, not as a negative.
    """
    shared = np.unique(np.concatenate([ngram_hashes(w.hashes, 12) for w in c.words.values()]))
    docs = []
    for d in c.by_role[f"{split}-held"]:
        w = words(d["text"])
        is_shared = np.isin(ngram_hashes(w.hashes, 12), shared)
        wins = []
        for a in range(0, len(w), 100):
            b = min(len(w), a + 100) - 1
            wins.append((w.starts[a], w.ends[b], bool(is_shared[max(0, a - 11) : b + 1].any())))
        docs.append((d["text"], wins))
    return docs, {"addresses": len(docs)}


def covered(findings, span, doc_id, types, min_cover=0.5) -> bool:
    """Whether the findings naming the source together cover ``min_cover`` of the span.

    A copy whose edits leave two long exact runs is reported as two verbatim
    findings; blocking or redacting works on both, so together they count.
    """
    mask = np.zeros(span[1] - span[0], bool)
    for f in findings:
        if f.evidence["source_id"] == doc_id and f.evidence["match_type"] in types:
            mask[max(f.start, span[0]) - span[0] : max(0, min(f.end, span[1]) - span[0])] = True
    return bool(mask.mean() >= min_cover) if len(mask) else False


def hit(findings, span, doc_id, types, min_cover=0.5):
    """The first single finding naming the source that covers ``min_cover`` of the span."""
    for f in findings:
        if f.evidence["source_id"] != doc_id or f.evidence["match_type"] not in types:
            continue
        overlap = min(f.end, span[1]) - max(f.start, span[0])
        if overlap >= min_cover * (span[1] - span[0]):
            return f
    return None


def evaluate(
    det: CopyrightDetector,
    pos: list[Case],
    neg: list[Case],
    held: list[tuple[str, list[tuple[int, int, bool]]]],
    keep_examples: bool = False,
) -> dict:
    """Recall per positive family, flag rate per negative family (Wilson intervals)."""
    counts: dict[str, list[int]] = {}
    by_len: dict[str, dict[str, list[int]]] = {}
    examples: dict[str, list[str]] = {}
    types = {"verbatim", "near_verbatim"}
    for family, text, span, doc_id in pos:
        fs = scan(det, text)
        ok = covered(fs, span, doc_id, types)
        k = counts.setdefault(family, [0, 0])
        k[0] += ok
        k[1] += 1
        # the stricter reading: one finding alone covers half the copy
        k1 = counts.setdefault(f"{family}_one_finding", [0, 0])
        k1[0] += hit(fs, span, doc_id, types) is not None
        k1[1] += 1
        if family.startswith("near"):
            n_words = len(text[span[0] : span[1]].split())
            b = "15-24" if n_words < 25 else "25-39" if n_words < 40 else "40+"
            kb = by_len.setdefault(family, {}).setdefault(b, [0, 0])
            kb[0] += ok
            kb[1] += 1
    for family, text, _, _ in neg:
        fs = scan(det, text)
        k = counts.setdefault(family, [0, 0])
        k[0] += bool(fs)
        k[1] += 1
        if fs and keep_examples and len(examples.setdefault(family, [])) < 4:
            f = fs[0]
            examples[family].append(
                f"{f.evidence['match_type']} {f.score}: {text[f.start : f.end][:160]}"
            )
    clean = counts.setdefault("held_out_address_windows", [0, 0])
    repeats = counts.setdefault("held_out_windows_repeating_a_12_word_run", [0, 0])
    for text, wins in held:
        fs = scan(det, text)
        for s, e, truly in wins:
            flagged = any(f.start < e and f.end > s for f in fs)
            k = repeats if truly else clean
            k[0] += flagged
            k[1] += 1
            if flagged and not truly and keep_examples:
                ex = examples.setdefault("held_out_address_windows", [])
                if len(ex) < 4:
                    f = next(f for f in fs if f.start < e and f.end > s)
                    ex.append(
                        f"{f.evidence['match_type']} {f.score}: {text[f.start : f.end][:160]}"
                    )
    out = {k: wilson(*v) for k, v in counts.items()}
    for family, buckets in by_len.items():
        out[family]["by_copy_words"] = {b: wilson(*v) for b, v in sorted(buckets.items())}
    if keep_examples:
        out["flagged_examples"] = examples
    return out


NEG_FAMILIES = ("summary", "held_out_address_windows", "news")


def tune(c: Corpus, args) -> dict:
    """Grid over the near-verbatim thresholds on the dev split only.

    Among the points whose dev summaries and news stay within ``--fp-budget``
    and whose held-out address windows stay within ``--held-budget``, those
    within half a point of the best recall at ~25% edits are tied; of them the
    one with the fewest flagged summaries, then held-out windows, is chosen.
    """
    rng = random.Random(f"{args.seed}-dev")
    pos = [p for p in positives(c, "dev", rng, args.n) if p[0].startswith("near")]
    neg = negatives(c, "dev", rng, args.n_neg)
    held, _ = held_out(c, "dev")
    grid = []
    for ratio in [float(x) for x in args.grid_ratio.split(",")]:
        for long_words in [int(x) for x in args.grid_long_words.split(",")]:
            for long_ratio in [float(x) for x in args.grid_long_ratio.split(",")]:
                if long_ratio > ratio:
                    continue
                det = detector(
                    c.index,
                    near_ratio=ratio,
                    near_long_words=long_words,
                    near_long_ratio=long_ratio,
                )
                res = evaluate(det, pos, neg, held)
                grid.append(
                    {
                        "near_ratio": ratio,
                        "near_long_words": long_words,
                        "near_long_ratio": long_ratio,
                        "recall_near_25pct": res["near_25pct"]["rate"],
                        "recall_near_15pct": res["near_15pct"]["rate"],
                        **{f"flagged_{k}": res[k]["rate"] for k in NEG_FAMILIES},
                    }
                )
                print(json.dumps(grid[-1]), file=sys.stderr, flush=True)

    def ok(g: dict) -> bool:
        return (
            all((g[f"flagged_{k}"] or 0) <= args.fp_budget for k in ("summary", "news"))
            and (g["flagged_held_out_address_windows"] or 0) <= args.held_budget
        )

    feasible = [g for g in grid if ok(g)]
    best = None
    if feasible:
        # recall within half a point of the best is a tie at this sample size;
        # among ties the fewest flags on summaries, then on held-out text, wins
        top = max(g["recall_near_25pct"] for g in feasible)
        tied = [g for g in feasible if g["recall_near_25pct"] >= top - 0.5]
        best = min(
            tied,
            key=lambda g: (
                g["flagged_summary"] or 0,
                g["flagged_held_out_address_windows"] or 0,
                -g["recall_near_25pct"],
            ),
        )
    return {
        "split": "dev (MSRP train filler, dev edit model and templates, SOTU buckets 0-3 and 8)",
        "fp_budget_pct": args.fp_budget,
        "held_out_budget_pct": args.held_budget,
        "grid": grid,
        "chosen": best,
    }


def lexical(c: Corpus, args) -> dict:
    out: dict = {}
    for split in SPLITS:
        # each split has its own seeded generator, so the blind cases are the
        # same whatever the dev section did
        rng = random.Random(f"{args.seed}-{split}")
        pos = positives(c, split, rng, args.n)
        neg = negatives(c, split, rng, args.n_neg)
        held, _ = held_out(c, split)
        shares = np.asarray(
            [
                realised_edits(*pair)
                for pair in _edit_share_sample(
                    c, split, random.Random(f"{args.seed}-{split}-share")
                )
            ]
        )
        half = len(shares) // 2
        res = evaluate(detector(c.index), pos, neg, held, keep_examples=True)
        res["realised_edits_mean_pct"] = {
            family: {
                "source_words_lost": round(100 * float(part[:, 0].mean()), 1),
                "word_edit_distance": round(100 * float(part[:, 1].mean()), 1),
            }
            for family, part in (("near_15pct", shares[:half]), ("near_25pct", shares[half:]))
        }
        buckets = "0-3" if split == "dev" else "4-7"
        res["sources"] = {
            "copies_from": f"SOTU addresses indexed, hash buckets {buckets}",
            "filler_and_news": f"MSRP {'train' if split == 'dev' else 'test'} sentences",
            "summaries": f"{split} templates over passages of those addresses",
            "held_out": f"SOTU addresses not indexed, hash bucket {8 if split == 'dev' else 9}",
            "edit_model": split,
        }
        out[split] = res
    # time per scan over the blind positives and negatives, for orientation
    return out


def _edit_share_sample(c: Corpus, split: str, rng: random.Random):
    docs = c.by_role[split]
    pairs = []
    for rate in (0.15, 0.25):
        for _ in range(200):
            d = rng.choice(docs)
            toks = d["text"].split()
            length = rng.randint(15, 60)
            a = rng.randrange(0, len(toks) - length)
            src = toks[a : a + length]
            pairs.append((src, edit_copy(rng, src, rate, split)))
    return pairs


# -- semantic (MSRP), unchanged protocol: threshold on train, figures on test ----------


def _prf(labels: np.ndarray, flagged: np.ndarray) -> dict:
    tp = int((labels & flagged).sum())
    fp = int((~labels & flagged).sum())
    fn = int((labels & ~flagged).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4)}


def semantic(args) -> dict:
    """MSRP: index every first sentence, query with the second ones.

    Two readings: pair classification (is the query's cosine with its own
    first sentence over the threshold) and retrieval (does the best match
    among all 5,801 indexed sentences clear the threshold and point at its
    own first sentence; any match for a 0-pair is a false positive). The
    threshold grid is searched on the train split; test figures are reported.
    """
    from gateway.embedding import get_embedder

    train, test = load_msrp("train"), load_msrp("test")
    tmp = Path(tempfile.mkdtemp(prefix="cr-msrp-"))
    seen: dict[str, int] = {}
    with open(tmp / "msrp.jsonl", "w", encoding="utf-8") as fh:
        for _, id1, _, s1, _ in train + test:
            if id1 not in seen:
                seen[id1] = len(seen)
                fh.write(json.dumps({"id": id1, "text": s1}) + "\n")
    t0 = time.perf_counter()
    build_index(tmp / "msrp.jsonl", tmp / "idx", BuildParams(semantic=True))
    build_s = time.perf_counter() - t0
    index = CopyrightIndex(tmp / "idx")
    rows = {d["id"]: d["passage_start"] for d in index.docs}
    base = index.vectors.reconstruct_n(0, index.vectors.ntotal)
    out: dict = {
        "index": {
            "sentences": len(seen),
            "build_seconds": round(build_s, 1),
            "faiss": index.manifest.faiss["type"] if index.manifest.faiss else None,
        }
    }
    policy_defaults = CopyrightPolicy(id="d", kind="copyright")
    default = policy_defaults.semantic_threshold
    screen_thr = policy_defaults.semantic_screen
    static = {
        name: index.screen_search([p[4] for p in pairs])
        for name, pairs in (("train", train), ("test", test))
    }
    grid = [round(x, 2) for x in np.arange(0.5, 0.96, 0.01)]
    for variant in args.embedding.split(","):
        emb = get_embedder(index.model, variant)
        res = {}
        t = time.perf_counter()
        for name, pairs in (("train", train), ("test", test)):
            q = emb.encode([p[4] for p in pairs])
            labels = np.asarray([p[0] == 1 for p in pairs])
            own = np.asarray([rows[p[1]] for p in pairs])
            pair_cos = (q * base[own]).sum(axis=1)
            top_s, top_r = index.search(q, 1)
            res[name] = (labels, pair_cos, top_s[:, 0], top_r[:, 0] == own)
        per_q = 1000 * (time.perf_counter() - t) / (len(train) + len(test))

        def pair(name: str, thr: float, res=res, screen=None) -> dict:
            labels, cos, _, _ = res[name]
            flagged = cos >= thr
            if screen is not None:
                flagged &= static[name] >= screen
            return _prf(labels, flagged)

        def retrieval(name: str, thr: float, res=res, screen=None) -> dict:
            labels, _, top, right = res[name]
            flagged = top >= thr
            if screen is not None:
                flagged &= static[name] >= screen
            tp = labels & flagged & right
            fp = flagged & ~(labels & right)
            fn = labels & ~tp
            p = tp.sum() / (tp.sum() + fp.sum()) if (tp.sum() + fp.sum()) else 0.0
            r = tp.sum() / (tp.sum() + fn.sum()) if (tp.sum() + fn.sum()) else 0.0
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4)}

        tuned = max(grid, key=lambda thr: pair("train", thr)["f1"])
        tuned_r = max(grid, key=lambda thr: retrieval("train", thr)["f1"])
        labels, cos, _, _ = res["test"]
        out[variant] = {
            "pair_classification": {
                "train_best_threshold": tuned,
                "test_at_default": {"threshold": default, **pair("test", default)},
                "test_at_train_best": pair("test", tuned),
                "test_0_pairs_over_default": wilson(
                    int((~labels & (cos >= default)).sum()), int((~labels).sum())
                ),
            },
            "retrieval_top1_over_all_sentences": {
                "train_best_threshold": tuned_r,
                "test_at_default": {"threshold": default, **retrieval("test", default)},
                "test_at_train_best": retrieval("test", tuned_r),
            },
            "batched_ms_per_query_sentence": round(per_q, 2),
        }
        plain = retrieval("test", default)
        screened = retrieval("test", default, screen=screen_thr)
        out[variant]["with_screen"] = {
            "screen_threshold": screen_thr,
            "pair_test_at_default": pair("test", default, screen=screen_thr),
            "retrieval_test_at_default": screened,
            "recall_points_lost": round(100 * (plain["recall"] - screened["recall"]), 2),
            "test_queries_sent_to_model": wilson(
                int((static["test"] >= screen_thr).sum()), len(test)
            ),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer cases (about 2 minutes)")
    parser.add_argument("--n", type=int, help="cases per positive family and split (1000)")
    parser.add_argument("--n-neg", type=int, help="summaries and news responses per split (1000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tune", action="store_true", help="dev-split grid search only")
    parser.add_argument("--grid-ratio", default="0.8,0.85,0.9")
    parser.add_argument("--grid-long-words", default="14,16,20")
    parser.add_argument("--grid-long-ratio", default="0.7,0.75,0.8")
    # half the goal of 1%, so the blind figure has room for sampling error
    parser.add_argument("--fp-budget", type=float, default=0.5)
    # held-out addresses repeat formulas of the corpus; the budget is the flag
    # rate of the previous release on the dev split (4.4%), so the new
    # thresholds must not flag more of other presidents' original text
    parser.add_argument("--held-budget", type=float, default=4.5)
    parser.add_argument("--skip-semantic", action="store_true")
    parser.add_argument("--skip-lexical", action="store_true")
    parser.add_argument("--embedding", default="fp32,int8")
    parser.add_argument("--max-postings", type=int)
    parser.add_argument("--near-ratio", type=float)
    parser.add_argument("--near-min-words", type=int)
    parser.add_argument("--near-long-words", type=int)
    parser.add_argument("--near-long-ratio", type=float)
    args = parser.parse_args()
    if args.n is None:
        args.n = 300 if args.quick else 1000
    if args.n_neg is None:
        args.n_neg = 300 if args.quick else 1000
    for key in (
        "max_postings",
        "near_ratio",
        "near_min_words",
        "near_long_words",
        "near_long_ratio",
    ):
        if getattr(args, key) is not None:
            OVERRIDES[key] = getattr(args, key)
    defaults = CopyrightPolicy(id="d", kind="copyright")
    result: dict = {
        "defaults": {
            k: getattr(defaults, k, None)
            for k in (
                "min_words",
                "near_min_words",
                "near_ratio",
                "near_long_words",
                "near_long_ratio",
                "semantic_threshold",
                "semantic_screen",
                "max_postings",
            )
        },
        "overrides": OVERRIDES,
        "cases_per_family": args.n,
        "negatives_per_family": args.n_neg,
        "seed": args.seed,
    }
    if args.tune or not args.skip_lexical:
        t0 = time.perf_counter()
        c = Corpus()
        result["index"] = c.info()
        if args.tune:
            result["tune"] = tune(c, args)
            print(json.dumps(result, indent=2))
            return
        result["lexical"] = lexical(c, args)
        result["lexical_seconds"] = round(time.perf_counter() - t0, 1)
    if not args.skip_semantic:
        import torch

        torch.set_num_threads(1)
        result["semantic_msrp"] = semantic(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
