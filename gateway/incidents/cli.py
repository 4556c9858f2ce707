"""``gateway route contain|restore`` and ``gateway incident list|postmortem``.

These talk to a running gateway's admin API, so the switch takes effect at
once in the serving process and is recorded on the incident timeline. The
token comes from ``--token`` or ``$GATEWAY_ADMIN_TOKEN`` (or, with
``--config`` and no tokens configured, the generated ``<data_dir>/admin-token``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.errors import AdminApiError


def register(sub) -> None:
    route = sub.add_parser("route", help="contain or restore a route")
    route_sub = route.add_subparsers(dest="route_command", metavar="ACTION")
    contain = route_sub.add_parser("contain", help="switch a route to a containment mode")
    contain.add_argument("route")
    contain.add_argument("--mode", required=True, choices=["fallback", "review_all", "block"])
    contain.add_argument("--incident", help="incident id to record the switch on")
    contain.add_argument("--reason", default="")
    _admin_args(contain)
    contain.set_defaults(func=cmd_contain)
    restore = route_sub.add_parser("restore", help="lift a route's containment")
    restore.add_argument("route")
    restore.add_argument("--reason", default="")
    _admin_args(restore)
    restore.set_defaults(func=cmd_restore)
    status = route_sub.add_parser("status", help="list contained routes")
    _admin_args(status)
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
    _admin_args(listing)
    listing.set_defaults(func=cmd_list)
    post = inc_sub.add_parser("postmortem", help="export a Markdown post-mortem draft")
    post.add_argument("incident_id")
    post.add_argument("-o", "--output", help="write to this file instead of stdout")
    _admin_args(post)
    post.set_defaults(func=cmd_postmortem)


def _admin_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin-url",
        help="admin listener URL (default: from --config, else http://127.0.0.1:8081)",
    )
    parser.add_argument("--config", help="gateway.yaml, to find the admin listener and token")
    parser.add_argument("--token", help="bearer token (default: $GATEWAY_ADMIN_TOKEN)")


def _target(args) -> tuple[str, str]:
    url = args.admin_url
    token = args.token or os.environ.get("GATEWAY_ADMIN_TOKEN")
    if args.config:
        from gateway.config import load_settings

        settings = load_settings(args.config)
        admin = settings.listeners.admin
        host = "127.0.0.1" if admin.host in ("0.0.0.0", "::") else admin.host
        url = url or f"http://{host}:{admin.port}"
        generated = Path(settings.data_dir) / "admin-token"
        if not token and not settings.auth.tokens and generated.exists():
            token = generated.read_text().strip()
    if not token:
        raise AdminApiError("no token: pass --token or set GATEWAY_ADMIN_TOKEN")
    return (url or "http://127.0.0.1:8081").rstrip("/"), token


def _call(
    args, method: str, path: str, body: dict[str, Any] | None = None, raw: bool = False
) -> Any:
    url, token = _target(args)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method)
    request.add_header("authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            payload = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        raise AdminApiError(f"{exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise AdminApiError(f"cannot reach the admin API at {url}: {exc.reason}") from None
    return payload.decode("utf-8") if raw else json.loads(payload)


def _run(fn) -> int:
    try:
        return fn()
    except AdminApiError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1


def cmd_contain(args) -> int:
    def go() -> int:
        body: dict[str, Any] = {"mode": args.mode, "reason": args.reason}
        if args.incident:
            body["incident_id"] = args.incident
        out = _call(args, "POST", f"/governance/v1/routes/{args.route}/contain", body)
        c = out["containment"]
        print(f"route {c['route']} contained: {c['mode']} (by {c['actor']})")
        return 0

    return _run(go)


def cmd_restore(args) -> int:
    def go() -> int:
        out = _call(
            args, "POST", f"/governance/v1/routes/{args.route}/restore", {"reason": args.reason}
        )
        print(f"route {out['restored']['route']} restored (was {out['restored']['mode']})")
        return 0

    return _run(go)


def cmd_status(args) -> int:
    def go() -> int:
        out = _call(args, "GET", "/governance/v1/routes/containment")
        if not out["containment"]:
            print("no route is contained")
        for c in out["containment"]:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c["since"]))
            print(
                f"{c['route']}\t{c['mode']}\tsince {since} UTC\tby {c['actor']}\t"
                f"{c['incident_id'] or '-'}"
            )
        return 0

    return _run(go)


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
        out = _call(args, "GET", f"/governance/v1/incidents?{urlencode(query)}")
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

    return _run(go)


def cmd_postmortem(args) -> int:
    def go() -> int:
        text = _call(
            args, "GET", f"/governance/v1/incidents/{args.incident_id}/postmortem", raw=True
        )
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
            print(f"wrote {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0

    return _run(go)
