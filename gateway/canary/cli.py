"""``gateway route promote|rollback|reset|variants``, through a running gateway's admin API."""

from __future__ import annotations

import argparse
import time
from typing import Any

from gateway.admin_client import admin_args, call_admin, command_group, run_admin

API = "/governance/v1/routes"


def register(sub: argparse._SubParsersAction) -> None:
    route_sub = command_group(sub, "route", "contain, restore, promote or roll back a route")
    promote = route_sub.add_parser("promote", help="give one variant all of a route's traffic")
    promote.add_argument("route")
    promote.add_argument("--variant", help="default: the route's only candidate")
    promote.add_argument("--reason", default="")
    admin_args(promote)
    promote.set_defaults(func=cmd_act, action="promote")
    rollback = route_sub.add_parser("rollback", help="give a route's variants no more traffic")
    rollback.add_argument("route")
    rollback.add_argument("--variant", help="default: every variant but the baseline")
    rollback.add_argument("--reason", default="")
    admin_args(rollback)
    rollback.set_defaults(func=cmd_act, action="rollback")
    reset = route_sub.add_parser("reset", help="serve a route's configured variant weights again")
    reset.add_argument("route")
    reset.add_argument("--reason", default="")
    admin_args(reset)
    reset.set_defaults(func=cmd_act, action="reset", variant=None)
    variants = route_sub.add_parser("variants", help="weights in force and figures per variant")
    variants.add_argument("route", nargs="?", help="default: every route with variants")
    admin_args(variants)
    variants.set_defaults(func=cmd_variants)


def _weights(weights: dict[str, float]) -> str:
    return ", ".join(f"{name} {weight:g}" for name, weight in weights.items())


def cmd_act(args: Any) -> int:
    def go() -> int:
        body: dict[str, Any] = {"reason": args.reason}
        if args.variant is not None:
            body["variant"] = args.variant
        out = call_admin(args, "POST", f"{API}/{args.route}/{args.action}", body)["weights"]
        print(f"route {out['route']}: {_weights(out['weights'])} (by {out['actor']})")
        return 0

    return run_admin(go)


def cmd_variants(args: Any) -> int:
    def go() -> int:
        if args.route:
            routes = [call_admin(args, "GET", f"{API}/{args.route}/variants")]
        else:
            routes = call_admin(args, "GET", f"{API}/variants")["routes"]
        if not routes:
            print("no route splits its traffic")
        for status in routes:
            override = status["override"]
            since = (
                time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(override["since"]))
                if override
                else "configured"
            )
            print(f"{status['route']}: {_weights(status['weights'])} ({since})")
            if override:
                print(f"  set by {override['actor']}: {override['reason']}")
            for name, f in status["figures"].items():
                print(
                    f"  {name}: {f['answers']} answers, breach rate {f['breach_rate']:.1%}, "
                    f"error rate {f['error_rate']:.1%}, {f['latency_ms']:.1f} ms"
                )
        return 0

    return run_admin(go)
