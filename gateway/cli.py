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
    # ``serve --workers N`` starts its workers with the same command line
    args.argv = list(sys.argv[1:] if argv is None else argv)
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

    # with --config, every flag given wins over the file's value; the defaults in the
    # help are the quick start's, and the file's own when the flag is left out
    serve = sub.add_parser(
        "serve",
        help="run the proxy and admin listeners",
        description="Run the proxy and admin listeners. With --config, a flag given on the "
        "command line overrides the file's value.",
    )
    serve.add_argument("--config", help="gateway.yaml (omit for the quick start)")
    serve.add_argument(
        "--upstream", help="quick start: the upstream base URL (not with --config: set routes)"
    )
    serve.add_argument(
        "--policies", action="append", help="policy file or directory (overrides policies:)"
    )
    serve.add_argument(
        "--host",
        help="the proxy listener's address (default 127.0.0.1; overrides listeners.proxy.host)",
    )
    serve.add_argument(
        "--port",
        type=port_number,
        help="the proxy listener's port (default 8080; overrides listeners.proxy.port)",
    )
    serve.add_argument(
        "--admin-host",
        help="the admin listener's address (API, review and incident pages; default "
        "127.0.0.1; overrides listeners.admin.host); keep it on loopback unless TLS and "
        "access control stand in front",
    )
    serve.add_argument(
        "--admin-port",
        type=port_number,
        help="the admin listener's port (default 8081; overrides listeners.admin.port)",
    )
    serve.add_argument(
        "--store", help="store URL (sqlite:///… or postgresql://…; overrides store.url)"
    )
    serve.add_argument(
        "--workers",
        type=worker_count,
        help="processes serving both listeners on the same ports (default: one per usable "
        "CPU core; overrides listeners.workers); 1 runs everything in this process",
    )
    # set by the supervising process on the command line of each worker it starts
    serve.add_argument("--worker-slot", type=int, help=argparse.SUPPRESS)
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
    demo.add_argument("--port", type=port_number, default=8080)
    demo.add_argument("--admin-port", type=port_number, default=8081)
    demo.add_argument("--upstream-port", type=port_number, default=9000)
    demo.add_argument("--pace-ms", type=float, default=15.0, help="delay between streamed tokens")
    demo.add_argument("--policies", action="append", help="policy files (default: policies/)")
    demo.set_defaults(func=cmd_demo)

    gate = sub.add_parser(
        "gate",
        help="replay prompts through a candidate upstream and judge it against thresholds",
        description="Exit 0 when the candidate passes, 1 when it fails a threshold, "
        "2 when it cannot be judged (docs/gate.md).",
    )
    from gateway.gate.command import add_arguments as add_gate_arguments

    add_gate_arguments(gate)
    gate.set_defaults(func=cmd_gate)

    from gateway.policy.schema import add_command as add_schema_command

    add_schema_command(sub)

    # subsystems add their own commands (index, route, incident)
    from gateway.app import installed_subsystems

    for subsystem in installed_subsystems():
        subsystem.cli_commands(sub)
    return parser


def _flag(args, name: str):
    """A flag's value, or None when it was not given (or the command has no such flag)."""
    return getattr(args, name, None)


def load_config(args) -> Settings:
    """The settings ``gateway serve`` runs with: the file (or the quick start), then the flags.

    A flag given on the command line always wins over the file's value.
    ``--upstream`` describes the quick start's one route, so with ``--config``
    it is refused rather than guessed onto one of the file's routes.
    """
    from gateway.config import load_settings, quickstart

    if _flag(args, "config"):
        if _flag(args, "upstream"):
            raise ConfigError(
                "gateway serve: --upstream is for the quick start; with --config, "
                "set the upstream of a route in the file (routes[].upstream)"
            )
        settings = load_settings(args.config)
        if _flag(args, "policies"):
            settings = settings.model_copy(update={"policies": args.policies})
    else:
        if _flag(args, "upstream") is None and _flag(args, "func") is cmd_serve:
            raise SystemExit("gateway serve: give --config gateway.yaml or --upstream URL")
        settings = quickstart(
            _flag(args, "upstream") or "http://127.0.0.1:9", _flag(args, "policies")
        )
    return _apply_flags(settings, args)


def _apply_flags(settings: Settings, args) -> Settings:
    def given(**flags) -> dict:
        return {k: v for k, v in flags.items() if v is not None}

    proxy = given(host=_flag(args, "host"), port=_flag(args, "port"))
    admin = given(host=_flag(args, "admin_host"), port=_flag(args, "admin_port"))
    listeners = settings.listeners.model_copy(
        update={
            "proxy": settings.listeners.proxy.model_copy(update=proxy),
            "admin": settings.listeners.admin.model_copy(update=admin),
        }
    )
    update: dict = {"listeners": listeners}
    if _flag(args, "store"):
        update["store"] = settings.store.model_copy(update={"url": args.store})
    return settings.model_copy(update=update)


def port_number(text: str) -> int:
    """argparse type for a TCP port: refused at parse time, like a bad value in the file."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, not {port}")
    return port


def worker_count(text: str) -> int:
    """argparse type for ``--workers``: a whole number of processes, at least one."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of workers: {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"at least 1 worker is needed, not {count}")
    return count


def cmd_serve(args) -> int:
    from gateway.observability.logs import setup_logging
    from gateway.server import run_loop, serve
    from gateway.workers import WorkerRole, usable_cores

    settings = load_config(args)
    setup_logging(settings.log_level)
    slot = _flag(args, "worker_slot")
    if slot is not None:
        role = WorkerRole.from_environ(slot)
        role.follow_parent()
        role.stamp_logs()
        run_loop(serve(settings, worker=role))
        return 0
    count = _flag(args, "workers") or settings.listeners.workers or usable_cores()
    if count > 1 and _in_memory_store(settings):
        raise ConfigError(
            f"gateway serve: store.url {settings.store.url!r} is an in-memory SQLite "
            f"database, which each of {count} workers would have apart; run one worker "
            "(--workers 1) or use a file (sqlite:///path.db) or PostgreSQL store"
        )
    if count == 1:
        run_loop(serve(settings))
        return 0
    return _supervise(args, settings, count)


def _in_memory_store(settings: Settings) -> bool:
    from gateway.store.sqlite import sqlite_path

    url = settings.store.url
    return url.startswith("sqlite://") and sqlite_path(url) == ":memory:"


# how a worker is started: this package's command line, in a fresh interpreter
_WORKER_MAIN = "import sys; from gateway.cli import main; sys.exit(main(sys.argv[1:]))"


def _supervise(args, settings: Settings, count: int) -> int:
    from gateway.server import check_addresses, run_loop
    from gateway.workers import Supervisor

    settings = run_loop(check_addresses(settings))
    proxy, admin = settings.listeners.proxy, settings.listeners.admin
    # the parent's command line, then what every worker must agree on: the
    # addresses checked above (a port of 0 resolved) and one process each
    argv = [
        *args.argv,
        *("--host", proxy.host, "--port", str(proxy.port)),
        *("--admin-host", admin.host, "--admin-port", str(admin.port)),
        *("--workers", "1"),
    ]

    def command(slot: int) -> list[str]:
        return [sys.executable, "-c", _WORKER_MAIN, *argv, "--worker-slot", str(slot)]

    return asyncio.run(Supervisor(count, command).run())


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
        line = f"{r.outcome:5} {r.where}: {r.name}"
        first, *more = r.detail.splitlines() or [""]
        print(line + (f" -- {first}" if first else ""))
        # further problems of the same case, indented under it
        for extra in more:
            print(" " * 6 + extra)
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['ERROR']} errors")
    return 0 if counts["FAIL"] == counts["ERROR"] == 0 else 1


# ``gateway check`` exit codes, for CI gates: the answer may go out as it is (annotations
# included; a monitor-mode breach enforces nothing), the policies act on it, or no decision
CHECK_ALLOWED, CHECK_BREACH, CHECK_ERROR = 0, 1, 2


def cmd_check(args) -> int:
    """Print the decision as JSON; exit 0 allow/annotate, 1 a breach acted on, 2 an error."""
    from gateway.errors import BadRequest

    try:
        out = _check(args)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return CHECK_ERROR
    except OSError as exc:
        print(f"gateway check: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return CHECK_ERROR
    except (BadRequest, ValueError) as exc:
        print(f"gateway check: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return CHECK_ERROR
    if out is None:
        return CHECK_ERROR
    print(json.dumps(out, indent=2))
    return CHECK_ALLOWED if out["action"] in ("allow", "annotate") else CHECK_BREACH


def _check(args) -> dict | None:
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
            return None
        adapters = Adapters(settings.routes)
    else:
        paths = args.policies or ["policies"]
    sources = None
    if args.sources:
        try:
            sources = json.loads(Path(args.sources).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{args.sources}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}"
            ) from None
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
    return out


def cmd_gate(args) -> int:
    from gateway.gate.command import run_gate

    return run_gate(args)


def cmd_demo(args) -> int:
    from gateway.demo.tour import run_demo

    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
