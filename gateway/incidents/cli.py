"""``gateway route contain|restore`` and ``gateway incident list|postmortem``.

These talk to a running gateway's admin API, so the switch takes effect at
once in the serving process and is recorded on the incident timeline. The
token comes from ``--token`` or ``$GATEWAY_ADMIN_TOKEN`` (or, with
``--config`` and no tokens configured, the generated ``<data_dir>/admin-token``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.admin_client import admin_args, call_admin, command_group, run_admin


def register(sub) -> None:
    route_sub = command_group(sub, "route", "contain, restore, promote or roll back a route")
    contain = route_sub.add_parser("contain", help="switch a route to a containment mode")
    contain.add_argument("route")
    contain.add_argument("--mode", required=True, choices=["fallback", "review_all", "block"])
    contain.add_argument("--incident", help="incident id to record the switch on")
    contain.add_argument("--reason", default="")
    admin_args(contain)
    contain.set_defaults(func=cmd_contain)
    restore = route_sub.add_parser("restore", help="lift a route's containment")
    restore.add_argument("route")
    restore.add_argument("--reason", default="")
    admin_args(restore)
    restore.set_defaults(func=cmd_restore)
    status = route_sub.add_parser("status", help="list contained routes")
    admin_args(status)
    status.set_defaults(func=cmd_status)

    incident = sub.add_parser("incident", help="list incidents and export post-mortems")
    inc_sub = incident.add_subparsers(dest="incident_command", metavar="ACTION")
    listing = inc_sub.add_parser("list", help="list incidents")
    listing.add_argument("--state")
    listing.add_argument("--severity")
    listing.add_argument("--route")
    listing.add_argument("--active", action="store_true", help="only unresolved incidents")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--limit", type=int, default=50)
    admin_args(listing)
    listing.set_defaults(func=cmd_list)
    post = inc_sub.add_parser("postmortem", help="export a Markdown post-mortem draft")
    post.add_argument("incident_id")
    post.add_argument("-o", "--output", help="write to this file instead of stdout")
    admin_args(post)
    post.set_defaults(func=cmd_postmortem)


def cmd_contain(args) -> int:
    def go() -> int:
        body: dict[str, Any] = {"mode": args.mode, "reason": args.reason}
        if args.incident:
            body["incident_id"] = args.incident
        out = call_admin(args, "POST", f"/governance/v1/routes/{args.route}/contain", body)
        c = out["containment"]
        print(f"route {c['route']} contained: {c['mode']} (by {c['actor']})")
        return 0

    return run_admin(go)


def cmd_restore(args) -> int:
    def go() -> int:
        out = call_admin(
            args, "POST", f"/governance/v1/routes/{args.route}/restore", {"reason": args.reason}
        )
        print(f"route {out['restored']['route']} restored (was {out['restored']['mode']})")
        return 0

    return run_admin(go)


def cmd_status(args) -> int:
    def go() -> int:
        out = call_admin(args, "GET", "/governance/v1/routes/containment")
        if not out["containment"]:
            print("no route is contained")
        for c in out["containment"]:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c["since"]))
            print(
                f"{c['route']}\t{c['mode']}\tsince {since} UTC\tby {c['actor']}\t"
                f"{c['incident_id'] or '-'}"
            )
        return 0

    return run_admin(go)


def cmd_list(args) -> int:
    def go() -> int:
        from urllib.parse import urlencode

        query = {
            k: v
            for k, v in (
                ("state", args.state),
                ("severity", args.severity),
                ("route", args.route),
                ("limit", args.limit),
            )
            if v
        }
        if args.active:
            query["active"] = "true"
        out = call_admin(args, "GET", f"/governance/v1/incidents?{urlencode(query)}")
        if args.json:
            print(json.dumps(out["incidents"], indent=2))
            return 0
        for inc in out["incidents"]:
            opened = time.strftime("%Y-%m-%d %H:%M", time.gmtime(inc["opened_at"]))
            print(
                f"{inc['id']}\t{inc['severity']}\t{inc['state']}\t{opened}\t"
                f"{inc['breach_count']}\t{inc['title']}"
            )
        return 0

    return run_admin(go)


def cmd_postmortem(args) -> int:
    def go() -> int:
        text = call_admin(
            args, "GET", f"/governance/v1/incidents/{args.incident_id}/postmortem", raw=True
        )
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
            print(f"wrote {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0

    return run_admin(go)
