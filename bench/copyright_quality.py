"""Recall and false positives of the ``copyright`` detector at its default thresholds.

Protected corpus: State of the Union addresses (every fifth address is held
out as a source of negative text that is not copied). Queries:

- verbatim copies of 12-60-word spans embedded in unrelated text (MSRP news
  sentences), plus 8-11-word spans that must not be flagged;
- near-verbatim copies of 15-60-word spans with 10-20% of the words dropped,
  swapped or replaced;
- MSRP paraphrase pairs: the first sentences are indexed, the second ones are
  the queries (threshold chosen on the train split, F1 reported on test).

Negatives: 100-word windows of the held-out addresses, and MSRP sentences.
Prints one JSON object. Reads ../shared/data (run from the repository root).

    .venv/bin/python bench/copyright_quality.py [--skip-semantic] [--embedding fp32,int8]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.contract.detector import ScanContext  # noqa: E402
from gateway.detectors.copyright import CopyrightDetector, CopyrightPolicy  # noqa: E402
from gateway.index import BuildParams, CopyrightIndex, build_index  # noqa: E402
from gateway.index.text import ngram_hashes, words  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
REPLACEMENTS = (
    "really quite truly indeed clearly also perhaps maybe still often never always "
    "large small new old great public national general federal several"
).split()


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


def edit(rng: random.Random, span_words: list[str], rate: float) -> str:
    w = list(span_words)
    n_edits = max(1, round(rate * len(w)))
    for _ in range(n_edits):
        i = rng.randrange(0, len(w) - 1)
        op = rng.choice(("drop", "swap", "replace"))
        if op == "drop" and len(w) > 4:
            del w[i]
        elif op == "swap":
            w[i], w[i + 1] = w[i + 1], w[i]
        else:
            w[i] = rng.choice(REPLACEMENTS)
    return " ".join(w)


def bucket(n: int) -> str:
    for lo, hi in ((8, 11), (12, 15), (16, 20), (21, 30), (31, 45), (46, 60)):
        if lo <= n <= hi:
            return f"{lo}-{hi}"
    return str(n)


def pct(a: int, b: int) -> float | None:
    return round(100.0 * a / b, 3) if b else None


def lexical(args, rng: random.Random) -> dict:
    sotu = load_sotu()
    protected = [d for i, d in enumerate(sotu) if i % 5 != 0]
    held_out = [d for i, d in enumerate(sotu) if i % 5 == 0]
    msrp_sents = [r[3] for r in load_msrp("train")] + [r[4] for r in load_msrp("train")]
    tmp = Path(tempfile.mkdtemp(prefix="cr-bench-"))
    corpus = tmp / "sotu.jsonl"
    with open(corpus, "w", encoding="utf-8") as fh:
        for d in protected:
            fh.write(json.dumps({"id": d["id"], "text": d["text"], "owner": d["name"]}) + "\n")
    t0 = time.perf_counter()
    report = build_index(corpus, tmp / "idx", BuildParams(semantic=False))
    build_s = time.perf_counter() - t0
    index = CopyrightIndex(tmp / "idx")
    det = detector(index)  # defaults: verbatim + near_verbatim
    det_v = detector(index, match=["verbatim"])
    det_n = detector(index, match=["near_verbatim"])

    doc_words = [words(d["text"]) for d in protected]
    out: dict = {
        "index": {
            "documents": report.documents,
            "passages": report.passages,
            "anchors": index.counts()["anchors"],
            "build_seconds": round(build_s, 2),
        }
    }

    def make_query(length: int, near_rate: float | None):
        while True:
            di = rng.randrange(len(protected))
            w = doc_words[di]
            if len(w) > length + 2:
                break
        a = rng.randrange(0, len(w) - length)
        text = protected[di]["text"]
        span = text[w.starts[a] : w.ends[a + length - 1]]
        if near_rate is not None:
            span = edit(rng, span.split(), near_rate)
        before = filler(rng, msrp_sents, rng.randint(30, 150))
        after = filler(rng, msrp_sents, rng.randint(30, 150))
        response = before + " " + span + " " + after
        start = len(before) + 1
        return response, (start, start + len(span)), protected[di]["id"]

    def hit(findings, span, doc_id, types, min_cover=0.5):
        for f in findings:
            if f.evidence["source_id"] != doc_id or f.evidence["match_type"] not in types:
                continue
            overlap = min(f.end, span[1]) - max(f.start, span[0])
            if overlap >= min_cover * (span[1] - span[0]):
                return f
        return None

    # verbatim
    by_len: dict[str, list[int]] = {}
    exact = found = total = 0
    short_flagged = short_total = 0
    times: list[float] = []
    for i in range(args.verbatim):
        length = 12 + (i % 49)
        response, span, doc_id = make_query(length, None)
        t = time.perf_counter()
        fs = scan(det_v, response)
        times.append(time.perf_counter() - t)
        f = hit(fs, span, doc_id, {"verbatim"})
        b = by_len.setdefault(bucket(length), [0, 0])
        b[1] += 1
        total += 1
        if f is not None:
            found += 1
            b[0] += 1
            exact += (f.start, f.end) == span
    for i in range(args.verbatim // 4):
        length = 8 + (i % 4)
        response, span, doc_id = make_query(length, None)
        short_total += 1
        short_flagged += hit(scan(det_v, response), span, doc_id, {"verbatim"}) is not None
    out["verbatim"] = {
        "queries": total,
        "recall_pct": pct(found, total),
        "exact_span_pct": pct(exact, found),
        "recall_by_span_words": {k: pct(*v) for k, v in sorted(by_len.items(), key=_bkey)},
        "flagged_below_threshold_8_11_words_pct": pct(short_flagged, short_total),
        "scan_ms_p50": round(1000 * float(np.median(times)), 3),
    }

    # near-verbatim
    by_len = {}
    found_any = found_near = total = 0
    for i in range(args.near):
        length = 15 + (i % 46)
        rate = 0.10 + 0.10 * rng.random()
        response, span, doc_id = make_query(length, rate)
        b = by_len.setdefault(bucket(length), [0, 0])
        b[1] += 1
        total += 1
        if hit(scan(det, response), span, doc_id, {"verbatim", "near_verbatim"}):
            found_any += 1
            b[0] += 1
        if hit(scan(det_n, response), span, doc_id, {"near_verbatim"}):
            found_near += 1
    out["near_verbatim"] = {
        "queries": total,
        "edit_rate": "10-20% of words dropped, swapped or replaced",
        "recall_pct_default_policy": pct(found_any, total),
        "recall_pct_near_verbatim_only": pct(found_near, total),
        "recall_by_span_words": {k: pct(*v) for k, v in sorted(by_len.items(), key=_bkey)},
    }

    # negatives: 100-word windows of addresses that are not indexed. Addresses
    # repeat formulas ("Fellow-Citizens of the Senate and House of
    # Representatives"), so ground truth comes from an exhaustive set of every
    # 12-word run in the protected corpus: a window sharing one really holds
    # verbatim text and is not a negative.
    shared = np.unique(np.concatenate([ngram_hashes(w.hashes, 12) for w in doc_words]))
    windows = clean = flagged_v = flagged_n = shared_windows = shared_flagged = 0
    fp_examples: list[str] = []
    shared_examples: list[str] = []
    scan_times: list[float] = []
    for d in held_out:
        w = words(d["text"])
        grams = ngram_hashes(w.hashes, 12)
        is_shared = np.isin(grams, shared)
        t = time.perf_counter()
        fs = scan(det, d["text"])
        scan_times.append((time.perf_counter() - t) / max(1, len(d["text"]) / 2000))
        for a in range(0, len(w), 100):
            b = min(len(w), a + 100) - 1
            s, e = w.starts[a], w.ends[b]
            windows += 1
            truly = bool(is_shared[max(0, a - 11) : b + 1].any())
            in_win = [f for f in fs if f.start < e and f.end > s]
            verb = [f for f in in_win if f.evidence["match_type"] == "verbatim"]
            near = [f for f in in_win if f.evidence["match_type"] == "near_verbatim"]
            if truly:
                shared_windows += 1
                shared_flagged += bool(verb)
                if verb and len(shared_examples) < 3:
                    shared_examples.append(d["text"][verb[0].start : verb[0].end][:120])
                continue
            clean += 1
            flagged_v += bool(verb)
            flagged_n += bool(near)
            if (verb or near) and len(fp_examples) < 5:
                f = (verb or near)[0]
                fp_examples.append(d["text"][f.start : f.end][:160])
    msrp_fp = 0
    msrp_resp = 0
    for i in range(0, len(msrp_sents) - 8, 8):
        msrp_resp += 1
        msrp_fp += bool(scan(det, " ".join(msrp_sents[i : i + 8])))
    out["negatives"] = {
        "held_out_addresses": len(held_out),
        "windows_100_words": windows,
        "windows_sharing_a_12_word_run_with_the_corpus": shared_windows,
        "of_those_flagged_verbatim_pct": pct(shared_flagged, shared_windows),
        "shared_examples": shared_examples,
        "negative_windows": clean,
        "verbatim_fp_pct": pct(flagged_v, clean),
        "near_verbatim_flagged_pct": pct(flagged_n, clean),
        "flagged_examples": fp_examples,
        "in_domain_scan_ms_per_2000_chars_p50": round(1000 * float(np.median(scan_times)), 2),
        "msrp_news_responses_8_sentences": msrp_resp,
        "msrp_news_fp_pct": pct(msrp_fp, msrp_resp),
    }
    return out


def _bkey(item):
    return int(item[0].split("-")[0])


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

    Two readings: pair classification (the standard MSRP figure: is the
    query's cosine with its own first sentence over the threshold) and
    retrieval (does the best match among all 5,801 indexed sentences, found
    by FAISS, clear the threshold and point at its own first sentence; any
    match for a 0-pair is a false positive). Queries are embedded in batches
    here; the detector path is checked on a sample to give the same scores.
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
            "faiss": index.manifest["faiss"]["type"],
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

        def pair(name, thr, res=res, screen=None):
            labels, cos, _, _ = res[name]
            hit = cos >= thr
            if screen is not None:
                hit &= static[name] >= screen
            return _prf(labels, hit)

        def retrieval(name, thr, res=res, screen=None):
            labels, _, top, right = res[name]
            hit = top >= thr
            if screen is not None:
                hit &= static[name] >= screen
            tp = labels & hit & right
            fp = hit & ~(labels & right)
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
                "test_0_pairs_over_default_pct": pct(
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
        # the static screen in front of the model (the detector's default path)
        plain = retrieval("test", default)
        screened = retrieval("test", default, screen=screen_thr)
        out[variant]["with_screen"] = {
            "screen_threshold": screen_thr,
            "pair_test_at_default": pair("test", default, screen=screen_thr),
            "retrieval_test_at_default": screened,
            "recall_points_lost": round(100 * (plain["recall"] - screened["recall"]), 2),
            "test_queries_sent_to_model_pct": pct(
                int((static["test"] >= screen_thr).sum()), len(test)
            ),
        }
        # the detector gives the same scores (one window per sentence)
        det = detector(
            index,
            match=["semantic"],
            semantic_threshold=0.01,
            semantic_screen=None,
            embedding=variant,
        )
        agree = total = 0
        labels, cos, top, _ = res["test"]
        for i, p in enumerate(test[:200]):
            fs = scan(det, p[4])
            if fs:
                total += 1
                agree += abs(max(f.score for f in fs) - float(top[i])) < 0.02
        out[variant]["detector_path_agrees_with_batched_pct"] = pct(agree, total)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verbatim", type=int, default=1000)
    parser.add_argument("--near", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-semantic", action="store_true")
    parser.add_argument("--skip-lexical", action="store_true")
    parser.add_argument("--embedding", default="fp32,int8")
    parser.add_argument("--max-postings", type=int)
    parser.add_argument("--near-ratio", type=float)
    parser.add_argument("--near-min-words", type=int)
    args = parser.parse_args()
    for key in ("max_postings", "near_ratio", "near_min_words"):
        if getattr(args, key) is not None:
            OVERRIDES[key] = getattr(args, key)
    import torch

    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    defaults = CopyrightPolicy(id="d", kind="copyright")
    result: dict = {
        "defaults": {
            k: getattr(defaults, k)
            for k in (
                "min_words",
                "near_min_words",
                "near_ratio",
                "semantic_threshold",
                "semantic_screen",
                "max_postings",
            )
        },
        "overrides": OVERRIDES,
    }
    if not args.skip_lexical:
        result["lexical"] = lexical(args, rng)
    if not args.skip_semantic:
        result["semantic_msrp"] = semantic(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
