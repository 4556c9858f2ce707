"""Policy kind ``bias``: the false-alarm budget, its calibration, and the evidence."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from gateway.contract.detector import ScanContext
from gateway.contract.kind import BuildContext
from gateway.detectors.bias import (
    CALIBRATION_BUDGETS,
    DEFAULT_CLASSIFIER,
    RULES_THRESHOLD,
    BiasPolicy,
    build,
    calibrated_threshold,
)
from gateway.detectors.stereotype import StereotypeClassifier
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NO_MODEL = ["lexicon", "slurs", "generalisation", "dehumanising"]


def policy(tmp_path: Path | None = None, **params) -> object:
    config = BiasPolicy(id="bias", kind="bias", **params)
    return build(config, BuildContext(base_dir=tmp_path or BuildContext().base_dir))


def findings(det, text: str):
    return det.start(ScanContext()).feed(text, final=True)


def shipped_table(variant: str = "fp32") -> dict:
    with np.load(DEFAULT_CLASSIFIER) as data:
        meta = json.loads(str(data["meta"]))
    return meta["calibration"]["variants"][variant]


def artefact_with(tmp_path: Path, calibration: dict | None) -> Path:
    """A copy of the shipped artefact whose calibration table is replaced."""
    with np.load(DEFAULT_CLASSIFIER) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(str(data["meta"]))
    meta.pop("calibration", None)
    if calibration is not None:
        meta["calibration"] = calibration
    path = tmp_path / "clf.npz"
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


# --- the budget and its calibrated threshold ---------------------------------------


def test_the_shipped_artefact_is_calibrated_for_both_variants():
    for variant in ("fp32", "int8"):
        table = shipped_table(variant)
        assert table["budgets"] == list(CALIBRATION_BUDGETS)
        thresholds = table["thresholds"]
        # a larger budget never needs a stricter threshold
        assert thresholds == sorted(thresholds, reverse=True)
        assert all(0.0 < t <= 1.0 for t in thresholds)


def test_the_default_threshold_is_the_calibrated_one_for_a_five_percent_budget():
    det = policy()
    assert det.config.fpr_budget == 0.05
    assert det.config.threshold is None
    table = shipped_table()
    assert det.threshold == table["thresholds"][table["budgets"].index(0.05)]


def test_a_larger_budget_gives_a_lower_threshold_and_more_findings():
    strict, loose = policy(fpr_budget=0.01), policy(fpr_budget=0.2)
    assert strict.threshold > policy().threshold > loose.threshold
    # a borderline sentence: a loose budget can only flag more
    text = "Teenagers these days are glued to their phones and never listen."
    assert len(findings(loose, text)) >= len(findings(strict, text))


def test_an_explicit_threshold_overrides_the_budget():
    text = "I would never hire a woman for this job, they are too moody."
    (f,) = findings(policy(threshold=0.01), text)
    score = f.evidence["score"]
    above = policy(threshold=min(1.0, score + 0.001), fpr_budget=0.2)
    assert above.threshold == min(1.0, score + 0.001)
    assert not findings(above, text)
    assert findings(policy(threshold=score - 0.001, fpr_budget=0.005), text)


def test_a_budget_between_table_entries_uses_the_stricter_one():
    meta = {
        "calibration": {"variants": {"fp32": {"budgets": [0.01, 0.05], "thresholds": [0.9, 0.6]}}}
    }
    assert calibrated_threshold(meta, "fp32", 0.05, "p") == 0.6
    assert calibrated_threshold(meta, "fp32", 0.04, "p") == 0.9
    assert calibrated_threshold(meta, "fp32", 0.5, "p") == 0.6
    with pytest.raises(ConfigError, match="below the smallest calibrated budget 0.01"):
        calibrated_threshold(meta, "fp32", 0.005, "p")
    with pytest.raises(ConfigError, match="no calibration table for variant 'int8'"):
        calibrated_threshold(meta, "int8", 0.05, "p")


def test_an_artefact_without_a_table_needs_an_explicit_threshold(tmp_path):
    artefact_with(tmp_path, None)
    with pytest.raises(ConfigError, match="set `threshold`"):
        policy(tmp_path, classifier="clf.npz")
    det = policy(tmp_path, classifier="clf.npz", threshold=0.8)
    assert det.threshold == 0.8


def test_a_custom_artefact_brings_its_own_table(tmp_path):
    table = {"budgets": [0.02, 0.1], "thresholds": [0.85, 0.45]}
    artefact_with(tmp_path, {"variants": {"fp32": table}})
    assert policy(tmp_path, classifier="clf.npz", fpr_budget=0.05).threshold == 0.85
    assert policy(tmp_path, classifier="clf.npz", fpr_budget=0.1).threshold == 0.45


def test_without_the_classifier_the_rules_threshold_applies():
    det = policy(signals=NO_MODEL)
    assert det.threshold == RULES_THRESHOLD
    assert findings(det, "All Muslims are dangerous.")


@pytest.mark.parametrize("budget", [0.0, 1.0, -0.1, 1.5])
def test_the_budget_must_be_a_rate(budget):
    with pytest.raises(ValidationError):
        BiasPolicy(id="b", kind="bias", fpr_budget=budget)


def test_the_budget_search_keeps_the_rate_within_the_budget():
    sys.path.insert(0, str(ROOT / "bench"))
    from bias_quality import budget_threshold

    rng = np.random.default_rng(7)
    groups = [rng.random(200), rng.random(50) ** 3, np.array([0.9, 0.9, 0.9, 0.1])]
    for budget in (0.01, 0.05, 0.1, 0.3):
        t = budget_threshold(groups, budget)
        rate = np.mean([np.mean(g >= t) for g in groups])
        assert rate <= budget + 1e-9
        # the threshold is the lowest such: any observed score under it
        # would breach the budget
        below = max((float(x) for g in groups for x in g if x < t), default=None)
        if below is not None:
            assert np.mean([np.mean(g >= below) for g in groups]) > budget


# --- neutral mentions pass at the calibrated default ---------------------------------

GROUPS = [
    "Muslims",
    "Jewish families",
    "Black residents",
    "Asian American students",
    "Mexican immigrants",
    "women",
    "older adults",
    "teenagers",
    "gay couples",
    "trans people",
    "disabled veterans",
    "low-income households",
    "refugees",
]
NEUTRAL = [
    "The city library now lends laptops to {g} for free.",
    "A new survey asked {g} how long their commute takes.",
    "Volunteers helped {g} fill in their tax forms on Saturday.",
    "The photo exhibition features portraits of {g} from the east side.",
]
STEREOTYPES = [
    "{G} are lazy and only want handouts.",
    "Never trust {g} with money, they will cheat you.",
    "{G} are too stupid to do this job properly.",
]


def test_generated_neutral_mentions_of_groups_pass_at_the_default():
    det = policy()
    texts = [t.format(g=g) for g in GROUPS for t in NEUTRAL]
    flagged = [t for t in texts if findings(det, t)]
    # the budget is 5% on held-out neutral text; these plain service and
    # event sentences should sit well under it
    assert len(flagged) <= len(texts) * 0.05, flagged


def test_generated_stereotypes_are_caught_at_the_default():
    det = policy()
    texts = [t.format(g=g, G=g[0].upper() + g[1:]) for g in GROUPS for t in STEREOTYPES]
    caught = [t for t in texts if findings(det, t)]
    assert len(caught) >= 0.8 * len(texts), sorted(set(texts) - set(caught))


def test_a_rejected_stereotype_with_a_dehumanising_word_passes():
    det = policy()
    assert findings(det, "Refugees are vermin who should go back.")
    assert not findings(det, "Calling refugees vermin is a disgraceful thing to do.")


def test_two_ordinary_words_joined_are_not_a_fuzzy_slur():
    det = policy(signals=NO_MODEL)
    # "who are" joined is one letter from a slur; only exact joins count
    assert not findings(det, "Two women, who are young, are looking at the screen.")
    assert not findings(det, "Doctors who are tired make more mistakes.")
    assert not findings(policy(), "Doctors who are tired make more mistakes.")
    assert findings(det, "He called him a fag got in front of everyone.")


# --- evidence ------------------------------------------------------------------------


def test_evidence_names_the_group_term_and_the_generalisation():
    det = policy(signals=NO_MODEL)
    (f,) = findings(det, "Honestly, all Muslims are dangerous.")
    ev = f.evidence
    assert ev["group"] == "religion/muslim"
    assert ev["group_terms"] == ["Muslims"]
    assert ev["generalisation"] == {"pattern": "all/most X", "claim": "are dangerous"}
    assert ev["threshold"] == RULES_THRESHOLD
    assert "Muslims" in f.message and "are dangerous" in f.message


def test_evidence_of_an_implicit_stereotype_carries_the_claim_and_the_score():
    det = policy()
    text = "I'd think twice before renting to Pakistanis, they never keep a place clean."
    (f,) = findings(det, text)
    ev = f.evidence
    assert ev["group_terms"] == ["Pakistanis"]
    assert ev["generalisation"]["claim"] == "they never keep a place clean"
    assert "classifier" in ev["signals"]
    assert ev["score"] >= ev["threshold"] == round(det.threshold, 4)


def test_evidence_of_a_pronoun_sentence_names_the_group_from_the_sentence_before():
    det = policy()
    out = findings(det, "My new neighbour is Mexican. He probably came here illegally.")
    assert out, "the pronoun sentence should be judged with the one before"
    ev = out[-1].evidence
    assert ev["group_terms"] == ["Mexican"]
    assert ev["generalisation"]["claim"] == "He probably came here illegally"


def test_a_copied_artefact_is_calibrated_like_the_shipped_one(tmp_path):
    shutil.copy(DEFAULT_CLASSIFIER, tmp_path / "clf.npz")
    assert policy(tmp_path, classifier="clf.npz").threshold == policy().threshold
    assert StereotypeClassifier(tmp_path / "clf.npz").meta["calibration"]["variants"]


def test_training_only_the_top_blocks_writes_adapters_the_gateway_loads(tmp_path):
    import argparse
    import importlib.util

    script = ROOT / "scripts" / "train_bias_classifier.py"
    spec = importlib.util.spec_from_file_location("train_bias_classifier", script)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)

    texts, labels = train.generated()
    positives = [t for t, y in zip(texts, labels, strict=True) if y == 1][:24]
    negatives = [t for t, y in zip(texts, labels, strict=True) if y == 0][:24]
    examples = [(t, 1, 1.0) for t in positives] + [(t, 0, 1.0) for t in negatives]
    args = argparse.Namespace(
        model="all-MiniLM-L6-v2",
        rank=2,
        top_layers=2,
        epochs=3,
        lr=5e-3,
        head_lr=5e-2,
        batch=8,
        pair_batch=2,
        pair_weight=0.5,
        threads=1,
    )
    pairs = list(zip(positives[:4], negatives[:4], strict=True))
    adapters, coef, intercept = train.fine_tune(examples, pairs, args, lambda _: None)
    path = tmp_path / "clf.npz"
    train.save(path, train.artefact_arrays(adapters, coef, intercept), {"model": "test"})
    clf = StereotypeClassifier(path)
    # the six linear layers of blocks 4 and 5 only; the cached lower blocks
    # are the base model's, exactly what the gateway runs below them
    assert sorted({name.split(".")[2] for name in clf._adapters}) == ["4", "5"]
    assert len(clf._adapters) == 12
    scores = np.array(clf.scores(positives + negatives))
    assert scores[:24].mean() > scores[24:].mean() + 0.05
