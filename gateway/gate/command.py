"""``gateway gate``: the command itself, from arguments to exit status.

Exit status: 0 the candidate passes, 1 it fails a threshold, 2 the gate
could not judge (bad input, a side that failed to answer more than
``max_errors`` of the prompts, or an unexpected failure).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from gateway.errors import ConfigError
from gateway.gate.prompts import load_prompts
from gateway.gate.replay import Replay, ResultsFile, Upstream, judge_with
from gateway.gate.report import markdown, plot, summarise, write_json
from gateway.gate.thresholds import load_thresholds
from gateway.policy.loader import load_policies
from gateway.proxy.adapters import CONVERSATIONS

log = logging.getLogger(__name__)

GATE_PASSED, GATE_FAILED, GATE_ERROR = 0, 1, 2
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def add_arguments(gate: argparse.ArgumentParser) -> None:
    gate.add_argument(
        "--candidate",
        required=True,
        metavar="URL",
        help="base URL of the upstream to judge (…/v1 or its root)",
    )
    gate.add_argument("--baseline", metavar="URL", help="base URL of the upstream to compare with")
    gate.add_argument(
        "--prompts",
        required=True,
        metavar="FILE.jsonl",
        help="one JSON object per line: {id, prompt | messages, model, query, sources}",
    )
    gate.add_argument(
        "--policies",
        action="append",
        metavar="DIR",
        help="policy file or folder (repeatable; default: policies)",
    )
    gate.add_argument("--thresholds", metavar="FILE.yaml", help="limits per policy (docs/gate.md)")
    gate.add_argument(
        "--route", default="default", help="route whose policies apply (default: default)"
    )
    gate.add_argument("--protocol", choices=sorted(CONVERSATIONS), default="openai")
    gate.add_argument("--model", default="gate", help="model for prompts that name none")
    gate.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="environment variable with the candidate's key "
        "(default: OPENAI_API_KEY or ANTHROPIC_API_KEY, if set)",
    )
    gate.add_argument(
        "--baseline-api-key-env",
        metavar="NAME",
        help="the baseline's key (default: the candidate's)",
    )
    gate.add_argument(
        "--concurrency", type=_positive, default=8, help="answers in flight (default 8)"
    )
    gate.add_argument(
        "--retries",
        type=_non_negative,
        default=3,
        help="retries of a busy or failing upstream per prompt (default 3)",
    )
    gate.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per answer (default 120)"
    )
    gate.add_argument(
        "--out",
        default="gate-report",
        metavar="DIR",
        help="folder for results.jsonl, report.json, report.md, rates.png",
    )
    gate.add_argument("--resume", action="store_true", help="finish the run already in --out")
    gate.add_argument("--no-progress", action="store_true", help="no progress bar")


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _key(name: str | None, protocol: str) -> str | None:
    if name is not None:
        value = os.environ.get(name)
        if not value:
            raise ConfigError(f"--api-key-env: the environment variable {name} is not set")
        return value
    return os.environ.get(DEFAULT_KEY_ENV[protocol]) or None


def run_gate(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"gateway gate: {line}", file=sys.stderr)
        return GATE_ERROR
    except KeyboardInterrupt:
        print(f"gateway gate: interrupted; finish with --resume --out {args.out}", file=sys.stderr)
        return GATE_ERROR
    except Exception as exc:
        # a crash must not read as "the candidate failed a threshold" (exit 1)
        log.exception("gateway gate failed")
        print(f"gateway gate: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return GATE_ERROR


def _run(args: argparse.Namespace) -> int:
    prompts = load_prompts(args.prompts)
    thresholds = load_thresholds(args.thresholds)
    policy_set = load_policies(args.policies or ["policies"])
    policies = [p.config.id for p in policy_set.for_route(args.route)]
    if not policies:
        raise ConfigError(f"no policy applies to route {args.route!r}")
    candidate_key = _key(args.api_key_env, args.protocol)
    baseline_key = (
        _key(args.baseline_api_key_env, args.protocol)
        if args.baseline_api_key_env
        else candidate_key
    )
    upstreams = [Upstream("candidate", args.candidate, args.protocol, candidate_key, args.model)]
    if args.baseline:
        upstreams.append(
            Upstream("baseline", args.baseline, args.protocol, baseline_key, args.model)
        )
    run = {
        "prompts": prompts.path,
        "prompt_count": len(prompts.prompts),
        "prompts_sha256": prompts.digest,
        "upstreams": {u.side: u.describe() for u in upstreams},
        "revision": policy_set.revision,
        "route": args.route,
    }
    out = Path(args.out)
    results = ResultsFile(out, run, resume=args.resume)
    try:
        replay = Replay(
            prompts,
            upstreams,
            judge_with(policy_set, args.route),
            results,
            concurrency=args.concurrency,
            retries=args.retries,
            timeout=args.timeout,
            progress=not args.no_progress,
        )
        asyncio.run(replay.run())
    finally:
        results.close()
    summary = summarise(results.records(), policies, [u.side for u in upstreams], thresholds, run)
    write_json(summary, out / "report.json")
    text = markdown(summary)
    (out / "report.md").write_text(text, encoding="utf-8")
    if not plot(summary, out / "rates.png"):
        print(
            "gateway gate: no rates.png: install matplotlib "
            "(pip install 'governance-gateway[report]')",
            file=sys.stderr,
        )
    print(text)
    if summary["too_many_errors"]:
        return GATE_ERROR
    return GATE_PASSED if summary["passed"] else GATE_FAILED
