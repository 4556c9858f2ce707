"""Query time and quality of the ``image_copyright`` kind.

- Search time: an image index of ``--images`` images (default 100,000), each
  stored as its 11 hash variants like a real build, so 1.1 million 64-bit
  hashes. The hashes are random (a build of 100,000 real images would take an
  hour and change nothing: the search scans every hash whatever they hold).
  Reported per query: the Hamming scan alone, and the whole check of one
  answer image (base64 decode, PNG decode, hash, scan) for a 1024x1024 PNG.
- Quality (``--quality``): recall of edited copies and false-positive rate on
  unrelated images at the shipped ``max_distance``, on both generated families
  of tests/imagegen.py. The default was calibrated on ``scenes``; the
  ``textures`` figure is the held-out one.

Prints one JSON object. Reads no data files. Run from the repository root:

    nice -n 10 .venv/bin/python bench/image_copyright.py [--images 100000] [--quality]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.contract.detector import ImagePart  # noqa: E402
from gateway.detectors.image_copyright import (  # noqa: E402
    DEFAULT_MAX_DISTANCE,
    ImageCopyrightDetector,
    ImageCopyrightPolicy,
)
from gateway.index.images import (  # noqa: E402
    FORMAT,
    HASH,
    VARIANTS,
    ImageIndex,
    build_image_index,
    phash64,
    popcount,
    working,
)
from gateway.records.manifest import (  # noqa: E402
    ImageCounts,
    ImageIndexManifest,
    ImageSourceInfo,
)


def synthetic_index(path: Path, images: int, seed: int = 7) -> None:
    """An index directory of ``images`` images with random hashes, in the real format."""
    rng = np.random.default_rng(seed)
    n_var = len(VARIANTS)
    path.mkdir(parents=True)
    np.save(path / "hashes.npy", rng.integers(0, 2**64, images * n_var, dtype=np.uint64))
    np.save(path / "owners.npy", np.repeat(np.arange(images, dtype=np.uint32), n_var))
    np.save(path / "variants.npy", np.tile(np.arange(n_var, dtype=np.uint8), images))
    with open(path / "images.jsonl", "w") as fh:
        for i in range(images):
            fh.write(json.dumps({"id": f"img-{i}", "path": f"{i}.png", "title": f"{i}"}) + "\n")
    (path / "thumbs.bin").write_bytes(b"")
    ImageIndexManifest(
        format=FORMAT,
        name=path.name,
        created_at="synthetic",
        build_seconds=0.0,
        params={"hash": HASH, "variants": list(VARIANTS)},
        counts=ImageCounts(images=images, hashes=images * n_var),
        source=ImageSourceInfo(path="synthetic", sha256="0" * 64, files=images),
    ).write(path)


def timings(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "mean_ms": round(statistics.fmean(ms), 3),
        "p50_ms": round(ms[len(ms) // 2], 3),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
    }


def search_bench(images: int, queries: int) -> dict:
    from tests.imagegen import png_bytes, texture

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic"
        started = time.perf_counter()
        synthetic_index(path, images)
        index = ImageIndex(path)
        load_s = time.perf_counter() - started
        rng = np.random.default_rng(11)
        values = rng.integers(0, 2**63, queries, dtype=np.int64).tolist()
        index.search(values[0], DEFAULT_MAX_DISTANCE)  # warm the page cache
        scan = []
        for v in values:
            t = time.perf_counter()
            index.search(int(v), DEFAULT_MAX_DISTANCE)
            scan.append(time.perf_counter() - t)
        # one real answer image: a 1024x1024 PNG as an images API returns it
        img = texture(5).resize((1024, 1024))
        b64 = base64.b64encode(png_bytes(img)).decode("ascii")
        config = ImageCopyrightPolicy(id="bench", kind="image_copyright", thumbnails=False)
        detector = ImageCopyrightDetector(config, lambda: index)
        part = ImagePart("data[0].b64_json", b64)
        whole = []
        for _ in range(max(5, queries // 20)):
            t = time.perf_counter()
            detector.check(part)
            whole.append(time.perf_counter() - t)
        return {
            "images": images,
            "hashes": int(len(index.hashes)),
            "index_bytes": int(index.hashes.nbytes + index.owners.nbytes + index.variants.nbytes),
            "load_seconds": round(load_s, 3),
            "queries": queries,
            "scan": timings(scan),
            "check_1024px_png": timings(whole),
            "png_bytes": len(b64) * 3 // 4,
        }


def quality(family: str, protected: int, unrelated: int) -> dict:
    from tests.imagegen import EDITS, FAMILIES, edited, png_bytes

    gen = FAMILIES[family]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        originals = [gen(s) for s in range(protected)]
        for i, img in enumerate(originals):
            (src / f"p{i:04d}.png").write_bytes(png_bytes(img))
        build_image_index(src, Path(tmp) / "idx")
        index = ImageIndex(Path(tmp) / "idx")
        own, edit_of = [], []
        for i, img in enumerate(originals):
            for k, edit in enumerate(EDITS):
                h = np.uint64(phash64(working(edited(img, edit, i * 31 + k))))
                own.append(int(popcount(index.hashes[index.owners == i] ^ h).min()))
                edit_of.append(edit)
        nearest = [
            int(popcount(index.hashes ^ np.uint64(phash64(working(gen(100_000 + s))))).min())
            for s in range(unrelated)
        ]
    own_a, near_a, edits_a = np.array(own), np.array(nearest), np.array(edit_of)
    t = DEFAULT_MAX_DISTANCE
    return {
        "family": family,
        "protected": protected,
        "copies": len(own),
        "unrelated": unrelated,
        "max_distance": t,
        "recall": round(float((own_a <= t).mean()), 4),
        "false_positive_rate": round(float((near_a <= t).mean()), 4),
        "recall_by_edit": {e: round(float((own_a[edits_a == e] <= t).mean()), 4) for e in EDITS},
        "by_distance": {
            str(d): {
                "recall": round(float((own_a <= d).mean()), 4),
                "fpr": round(float((near_a <= d).mean()), 4),
            }
            for d in range(4, 17, 2)
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--quality", action="store_true", help="also measure recall and FPR")
    ap.add_argument("--protected", type=int, default=120)
    ap.add_argument("--unrelated", type=int, default=1000)
    args = ap.parse_args()
    out: dict = {"search": search_bench(args.images, args.queries)}
    if args.quality:
        out["quality"] = {
            "note": "max_distance calibrated on scenes; textures is held out",
            "calibration": quality("scenes", args.protected, args.unrelated),
            "held_out": quality("textures", args.protected, args.unrelated),
        }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
