"""Quality and latency of the ``stale_retrieval`` and ``retrieval_quality`` kinds; prints JSON.

1. Staleness: a generated RAG workload whose stale, superseded, withdrawn,
   expired and undated citations are known in advance; the detector's
   counts must equal them exactly.
2. Relevance on real text: a query taken from one State of the Union
   passage (public domain) against the rest of that passage (relevant) and
   a passage from another address (irrelevant).
3. Groundedness on real text: MSRP test pairs (paraphrases must count as
   supported, non-paraphrases mostly not) and SOTU sentences against their
   own passage and a foreign one.
4. Latency of the shipped bias, stale_retrieval and retrieval_quality
   policies on 2,000-character answers, each request a new text so no
   cache hides the embedding cost. ``build_policies()`` and
   ``sample_exchange()`` are importable for bench/overhead.py.

Run: python bench/retrieval_quality.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.contract.detector import ScanContext  # noqa: E402
from gateway.contract.kind import BuildContext, Resources  # noqa: E402
from gateway.detectors.retrieval_quality import RetrievalQualityPolicy  # noqa: E402
from gateway.detectors.retrieval_quality import build as build_quality  # noqa: E402
from gateway.detectors.stale_retrieval import StaleRetrievalPolicy  # noqa: E402
from gateway.detectors.stale_retrieval import build as build_stale  # noqa: E402

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp()
DAY = 86400.0


# --- 1. staleness workload ------------------------------------------------------------


def staleness(seed: int = 1, responses: int = 2000) -> dict:
    rng = random.Random(seed)
    docs = [f"doc-{i:03d}" for i in range(200)]
    registry = {"documents": []}
    kinds = {}
    for i, doc in enumerate(docs):
        kind = ["active"] * 7 + ["withdrawn", "expired", "active_v"]
        kinds[doc] = kind[i % len(kind)]
        entry = {"id": doc, "current_version": str(3 + i % 4)}
        if kinds[doc] == "withdrawn":
            entry["status"] = "withdrawn"
        if kinds[doc] == "expired":
            entry["expires_at"] = "2025-12-31"
        registry["documents"].append(entry)
    expected = {
        "max_age": 0,
        "superseded": 0,
        "withdrawn": 0,
        "expired": 0,
        "undated": 0,
        "unknown_document": 0,
    }
    workload = []
    for _ in range(responses):
        sources = []
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.05:
                sources.append(
                    {"id": f"stray-{rng.randint(0, 10**6)}", "updated_at": NOW - 10 * DAY}
                )
                expected["unknown_document"] += 1
                continue
            doc = rng.choice(docs)
            current = next(d["current_version"] for d in registry["documents"] if d["id"] == doc)
            src = {"id": doc, "version": current}
            roll = rng.random()
            if roll < 0.1:
                src["version"] = str(int(current) - 1)
                expected["superseded"] += 1
            age = rng.choice([5, 40, 200, 364]) if rng.random() > 0.15 else rng.choice([366, 800])
            form = rng.random()
            stamp = NOW - age * DAY
            if form < 0.05:
                expected["undated"] += 1
            elif form < 0.4:
                src["updated_at"] = dt.datetime.fromtimestamp(stamp, dt.UTC).isoformat()
            elif form < 0.7:
                src["published_at"] = int(stamp)
            else:
                src["updated_at"] = int(stamp * 1000)
            if form >= 0.05 and age > 365:
                expected["max_age"] += 1
            if kinds[doc] == "withdrawn":
                expected["withdrawn"] += 1
            if kinds[doc] == "expired":
                expected["expired"] += 1
            sources.append(src)
        workload.append(sources)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "registry.yaml"
        path.write_text(json.dumps(registry), encoding="utf-8")  # JSON is valid YAML
        det = build_stale(
            StaleRetrievalPolicy(
                id="s",
                kind="stale_retrieval",
                max_age="365d",
                registry="registry.yaml",
                unknown_documents="breach",
            ),
            BuildContext(base_dir=Path(tmp), resources=Resources(clock=lambda: NOW)),
        )
        found = {k: 0 for k in expected}
        started = time.perf_counter()
        for sources in workload:
            for f in det.start(ScanContext(sources=sources)).feed("Answer.", final=True):
                found[f.evidence["rule"]] += 1
        elapsed = time.perf_counter() - started
    return {
        "responses": responses,
        "citations": sum(len(s) for s in workload),
        "expected": expected,
        "found": found,
        "exact_match": found == expected,
        "mean_ms_per_response": round(elapsed * 1000 / responses, 4),
    }


# --- 2/3. relevance and groundedness on real text --------------------------------------

_SENT = re.compile(r"(?<=[.!?])\s+")


def sotu_passages(data: Path, limit: int = 400, seed: int = 2) -> list[tuple[str, list[str]]]:
    """(speech id, sentences) of 4-8-sentence passages, one per sampled address."""
    rows = [json.loads(line) for line in gzip.open(data / "corpus" / "sotu.jsonl.gz", "rt")]
    rng = random.Random(seed)
    out = []
    while len(out) < limit:
        row = rng.choice(rows)
        sents = [s for s in _SENT.split(row["text"]) if 40 <= len(s) <= 300]
        if len(sents) < 12:
            continue
        start = rng.randrange(0, len(sents) - 8)
        out.append((row["id"], sents[start : start + rng.randint(5, 8)]))
    return out


def relevance(embedder, passages, threshold: float) -> dict:
    from sklearn.metrics import roc_auc_score

    det = build_quality(
        RetrievalQualityPolicy(id="r", kind="retrieval_quality", checks=["relevance"]),
        BuildContext(resources=Resources(embedder=embedder)),
    )
    rng = random.Random(3)
    sims, labels, lexical = [], [], []
    for speech, sents in passages:
        query = sents[0]
        own = " ".join(sents[1:])
        other = next(p for p in rng.sample(passages, 5) if p[0] != speech)
        foreign = " ".join(other[1][1:])
        v = embedder.encode([query, own, foreign])
        sims += [float(v[0] @ v[1]), float(v[0] @ v[2])]
        labels += [1, 0]
        lexical += [det._lexically_relevant(query, own), det._lexically_relevant(query, foreign)]
    sims_a = np.array(sims)
    labels_a = np.array(labels)
    return {
        "pairs": len(passages),
        "auc_own_vs_foreign_passage": round(float(roc_auc_score(labels_a, sims_a)), 4),
        "threshold": threshold,
        "relevant_flagged_below_threshold": round(
            float(np.mean(sims_a[labels_a == 1] < threshold)), 4
        ),
        "irrelevant_flagged_below_threshold": round(
            float(np.mean(sims_a[labels_a == 0] < threshold)), 4
        ),
        # the lexical shortcut clears a chunk without an embedding; on a foreign
        # passage that would hide an irrelevant retrieval
        "lexical_shortcut": {
            "share": det.config.lexical_relevance,
            "own_passage_cleared": round(float(np.mean(np.array(lexical)[labels_a == 1])), 4),
            "foreign_passage_cleared": round(float(np.mean(np.array(lexical)[labels_a == 0])), 4),
        },
    }


def groundedness(embedder, passages, data: Path) -> dict:
    """Embedding-only scores, and the shipped hybrid (lexical shortcuts, then embedding)."""

    def detector(**params):
        return build_quality(
            RetrievalQualityPolicy(
                id="q",
                kind="retrieval_quality",
                checks=["groundedness"],
                min_grounded_share=1.0,
                min_sentence_chars=1,
                **params,
            ),
            BuildContext(resources=Resources(embedder=embedder)),
        )

    modes = {
        "embedding_only": detector(lexical_support=1.01, lexical_unsupported=0.0),
        "hybrid_default": detector(),
    }
    pairs = []
    for line in open(data / "paraphrase" / "msr_paraphrase_test.txt", encoding="utf-8-sig"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 5 and parts[0] in ("0", "1"):
            pairs.append((int(parts[0]), parts[3], parts[4]))
    rng = random.Random(4)
    pairs = rng.sample(pairs, 600)

    def supported_share(det, sentences, chunk) -> float:
        ctx = ScanContext(sources=[{"id": "c", "text": chunk}])
        found = det.start(ctx).feed(" ".join(sentences), final=True)
        # the detector may split a long MSRP sentence in two; use its own count
        return found[0].evidence["grounded_share"] if found else 1.0

    out: dict = {
        "support_threshold": modes["hybrid_default"].config.support_threshold,
        "lexical_support": modes["hybrid_default"].config.lexical_support,
        "lexical_unsupported": modes["hybrid_default"].config.lexical_unsupported,
        "msrp_test_sample": len(pairs),
    }
    for name, det in modes.items():
        para = [supported_share(det, [b], a) for lab, a, b in pairs if lab == 1]
        nonpara = [supported_share(det, [b], a) for lab, a, b in pairs if lab == 0]
        unrelated = [
            supported_share(det, [pairs[i][2]], pairs[(i + 7) % len(pairs)][1])
            for i in range(len(pairs))
        ]
        own, foreign = [], []
        for i, (speech, sents) in enumerate(passages[:150]):
            other = next(p for p in passages[i + 1 :] + passages[:i] if p[0] != speech)
            chunk = " ".join(sents)
            # an answer restating two sentences of its chunk, and one that does not
            own.append(supported_share(det, sents[1:3], chunk))
            foreign.append(supported_share(det, other[1][1:3], chunk))
        out[name] = {
            "msrp_paraphrase_supported": round(float(np.mean(para)), 4),
            "msrp_non_paraphrase_supported": round(float(np.mean(nonpara)), 4),
            "msrp_unrelated_pair_supported": round(float(np.mean(unrelated)), 4),
            "sotu_answers": len(own),
            "sotu_own_chunk_mean_grounded_share": round(float(np.mean(own)), 4),
            "sotu_foreign_chunk_mean_grounded_share": round(float(np.mean(foreign)), 4),
        }
    return out


# --- 4. latency ------------------------------------------------------------------------


def build_policies(variant: str = "fp32") -> list[tuple[str, object]]:
    """``(policy id, detector)`` for the shipped bias and retrieval policies.

    ``variant`` swaps the embedding variant of the embedding-based policies
    (``fp32`` or ``int8``), everything else as shipped.
    """
    from gateway.policy.kinds import default_registry
    from gateway.policy.loader import load_policies

    policy_set = load_policies(
        [ROOT / "policies" / "bias.yaml", ROOT / "policies" / "retrieval.yaml"]
    )
    out = []
    for compiled in policy_set.for_route("rag"):
        config = compiled.config
        detector = compiled.detector
        if variant != "fp32" and "variant" in type(config).model_fields:
            config = config.model_copy(update={"variant": variant})
            kind = default_registry().get(config.kind)
            detector = kind.build(config, BuildContext(base_dir=ROOT / "policies"))
        out.append((config.id, detector))
    return out


def sample_exchange(passages, i: int) -> tuple[str, ScanContext]:
    """A ~2,000-character RAG answer built from real passages, with its sources.

    Answer ``i`` starts at passage ``4 * i``; answers with different ``i``
    share no passage while ``4 * i`` stays below ``len(passages) - 4``.
    """
    j = 4 * i
    speech, sents = passages[j % len(passages)]
    text = " ".join(sents)
    while len(text) < 2000:
        j += 1
        text += " " + " ".join(passages[j % len(passages)][1])
    text = text[:2000]
    sources = [
        {
            "id": "router-manual",
            "version": "3.1",
            "updated_at": "2099-01-01",
            "text": " ".join(sents[:3]),
        },
        {"id": f"{speech}-b", "updated_at": "2099-01-01", "text": " ".join(sents[3:])},
    ]
    return text, ScanContext(query=sents[0], sources=sources)


def _pct(values) -> dict:
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
    }


def latency(passages, runs: int = 200, variant: str = "fp32", chunk: int = 16) -> dict:
    """Detector time per 2,000-char answer, whole and streamed.

    Whole: the answer arrives at once, so all of its scanning is added
    latency. Streamed: the answer arrives in ``chunk``-char pieces while the
    model is still generating; what the client waits for after the last
    token is the final ``feed`` only, the rest overlaps generation.
    """
    policies = build_policies(variant)
    for k in range(3):  # load the model and warm code paths
        text, ctx = sample_exchange(passages, 2 * runs + k)
        for _, det in policies:
            det.start(ctx).feed(text, final=True)
    whole: dict[str, list[float]] = {pid: [] for pid, _ in policies}
    final_feed: dict[str, list[float]] = {pid: [] for pid, _ in policies}
    stream_cpu: dict[str, list[float]] = {pid: [] for pid, _ in policies}
    whole_total, final_total, cpu_total = [], [], []
    for i in range(runs):
        text, ctx = sample_exchange(passages, i)
        w = f = c = 0.0
        for pid, det in policies:
            started = time.perf_counter()
            det.start(ctx).feed(text, final=True)
            ms = (time.perf_counter() - started) * 1000
            whole[pid].append(ms)
            w += ms
        # a different answer for the streamed run, so caches do not help it
        text, ctx = sample_exchange(passages, runs + i)
        for pid, det in policies:
            scan = det.start(ctx)
            spent = 0.0
            for end in range(chunk, len(text), chunk):
                started = time.perf_counter()
                scan.feed(text[:end], final=False)
                spent += time.perf_counter() - started
            started = time.perf_counter()
            scan.feed(text, final=True)
            last = (time.perf_counter() - started) * 1000
            final_feed[pid].append(last)
            stream_cpu[pid].append(spent * 1000 + last)
            f += last
            c += spent * 1000 + last
        whole_total.append(w)
        final_total.append(f)
        cpu_total.append(c)
    return {
        "variant": variant,
        "runs": runs,
        "response_chars": 2000,
        "note": "detector time per response on this machine; each run a new text, so the "
        "embedding caches are cold for the answer",
        "whole_response": {
            "total": _pct(whole_total),
            "per_policy": {k: _pct(v) for k, v in whole.items()},
        },
        "streamed_added_after_last_chunk": {
            "total": _pct(final_total),
            "per_policy": {k: _pct(v) for k, v in final_feed.items()},
        },
        "streamed_total_cpu": {
            "total": _pct(cpu_total),
            "per_policy": {k: _pct(v) for k, v in stream_cpu.items()},
        },
        "targets": {"p50_ms": 3, "p99_ms": 8},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="retrieval policy quality and latency")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from gateway.embedding import get_embedder

    embedder = get_embedder()
    # 300 passages for relevance, 4 per latency answer (whole and streamed)
    passages = sotu_passages(args.data, limit=300 + 8 * args.runs + 20)
    out = {
        "staleness": staleness(),
        "relevance_sotu": relevance(embedder, passages[:300], 0.25),
        "groundedness": groundedness(embedder, passages, args.data),
        "latency": [latency(passages[300:], args.runs, v) for v in ("fp32", "int8")],
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
