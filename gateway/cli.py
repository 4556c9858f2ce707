"""The ``gateway`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger("gateway")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="LLM/RAG output governance gateway"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy and admin listeners")
    serve.add_argument("--config", help="gateway.yaml (omit for the quick start)")
    serve.add_argument("--upstream", help="quick start: the upstream base URL")
    serve.add_argument("--policies", action="append", help="policy file or directory")
    serve.add_argument(
        "--host", default="127.0.0.1", help="quick start: the proxy listener's address"
    )
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--admin-host",
        default="127.0.0.1",
        help="quick start: the admin listener's address (API, review and incident pages); "
        "keep it on loopback unless TLS and access control stand in front",
    )
    serve.add_argument("--admin-port", type=int, default=8081)
    serve.add_argument("--store", help="store URL (sqlite:///… or postgresql://…)")
    serve.set_defaults(func=cmd_serve)

    policy = sub.add_parser("policy", help="validate and test policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="ACTION")
    validate = policy_sub.add_parser("validate", help="print every error as file:line:col")
    validate.add_argument("paths", nargs="+")
    validate.set_defaults(func=cmd_policy_validate)
    test = policy_sub.add_parser("test", help="run the *_test.yaml cases")
    test.add_argument("paths", nargs="+")
    test.set_defaults(func=cmd_policy_test)

    check = sub.add_parser("check", help="decide on a text or JSON body read from stdin")
    check.add_argument("--config")
    check.add_argument("--route")
    check.add_argument("--policies", action="append")
    check.add_argument("--sources", help="JSON file with the RAG sources")
    check.add_argument("--query", help="the user's question, for relevance checks")
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", help="run a guided tour against the bundled demo upstream")
    demo.add_argument("--serve", action="store_true", help="keep serving after the tour")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--admin-port", type=int, default=8081)
    demo.add_argument("--upstream-port", type=int, default=9000)
    demo.add_argument("--pace-ms", type=float, default=15.0, help="delay between streamed tokens")
    demo.add_argument("--policies", action="append", help="policy files (default: policies/)")
    demo.set_defaults(func=cmd_demo)

    # subsystems add their own commands (index, route, incident)
    from gateway.app import installed_subsystems

    for subsystem in installed_subsystems():
        subsystem.cli_commands(sub)
    return parser


def load_config(args) -> Settings:
    from gateway.config import load_settings, quickstart

    if getattr(args, "config", None):
        settings = load_settings(args.config)
        if getattr(args, "policies", None):
            settings = settings.model_copy(update={"policies": args.policies})
        return settings
    if getattr(args, "upstream", None) is None and getattr(args, "func", None) is cmd_serve:
        raise SystemExit("gateway serve: give --config gateway.yaml or --upstream URL")
    settings = quickstart(
        getattr(args, "upstream", None) or "http://127.0.0.1:9",
        getattr(args, "policies", None),
        port=getattr(args, "port", 8080),
        admin_port=getattr(args, "admin_port", 8081),
        host=getattr(args, "host", "127.0.0.1"),
        admin_host=getattr(args, "admin_host", "127.0.0.1"),
    )
    if getattr(args, "store", None):
        settings = settings.model_copy(
            update={"store": settings.store.model_copy(update={"url": args.store})}
        )
    return settings


def cmd_serve(args) -> int:
    from gateway.observability.logs import setup_logging
    from gateway.server import run_loop, serve

    settings = load_config(args)
    setup_logging(settings.log_level)
    run_loop(serve(settings))
    return 0


def cmd_policy_validate(args) -> int:
    from gateway.policy.loader import check_files, policy_files

    errors = check_files(args.paths)
    try:
        files = policy_files(args.paths)
    except OSError:
        files = []  # check_files has said why the directory cannot be listed
    for line in errors:
        print(line)
    if errors:
        print(f"{len(errors)} error(s) in {len(files)} file(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(files)} file(s) valid")
    return 0


def cmd_policy_test(args) -> int:
    from gateway.policy.testing import run_tests

    results = run_tests(args.paths)
    if not results:
        print("no *_test.yaml files found", file=sys.stderr)
        return 1
    counts = {"PASS": 0, "FAIL": 0, "ERROR": 0}
    for r in results:
        counts[r.outcome] += 1
        line = f"{r.outcome:5} {r.file}: {r.name}"
        print(line + (f" -- {r.detail}" if r.detail else ""))
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['ERROR']} errors")
    return 0 if counts["FAIL"] == counts["ERROR"] == 0 else 1


def cmd_check(args) -> int:
    from gateway.config import load_settings
    from gateway.policy.check import context_for, decision_json, evaluate
    from gateway.policy.loader import load_policies
    from gateway.proxy.adapters import Adapters, parse_answer

    raw = sys.stdin.read()
    payload: str | dict = raw
    stripped = raw.strip()
    if stripped.startswith("{"):
        try:
            payload = json.loads(stripped)
        except json.JSONDecodeError:
            payload = raw
    adapters = Adapters([])
    route = args.route or "default"
    if args.config:
        settings = load_settings(args.config)
        paths = args.policies or settings.policies
        route = args.route or settings.routes[0].name
        if route not in {r.name for r in settings.routes}:
            print(f"gateway check: no route named {route!r}", file=sys.stderr)
            return 2
        adapters = Adapters(settings.routes)
    else:
        paths = args.policies or ["policies"]
    sources = None
    if args.sources:
        sources = json.loads(Path(args.sources).read_text(encoding="utf-8"))
    policy_set = load_policies(paths)
    segments, found, protocol = parse_answer(payload, adapters, route)
    ctx = context_for(route, query=args.query, sources=sources)
    ctx.sources.extend(found.items)
    ctx.source_errors.extend(found.errors)
    guard = asyncio.run(evaluate(policy_set.for_route(route), segments, ctx))
    out = decision_json(guard, policy_set.revision)
    out["route"] = route
    if protocol:
        out["protocol"] = protocol
    print(json.dumps(out, indent=2))
    return 0


def cmd_demo(args) -> int:
    from gateway.demo.tour import run_demo

    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
