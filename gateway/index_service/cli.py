"""``gateway index``: build, add, remove, stats and query copyright indexes.

Exit codes: 0 success; 1 the command ran but refused some input (each
refusal is printed on stderr, the rest was indexed); 2 usage or a missing
index.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from typing import Any

from gateway.errors import IndexUnavailable
from gateway.index.build import BuildParams, add_documents, build_index, remove_documents
from gateway.index.images import build_image_index, is_image_index
from gateway.index.manager import open_index
from gateway.index.store import CopyrightIndex


def register(subparsers: Any) -> None:
    """Add the ``index`` command and its subcommands to an argparse subparsers object."""
    index = subparsers.add_parser("index", help="build and inspect copyright indexes")
    sub = index.add_subparsers(dest="index_command", required=True)

    b = sub.add_parser(
        "build", help="index a corpus (text file, directory or JSONL) or a directory of images"
    )
    what = b.add_mutually_exclusive_group(required=True)
    what.add_argument("--corpus", help="a .txt file, a directory, or .jsonl")
    what.add_argument(
        "--images",
        help="a directory of protected images (png, jpeg, webp, gif, bmp) for image_copyright; "
        "an optional sources.jsonl in it names each file's id, title, owner, licence",
    )
    b.add_argument("--out", required=True, help="index directory, e.g. indexes/NAME")
    defaults = BuildParams()
    b.add_argument("--chunk-words", type=int, default=defaults.chunk_words)
    b.add_argument("--chunk-overlap", type=int, default=defaults.chunk_overlap)
    b.add_argument("--anchor-words", type=int, default=defaults.anchor_words)
    b.add_argument("--winnow", type=int, default=defaults.winnow)
    b.add_argument("--model", default=defaults.model, help="sentence-transformers model")
    b.add_argument("--no-semantic", action="store_true", help="lexical layer only (no embeddings)")
    b.add_argument(
        "--no-screen",
        action="store_true",
        help="no static-embedding screen: every window goes through the model",
    )
    b.add_argument("--faiss", choices=["auto", "flat", "ivf", "hnsw"], default="auto")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_build)

    a = sub.add_parser("add", help="add documents to an index without rebuilding it")
    a.add_argument("dir")
    a.add_argument("--corpus", required=True)
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(func=_add)

    r = sub.add_parser("remove", help="take documents down by id")
    r.add_argument("dir")
    r.add_argument("ids", nargs="*", help="document ids")
    r.add_argument("--ids-file", help="a file with one id per line")
    r.set_defaults(func=_remove)

    s = sub.add_parser("stats", help="counts, memory and manifest as JSON")
    s.add_argument("dir")
    s.set_defaults(func=_stats)

    q = sub.add_parser("query", help="findings for text on stdin, as JSON")
    q.add_argument("dir")
    q.add_argument(
        "--match",
        default="verbatim,near_verbatim",
        help="comma-separated: verbatim, near_verbatim, semantic",
    )
    q.add_argument("--jsonl", action="store_true", help='stdin holds {"id", "text"} per line')
    q.add_argument("--min-words", type=int)
    q.add_argument("--near-min-words", type=int)
    q.add_argument("--near-ratio", type=float)
    q.add_argument("--semantic-threshold", type=float)
    q.add_argument("--image", help="an image index: the image file to look up")
    q.add_argument("--max-distance", type=int, help="an image index: the largest Hamming distance")
    q.set_defaults(func=_query)


def _print(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


def _report(report: Any) -> int:
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    out = report.as_dict()
    out.pop("problems")
    out["problem_count"] = len(report.problems)
    _print(out)
    if report.problems:
        print(
            f"{len(report.problems)} input(s) were not indexed; see the messages above",
            file=sys.stderr,
        )
        return 1
    return 0


def _build(args: argparse.Namespace) -> int:
    if args.images is not None:
        return _report(build_image_index(args.images, args.out, progress=not args.no_progress))
    params = BuildParams(
        chunk_words=args.chunk_words,
        chunk_overlap=args.chunk_overlap,
        anchor_words=args.anchor_words,
        winnow=args.winnow,
        model=args.model,
        semantic=not args.no_semantic,
        screen=not args.no_screen,
        faiss=args.faiss,
    )
    try:
        params.check()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = build_index(args.corpus, args.out, params, progress=not args.no_progress)
    return _report(report)


def _rebuild_only(path: str) -> bool:
    if is_image_index(path):
        print(
            f"error: {path} is an image index; rebuild it with gateway index build --images",
            file=sys.stderr,
        )
        return True
    return False


def _add(args: argparse.Namespace) -> int:
    if _rebuild_only(args.dir):
        return 2
    try:
        report = add_documents(args.dir, args.corpus, progress=not args.no_progress)
    except IndexUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _report(report)


def _remove(args: argparse.Namespace) -> int:
    ids = list(args.ids)
    if args.ids_file:
        with open(args.ids_file, encoding="utf-8") as fh:
            ids.extend(line.strip() for line in fh if line.strip())
    if not ids:
        print("error: give at least one id (or --ids-file)", file=sys.stderr)
        return 2
    if _rebuild_only(args.dir):
        return 2
    try:
        report = remove_documents(args.dir, ids)
    except IndexUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _report(report)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _stats(args: argparse.Namespace) -> int:
    try:
        index = open_index(args.dir)
    except IndexUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print(
        {
            "path": str(index.path),
            "counts": index.counts(),
            "memory": {**index.memory(), "process_rss_bytes": _rss_bytes()},
            "manifest": index.manifest.to_json(),
        }
    )
    return 0


def _query(args: argparse.Namespace) -> int:
    from gateway.contract.detector import ScanContext
    from gateway.detectors.copyright import CopyrightDetector, CopyrightPolicy

    if is_image_index(args.dir):
        return _query_image(args)
    try:
        index = CopyrightIndex(args.dir)
    except IndexUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    overrides = {
        k: v
        for k, v in {
            "min_words": args.min_words,
            "near_min_words": args.near_min_words,
            "near_ratio": args.near_ratio,
            "semantic_threshold": args.semantic_threshold,
        }.items()
        if v is not None
    }
    try:
        config = CopyrightPolicy(
            id="query",
            kind="copyright",
            index=index.name,
            match=[m.strip() for m in args.match.split(",") if m.strip()],
            **overrides,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "semantic" in config.match and not index.has_vectors:
        print(f"error: {index.path} was built without vectors (--no-semantic)", file=sys.stderr)
        return 2
    detector = CopyrightDetector(config, lambda: index)

    def scan(text: str) -> list[dict[str, Any]]:
        return [f.as_dict() for f in detector.start(ScanContext()).feed(text, True)]

    if not args.jsonl:
        _print({"findings": scan(sys.stdin.read())})
        return 0
    status = 0
    for lineno, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = record["text"]
            if not isinstance(text, str):
                raise TypeError("text must be a string")
        except (ValueError, KeyError, TypeError) as exc:
            print(f"error: stdin:{lineno}: {exc}", file=sys.stderr)
            _print({"id": None, "line": lineno, "error": str(exc)})
            status = 1
            continue
        _print({"id": record.get("id"), "findings": scan(text)})
    return status


def _query_image(args: argparse.Namespace) -> int:
    import base64

    from gateway.contract.detector import ImagePart
    from gateway.detectors.image_copyright import ImageCopyrightDetector, ImageCopyrightPolicy
    from gateway.index.images import ImageIndex, ImageUnreadable

    if not args.image:
        print(f"error: {args.dir} is an image index: give --image FILE", file=sys.stderr)
        return 2
    try:
        index = ImageIndex(args.dir)
        raw = open(args.image, "rb").read()
    except (IndexUnavailable, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    extra = {"max_distance": args.max_distance} if args.max_distance is not None else {}
    config = ImageCopyrightPolicy(
        id="query", kind="image_copyright", index=index.name, thumbnails=False, **extra
    )
    detector = ImageCopyrightDetector(config, lambda: index)
    part = ImagePart(args.image, base64.b64encode(raw).decode("ascii"))
    try:
        findings = detector.check(part)
    except ImageUnreadable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print({"findings": [f.as_dict() for f in findings]})
    return 0
