"""The ``gateway`` commands that act on a running gateway through its admin API.

A command finds the admin listener from ``--admin-url``, else from
``--config`` (its admin listener), else ``http://127.0.0.1:8081``; its token
from ``--token`` or ``$GATEWAY_ADMIN_TOKEN``, or, with ``--config`` and no
tokens configured, the generated ``<data_dir>/admin-token``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import AdminApiError


def command_group(sub: argparse._SubParsersAction, name: str, help: str) -> Any:
    """The subcommands of ``gateway <name>``, made by whichever subsystem asks first.

    Several subsystems add actions to one command (``route``: containment and
    variants), in whatever order they are installed.
    """
    parser = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=help)
        parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def admin_args(parser: argparse.ArgumentParser) -> None:
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


def call_admin(
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


def run_admin(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except AdminApiError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
