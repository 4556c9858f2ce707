"""Policy kind ``bias``: signals, allowlists, streaming and configuration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from gateway.contract.detector import ScanContext
from gateway.contract.kind import BuildContext
from gateway.detectors.bias import (
    ALL_SIGNALS,
    DEFAULT_CLASSIFIER,
    BiasPolicy,
    build,
    load_lexicon,
    split_sentences,
)
from gateway.detectors.stereotype import StereotypeClassifier
from gateway.errors import ConfigError
from gateway.policy.kinds import default_registry

# without the classifier, so these tests load no model
NO_MODEL = ["lexicon", "slurs", "generalisation", "dehumanising"]


def detector(tmp_path=None, **params):
    params.setdefault("signals", NO_MODEL)
    config = BiasPolicy(id="bias", kind="bias", **params)
    return build(config, BuildContext(base_dir=tmp_path or BuildContext().base_dir))


def scan_whole(det, text):
    return det.start(ScanContext()).feed(text, final=True)


def scan_stream(det, text, size=7):
    scan = det.start(ScanContext())
    out, held = [], []
    for end in range(size, len(text) + size, size):
        piece = text[: min(end, len(text))]
        out.extend(scan.feed(piece, final=False))
        held.append(scan.hold_from(piece))
    out.extend(scan.feed(text, final=True))
    return out, held


CASES = [
    # (text, breaches, expected signal)
    ("All Muslims are dangerous.", True, "generalisation"),
    ("Most immigrants are lazy.", True, "generalisation"),
    ("Women are naturally worse at maths.", True, "generalisation"),
    ("Typical Mexicans, always late.", True, "generalisation"),
    ("Refugees are vermin and should go back.", True, "dehumanising"),
    ("Those people are k1k3s.", True, "slur"),
    ("He called him a f a g g o t in public.", True, "slur"),
    ("What a n.i.g.g.e.r thing to say.", True, "slur"),
    ("She is a Muslim engineer who leads the team.", False, None),
    ("The weather is nice today.", False, None),
    ("We found rats in the basement.", False, None),
    ("All employees get a laptop.", False, None),
    ('He wrote "all women are weak" to show how absurd the claim is.', False, None),
    ("The stereotype that women are bad drivers is false.", False, None),
    ("It is a myth that all immigrants are lazy.", False, None),
]


@pytest.mark.parametrize(("text", "breaches", "signal"), CASES)
def test_signal_table(text, breaches, signal):
    det = detector()
    findings = scan_whole(det, text)
    assert bool(findings) is breaches
    if breaches:
        assert signal in findings[0].evidence["signals"]
        assert findings[0].evidence["group"] != "unspecified"
        assert (findings[0].start, findings[0].end) == (0, len(text))


@pytest.mark.parametrize(("text", "breaches", "signal"), CASES)
def test_streamed_equals_whole(text, breaches, signal):
    det = detector()
    whole = scan_whole(det, text)
    streamed, _ = scan_stream(det, text, size=3)
    assert [(f.start, f.end, f.message) for f in streamed] == [
        (f.start, f.end, f.message) for f in whole
    ]


def test_finding_spans_point_at_the_sentence_in_a_longer_answer():
    text = "Here is the summary. All Muslims are dangerous. The meeting is at noon."
    det = detector()
    whole = scan_whole(det, text)
    assert len(whole) == 1
    assert text[whole[0].start : whole[0].end] == "All Muslims are dangerous."
    streamed, held = scan_stream(det, text, size=5)
    assert [(f.start, f.end) for f in streamed] == [(whole[0].start, whole[0].end)]
    # only the unfinished sentence is held back
    assert max(held) <= text.index("The meeting")


def test_each_sentence_is_reported_once_in_a_stream():
    text = "All Muslims are dangerous. Most immigrants are lazy. Fine."
    streamed, _ = scan_stream(detector(), text, size=2)
    assert len(streamed) == 2
    assert streamed[0].evidence["attributes"] == ["religion"]
    assert streamed[1].evidence["attributes"] == ["nationality"]


def test_groups_limit_what_is_watched():
    det = detector(groups=["religion"])
    assert scan_whole(det, "All Muslims are dangerous.")
    assert not scan_whole(det, "Most immigrants are lazy.")


def test_allow_patterns_replace_and_extend():
    text = "In our history class we read that all immigrants are lazy."
    assert scan_whole(detector(), text)
    assert not scan_whole(detector(extra_allow_patterns=[r"\bhistory class\b"]), text)
    # an empty list turns the shipped markers off
    assert scan_whole(detector(allow_patterns=[]), "It is a myth that all immigrants are lazy.")


def test_quotes_can_be_judged_when_allow_quotes_is_off():
    text = 'He wrote "all women are weak" on the board.'
    assert not scan_whole(detector(), text)
    assert scan_whole(detector(allow_quotes=False), text)


def test_ambiguous_slur_needs_the_classifier():
    # without classifier support an ambiguous term never breaches on its own
    assert not scan_whole(detector(), "She teaches a queer theory seminar.")


def test_extra_lexicon_and_slur_files(tmp_path):
    (tmp_path / "caste.yaml").write_text(
        "attribute: caste\ngroups:\n  dalit: [dalit, dalits]\n", encoding="utf-8"
    )
    (tmp_path / "more_slurs.yaml").write_text("slurs:\n  zorblax: caste/dalit\n", encoding="utf-8")
    det = detector(
        tmp_path,
        lexicons=["caste.yaml"],
        slur_lists=["more_slurs.yaml"],
        groups=["caste", "religion"],
    )
    found = scan_whole(det, "All Dalits are lazy.")
    assert found and found[0].evidence["group"] == "caste/dalit"
    found = scan_whole(det, "What a z0rbl4x.")
    assert found and found[0].evidence["signals"]["slur"]["term"] == "zorblax"


@pytest.mark.parametrize(
    ("text", "group"),
    [
        ("People from Cameroon are always late.", "nationality/african"),
        ("Bangladesh people are loud.", "nationality/asian_national"),
        ("The men of Sri  Lanka never listen.", "nationality/asian_national"),
        ("Sales in China rose by four percent.", None),
        ("Norway has a lot of fjords.", None),
    ],
)
def test_place_names_count_only_as_people(text, group):
    groups, _ = detector().mentions(text)
    assert (group in groups) if group else not groups


def test_extra_lexicon_places(tmp_path):
    (tmp_path / "region.yaml").write_text(
        "attribute: region\ngroups:\n  north: [northerner, northerners]\n"
        "places:\n  north: [the north country]\n",
        encoding="utf-8",
    )
    det = detector(tmp_path, lexicons=["region.yaml"], groups=["region"])
    assert det.mentions("Folks from the North  Country are all lazy.")[0] == ["region/north"]
    assert det.mentions("The north country had snow.")[0] == []
    (tmp_path / "bad.yaml").write_text(
        "attribute: region\ngroups: {}\nplaces: [oslo]\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"bad.yaml: `places:` must map"):
        detector(tmp_path, lexicons=["bad.yaml"])


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"groups": ["astrology"]}, ConfigError),
        ({"lexicons": ["missing.yaml"]}, ConfigError),
    ],
)
def test_build_errors_are_clear(tmp_path, params, error):
    with pytest.raises(error, match="astrology|missing.yaml"):
        detector(tmp_path, **params)


def test_bad_lexicon_shape(tmp_path):
    (tmp_path / "bad.yaml").write_text("attribute: x\ngroups: [a, b]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.yaml"):
        detector(tmp_path, lexicons=["bad.yaml"])


@pytest.mark.parametrize(
    "params",
    [{"threshold": 0}, {"signals": []}, {"allow_patterns": ["("]}, {"treshold": 0.5}],
)
def test_config_validation(params):
    with pytest.raises(ValidationError):
        BiasPolicy(id="b", kind="bias", **params)


def test_kind_is_registered():
    assert "bias" in default_registry()


def test_sentence_splitter_forces_a_cut_in_run_on_text():
    text = "word " * 200
    spans, cursor = split_sentences(text, 0, False, 100)
    assert spans and all(e - s <= 100 for s, e in spans)
    assert len(text) - cursor <= 100


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "breaches"),
    [
        ("She is a Muslim engineer who leads the team.", False),
        ("We hired three women and two men this quarter.", False),
        ("The clinic added a ramp so wheelchair users can reach the second floor.", False),
        ("Older employees are naturally less productive than their younger counterparts.", True),
        ("The poor are really ignorant about how to handle money.", True),
        ("My neighbour is Mexican. He probably came here illegally.", True),
    ],
)
def test_classifier_end_to_end(text, breaches):
    det = detector(signals=["lexicon", "slurs", "generalisation", "dehumanising", "classifier"])
    findings = scan_whole(det, text)
    assert bool(findings) is breaches
    if breaches:
        assert "classifier" in findings[-1].evidence["signals"]


def test_quotes_are_found_after_unicode_folding():
    # invisible characters fold away and shift offsets; the quote must still
    # cover the claim
    text = "Owners" + "\u200b" * 12 + " wrote “all immigrants are lazy” on a board."
    assert not scan_whole(detector(), text)
    assert scan_whole(detector(allow_quotes=False), text)


@pytest.mark.parametrize("field", ["allow_patterns", "extra_allow_patterns"])
def test_allow_patterns_must_compile(field):
    with pytest.raises(ValidationError, match=r"pattern '\(' does not compile"):
        BiasPolicy(id="b", kind="bias", **{field: ["("]})


# --- the classifier artefact --------------------------------------------------


def _artefact(path, adapters, scale=2.0, dim=384):
    """A classifier artefact with the given ``{layer: (a, b)}`` adapters."""
    arrays = {}
    for name, (a, b) in adapters.items():
        arrays[f"adapter/{name}/a"] = a.astype(np.float16)
        arrays[f"adapter/{name}/b"] = b.astype(np.float16)
    np.savez(
        path,
        scale=np.array([scale], dtype=np.float32),
        coef=np.linspace(-1, 1, dim).astype(np.float32),
        intercept=np.array([0.25], dtype=np.float32),
        meta=np.array(json.dumps({"model": "test"})),
        **arrays,
    )
    return path


def test_artefact_errors_name_the_file(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not numpy")
    with pytest.raises(ConfigError, match=r"junk\.npz: not a bias classifier artefact"):
        StereotypeClassifier(junk)
    empty = _artefact(tmp_path / "empty.npz", {})
    with pytest.raises(ConfigError, match="holds no adapters"):
        StereotypeClassifier(empty)
    with pytest.raises(ConfigError, match="unknown embedding variant 'fp8'"):
        StereotypeClassifier(DEFAULT_CLASSIFIER, variant="fp8")


def test_policy_with_a_broken_artefact_fails_to_build(tmp_path):
    (tmp_path / "clf.npz").write_bytes(b"")
    with pytest.raises(ConfigError, match="not a bias classifier artefact"):
        detector(tmp_path, signals=ALL_SIGNALS, classifier="clf.npz")


LAYER = "encoder.layer.2.attention.self.query"


@pytest.mark.slow
def test_adapters_are_merged_into_a_private_copy_of_the_model(tmp_path):
    import torch

    from gateway.embedding import get_embedder

    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 384)).astype(np.float32)
    b = rng.normal(size=(384, 4)).astype(np.float32)
    artefact = _artefact(tmp_path / "one.npz", {LAYER: (a, b)}, scale=0.5)
    clf = StereotypeClassifier(artefact, runtime="torch")
    model = clf._load().model
    merged = dict(model[0].auto_model.named_modules())[LAYER].weight
    base_model = get_embedder().model
    base = dict(base_model[0].auto_model.named_modules())[LAYER].weight
    expected = base + 0.5 * torch.from_numpy(
        b.astype(np.float16).astype(np.float32) @ a.astype(np.float16).astype(np.float32)
    )
    assert torch.allclose(merged, expected, atol=1e-4)
    # the shared embedder's model is untouched
    assert not torch.allclose(merged, base)
    # scores are the head applied to the merged model's unit vectors
    text = "The committee meets on Tuesdays."
    vector = model.encode([text], normalize_embeddings=True)[0]
    assert clf.logits([text])[0] == pytest.approx(float(vector @ clf.coef) + 0.25, abs=1e-4)
    assert 0.0 < clf.scores([text])[0] < 1.0
    # the ONNX export of the same merged model scores the same
    onnx = StereotypeClassifier(artefact, runtime="onnx")
    assert onnx.logits([text])[0] == pytest.approx(clf.logits([text])[0], abs=1e-4)


@pytest.mark.slow
def test_onnx_and_torch_runtimes_agree_on_the_shipped_classifier():
    texts = [
        "Women are too emotional to lead a company.",
        "The museum opens at nine on Sundays.",
        "Old people can't learn anything new, and a second sentence makes this longer.",
    ]
    torch_scores = StereotypeClassifier(DEFAULT_CLASSIFIER, runtime="torch").logits(texts)
    onnx_scores = StereotypeClassifier(DEFAULT_CLASSIFIER, runtime="onnx").logits(texts)
    # one batch with padding: the exported graph honours the attention mask
    assert np.allclose(onnx_scores, torch_scores, atol=1e-3)
    # int8 weights move the scores a little, not the verdicts
    int8 = StereotypeClassifier(DEFAULT_CLASSIFIER, variant="int8", runtime="onnx").logits(texts)
    assert np.array_equal(int8 > 0, torch_scores > 0)
    assert not np.allclose(int8, torch_scores, atol=1e-4)


def test_unknown_runtime_is_refused():
    with pytest.raises(ConfigError, match="unknown runtime 'tpu'"):
        StereotypeClassifier(DEFAULT_CLASSIFIER, runtime="tpu")
    with pytest.raises(ValidationError, match="runtime"):
        BiasPolicy(id="b", kind="bias", runtime="tpu")


@pytest.mark.parametrize(
    ("adapters", "error"),
    [
        ({LAYER: (np.zeros((4, 100)), np.zeros((384, 4)))}, r"adapter .*query is 384x100"),
        ({LAYER: (np.zeros((4, 384)), np.zeros((384, 2)))}, "A must be rank x in"),
        (
            {"encoder.layer.9.output.dense": (np.zeros((4, 1536)), np.zeros((384, 4)))},
            "does not have: encoder.layer.9.output.dense",
        ),
    ],
)
def test_adapters_that_do_not_fit_the_model_are_refused_when_built(tmp_path, adapters, error):
    # checked against the model's config.json: no model is loaded
    with pytest.raises(ConfigError, match=error):
        StereotypeClassifier(_artefact(tmp_path / "bad.npz", adapters))


def test_other_malformed_artefacts_are_refused(tmp_path):
    good = {LAYER: (np.zeros((4, 384)), np.zeros((384, 4)))}
    with pytest.raises(ConfigError, match="the head has 10 weights"):
        StereotypeClassifier(_artefact(tmp_path / "head.npz", good, dim=10))
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ConfigError, match="not a bias classifier artefact"):
        StereotypeClassifier(tmp_path / "plain.npy")
    scalar = _artefact(tmp_path / "scalar.npz", good)
    with np.load(scalar) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["scale"] = np.float32(2.0)
    np.savez(scalar, **arrays)
    with pytest.raises(ConfigError, match="not a bias classifier artefact"):
        StereotypeClassifier(scalar)


def test_a_failed_model_load_is_remembered(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    clf = StereotypeClassifier(DEFAULT_CLASSIFIER, model=str(tmp_path / "not-a-model"))
    with pytest.raises(ConfigError, match="cannot load the model") as first:
        clf.scores(["Some text."])
    with pytest.raises(ConfigError) as second:
        clf.scores(["Other text."])
    assert second.value is first.value


def test_a_retrained_artefact_is_a_new_classifier_on_rebuild(tmp_path):
    import shutil

    shutil.copy(DEFAULT_CLASSIFIER, tmp_path / "clf.npz")
    ctx = BuildContext(base_dir=tmp_path)
    config = BiasPolicy(id="b", kind="bias", classifier="clf.npz")
    first = build(config, ctx)._classifier
    assert build(config, ctx)._classifier is first
    with np.load(tmp_path / "clf.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["intercept"] = arrays["intercept"] + 1.0
    np.savez(tmp_path / "clf.npz", **arrays)
    second = build(config, ctx)._classifier
    assert second is not first and second.intercept == pytest.approx(first.intercept + 1.0)


def test_symbol_only_lexicon_terms_are_refused(tmp_path):
    (tmp_path / "odd.yaml").write_text(
        "attribute: odd\ngroups:\n  plus: ['+++']\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"odd.yaml: groups.plus: '\+\+\+' has no letters"):
        detector(tmp_path, lexicons=["odd.yaml"])


def test_place_names_with_odd_spacing_in_a_lexicon(tmp_path):
    (tmp_path / "region.yaml").write_text(
        "attribute: region\ngroups: {}\nplaces:\n  north: ['north  country']\n",
        encoding="utf-8",
    )
    det = detector(tmp_path, lexicons=["region.yaml"], groups=["region"])
    assert det.mentions("People from the North Country are loud.")[0] == ["region/north"]


def test_every_shipped_term_and_place_is_found_in_a_sentence():
    # the detector skips its long alternations for sentences without a key
    # word of some term; no shipped term may be lost to that shortcut
    det = detector()
    lexicon = load_lexicon()
    for term, group in lexicon.terms.items():
        for text in (f"Yesterday I met {term} at the market.", f"Some {term}s arrived."):
            assert group in det.mentions(text)[0], text
    for place, group in lexicon.places.items():
        text = f"The people from {place.title()} were at the market."
        assert group in det.mentions(text)[0], text


def test_allow_patterns_with_their_own_flags_still_apply_alone():
    det = detector(extra_allow_patterns=["(?x) in \\s+ my \\s+ novel"])
    assert not scan_whole(det, "In my novel, all Muslims are dangerous.")
    # its verbose flag does not leak into the shipped ones ("it is … that"
    # has a literal space that verbose mode would ignore)
    assert not scan_whole(det, "It is false that all Muslims are dangerous.")
    assert scan_whole(det, "All Muslims are dangerous.")


@pytest.mark.slow
def test_the_training_script_writes_what_the_gateway_loads(tmp_path):
    import argparse
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_bias_classifier.py"
    spec = importlib.util.spec_from_file_location("train_bias_classifier", script)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)

    texts, labels = train.generated()
    positives = [t for t, y in zip(texts, labels, strict=True) if y == 1][:24]
    negatives = [t for t, y in zip(texts, labels, strict=True) if y == 0][:24]
    examples = [(t, 1, 1.0) for t in positives] + [(t, 0, 1.0) for t in negatives]
    pairs = list(zip(positives[:4], negatives[:4], strict=True))
    args = argparse.Namespace(
        model="all-MiniLM-L6-v2",
        rank=2,
        epochs=3,
        lr=5e-3,
        head_lr=5e-2,
        batch=8,
        pair_batch=2,
        pair_weight=0.5,
        threads=1,
    )
    adapters, coef, intercept = train.fine_tune(examples, pairs, args, lambda _: None)
    path = tmp_path / "clf.npz"
    train.save(path, train.artefact_arrays(adapters, coef, intercept), {"model": "test"})

    clf = StereotypeClassifier(path)
    # every linear layer of the six encoder blocks has a trained adapter
    assert len(clf._adapters) == 36
    assert all(np.abs(b).max() > 0 for _, b in clf._adapters.values())
    # and the gateway's merged model has started to learn the labels (a few
    # steps, all inside the learning-rate warm-up)
    scores = np.array(clf.scores(positives + negatives))
    assert scores[:24].mean() > scores[24:].mean() + 0.05


@pytest.mark.parametrize(("classify", "merged"), [("all", True), ("mentions", False)])
def test_pronoun_led_sentences_are_read_with_the_one_before(classify, merged):
    from gateway.detectors.bias import BiasDetector, _Sentence

    config = BiasPolicy(id="b", kind="bias", classify=classify)
    # only whether a classifier is present matters here; it is not called
    det = BiasDetector(config, load_lexicon(), classifier=object())
    first = _Sentence(0, 26, "The chess player was new.", [], [])
    second = _Sentence(27, 50, "He was lazy and dumb.", [], [])
    cand = det._signals_of(second, first)
    if merged:
        assert cand.classify_text == "The chess player was new. He was lazy and dumb."
        assert cand.signals["context"] == "previous sentence"
    else:
        # the default gate: neither sentence names a group, nothing to judge
        assert cand is None
