"""Train the stereotype classifier shipped as gateway/detectors/data/bias_classifier.npz.

A logistic model on frozen all-MiniLM-L6-v2 sentence embeddings. Frozen
embeddings keep the artefact tiny (one 384-float weight vector) and let the
detector reuse the embedding service every semantic policy already loads.

Training data, all read offline from ../shared/data/bias:

* HateCheck (CC BY 4.0), every case: hateful cases are positives; its
  non-hateful cases (neutral and positive mentions of groups, counter-speech,
  quotes, abuse aimed at objects) are the negatives that keep plain mentions
  of a group from scoring.
* StereoSet (CC BY-SA 4.0), only the targets whose hash puts them in the
  training half: stereotype sentences against unrelated sentences, plus a
  pairwise term that ranks each stereotype above its anti-stereotype.
* CrowS-Pairs (CC BY-SA 4.0), only rows whose hash puts them in the training
  half: a pairwise term that ranks the more-stereotyping sentence higher.
* Sentences generated here from templates: implicit stereotypes (so recall
  does not hinge on explicit slurs or "all X are Y") and neutral mentions of
  every protected group (so precision does not hinge on a dataset's style).

bench/bias_quality.py evaluates on the other halves only, with its own
neutral templates, so no evaluation sentence is ever seen in training.

Usage: python scripts/train_bias_classifier.py [--data ../shared/data/bias]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED = 20261127
OUT = ROOT / "gateway" / "detectors" / "data" / "bias_classifier.npz"


def split_of(key: str) -> str:
    """Deterministic half split; bench/bias_quality.py uses the same rule."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return "train" if digest[0] % 2 == 0 else "eval"


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
        for t in rng.sample(STEREOTYPE_TEMPLATES, 14):
            texts.append(_cap(t.format(g=g)))
            labels.append(1)
        for t in rng.sample(NEUTRAL_TEMPLATES, 16):
            texts.append(_cap(t.format(g=g)))
            labels.append(0)
    for s in INDIVIDUAL_NEUTRAL:
        texts.append(s)
        labels.append(0)
    return texts, labels


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def load_hatecheck(data: Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with open(data / "hatecheck_cases.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            texts.append(row["test_case"].strip())
            labels.append(1 if row["label_gold"] == "hateful" else 0)
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


def train(x, y, w, pairs_a, pairs_b, *, l2: float, pair_weight: float, epochs: int):
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    xt = torch.tensor(x)
    yt = torch.tensor(y, dtype=torch.float32)
    wt = torch.tensor(w, dtype=torch.float32)
    pa = torch.tensor(pairs_a)
    pb = torch.tensor(pairs_b)
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=epochs, line_search_fn="strong_wolfe")
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def closure():
        opt.zero_grad()
        logits = xt @ weight + bias
        loss = (bce(logits, yt, reduction="none") * wt).sum() / wt.sum()
        if len(pa):
            margin = (pa - pb) @ weight
            loss = loss + pair_weight * torch.nn.functional.softplus(-margin).mean()
        loss = loss + l2 * (weight * weight).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach().numpy().astype(np.float32), float(bias.detach().numpy()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "bias")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--l2", type=float, default=1e-5)
    parser.add_argument("--pair-weight", type=float, default=0.5)
    # StereoSet's sentences are longer and subtler than HateCheck's short
    # templates; without extra weight the model learns mostly "hateful"
    parser.add_argument("--stereoset-weight", type=float, default=3.0)
    # the generated sentences are few but are the only ones that state
    # stereotypes the way an assistant would; weighting them up buys recall on
    # implicit statements and precision on plain mentions
    parser.add_argument("--generated-weight", type=float, default=10.0)
    # train for the embedding variant the policy will use (its `variant:`)
    parser.add_argument("--variant", default="fp32")
    parser.add_argument(
        "--cache", type=Path, default=None, help="reuse embeddings across runs (an .npz path)"
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from gateway.embedding import get_embedder

    embedder = CachedEncoder(get_embedder("all-MiniLM-L6-v2", args.variant), args.cache)

    texts: list[str] = []
    labels: list[int] = []
    weights: list[float] = []
    sources: dict[str, int] = {}

    def add(ts, ls, weight, name):
        texts.extend(ts)
        labels.extend(ls)
        weights.extend([weight] * len(ts))
        sources[name] = sources.get(name, 0) + len(ts)

    add(*load_hatecheck(args.data), 1.0, "hatecheck")
    add(*generated(), args.generated_weight, "generated_templates")
    stereo = load_stereoset(args.data)
    sw = args.stereoset_weight
    add(
        [stereoset_text(it, "stereotype") for it in stereo],
        [1] * len(stereo),
        sw,
        "stereoset_train_half_stereotype",
    )
    add(
        [stereoset_text(it, "unrelated") for it in stereo],
        [0] * len(stereo),
        sw,
        "stereoset_train_half_unrelated",
    )
    crows = crows_pairs(args.data, "train")

    pair_more = [stereoset_text(it, "stereotype") for it in stereo] + [m for m, _, _ in crows]
    pair_less = [stereoset_text(it, "anti-stereotype") for it in stereo] + [
        ls for _, ls, _ in crows
    ]
    sources["stereoset_train_half_pairs"] = len(stereo)
    sources["crows_pairs_train_half_pairs"] = len(crows)

    x = embedder.encode(texts)
    pa = embedder.encode(pair_more)
    pb = embedder.encode(pair_less)
    y = np.array(labels, dtype=np.float32)
    w = np.array(weights, dtype=np.float32)
    coef, intercept = train(x, y, w, pa, pb, l2=args.l2, pair_weight=args.pair_weight, epochs=500)

    # quick held-out check on the evaluation halves (the benchmark is the
    # authority; these numbers are recorded so the artefact says how it did)
    metrics = evaluate(embedder, coef, intercept, args.data)
    meta = {
        "model": "logistic regression on all-MiniLM-L6-v2 sentence embeddings",
        "embedding_model": "all-MiniLM-L6-v2",
        "embedding_variant": args.variant,
        "seed": SEED,
        "trained_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "l2": args.l2,
        "pair_weight": args.pair_weight,
        "stereoset_weight": args.stereoset_weight,
        "generated_weight": args.generated_weight,
        "training_examples": sources,
        "licences": {
            "hatecheck": "CC BY 4.0",
            "stereoset": "CC BY-SA 4.0 (training half by target)",
            "crows_pairs": "CC BY-SA 4.0 (training half by sentence hash)",
            "generated_templates": "project's own",
        },
        "split_rule": "sha256(key)[0] % 2 == 0 is training; keys 'stereoset:<target>' "
        "and 'crows:<masked sentence>'",
        "eval_metrics": metrics,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        coef=coef,
        intercept=np.array([intercept], dtype=np.float32),
        meta=np.array(json.dumps(meta)),
    )
    embedder.save()
    print(json.dumps(meta, indent=2))
    return 0


class CachedEncoder:
    """Embeddings kept on disk between runs while tuning; optional."""

    def __init__(self, embedder, path: Path | None):
        self._embedder = embedder
        self._path = path
        self._vectors: dict[str, np.ndarray] = {}
        if path is not None and path.exists():
            with np.load(path) as data:
                self._vectors = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self._vectors})
        if missing:
            for t, v in zip(missing, self._embedder.encode(missing), strict=True):
                self._vectors[t] = v
        return np.vstack([self._vectors[t] for t in texts])

    def save(self) -> None:
        if self._path is None:
            return
        keys = list(self._vectors)
        vectors = np.vstack([self._vectors[k] for k in keys])
        np.savez(self._path, keys=np.array(keys), vectors=vectors)


def evaluate(embedder, coef, intercept, data: Path) -> dict:
    from sklearn.metrics import roc_auc_score

    items = [json.loads(line) for line in open(data / "stereoset.jsonl", encoding="utf-8")]
    held = [it for it in items if split_of("stereoset:" + it["target"].lower()) == "eval"]
    pos = embedder.encode([stereoset_text(it, "stereotype") for it in held]) @ coef + intercept
    neg = embedder.encode([stereoset_text(it, "unrelated") for it in held]) @ coef + intercept
    auc = roc_auc_score([1] * len(pos) + [0] * len(neg), np.concatenate([pos, neg]))
    crows = crows_pairs(data, "eval")
    more = embedder.encode([m for m, _, _ in crows]) @ coef
    less = embedder.encode([ls for _, ls, _ in crows]) @ coef
    return {
        "stereoset_eval_half_auc": round(float(auc), 4),
        "stereoset_eval_items": len(held),
        "crows_eval_half_pairwise_accuracy": round(float(np.mean(more > less)), 4),
        "crows_eval_pairs": len(crows),
    }


if __name__ == "__main__":
    sys.exit(main())
