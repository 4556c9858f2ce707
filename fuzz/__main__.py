"""``python -m fuzz [--seconds N] [--target NAME] [--seed S] [--list]``."""

from __future__ import annotations

import argparse
import sys

from fuzz.runner import discover, run, select


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fuzz", description="run the gateway's fuzz targets"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    parser.add_argument(
        "--target", help="one target: its full name, its function name or its module suffix"
    )
    parser.add_argument("--seed", type=int, help="seed the input generator, to repeat a run")
    parser.add_argument("--list", action="store_true", help="list the targets and stop")
    args = parser.parse_args(argv)
    targets = discover()
    if args.list:
        for target in targets:
            print(target.name)
        return 0
    chosen = select(targets, args.target)
    if not chosen:
        known = ", ".join(t.name for t in targets)
        print(f"no fuzz target matches {args.target!r}; known: {known}", file=sys.stderr)
        return 2
    reports = run(chosen, args.seconds, seed=args.seed)
    crashed = [r for r in reports if r.crash is not None]
    print(f"{len(reports) - len(crashed)} passed, {len(crashed)} failed")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
