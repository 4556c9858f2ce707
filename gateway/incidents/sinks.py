"""Sinks: each turns an incident event into its service's real wire format.

* PagerDuty Events API v2 (``/v2/enqueue``): ``trigger``, ``acknowledge`` and
  ``resolve`` with a ``dedup_key``, so PagerDuty folds repeats into one alert.
* Opsgenie Alert API: create with an ``alias`` (its dedup key), then
  acknowledge, close, notes and priority updates addressed by that alias.
* Slack incoming webhooks: one message per event, text plus blocks.
* A generic JSON webhook, signed with HMAC-SHA256 over ``timestamp.body``.

Credentials are read from the environment at send time and never appear in
logs, errors or the outbox (which stores our event, not the wire request).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from gateway.config import Sink
from gateway.errors import SinkCredentialMissing

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
OPSGENIE_URL = "https://api.opsgenie.com/v2/alerts"

PD_SEVERITY = {"SEV1": "critical", "SEV2": "error", "SEV3": "warning", "SEV4": "info"}
OG_PRIORITY = {"SEV1": "P1", "SEV2": "P2", "SEV3": "P3", "SEV4": "P4"}

# event kinds each service understands; others are not sent to it
HANDLES = {
    "pagerduty": {"trigger", "escalate", "acknowledge", "resolve"},
    "opsgenie": {"trigger", "escalate", "acknowledge", "contain", "restore", "note", "resolve"},
    "slack": {"trigger", "escalate", "acknowledge", "contain", "restore", "note", "resolve"},
    "webhook": {
        "trigger",
        "escalate",
        "acknowledge",
        "contain",
        "restore",
        "note",
        "resolve",
        "review_linked",
    },
}


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def _env(name: str | None) -> str:
    value = os.environ.get(name or "", "")
    if not value:
        raise SinkCredentialMissing(f"${name} is not set")
    return value


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


def sink_dedup_key(dedup_key: str) -> str:
    """PagerDuty caps ``dedup_key`` at 255 characters; long keys are hashed, stably."""
    if len(dedup_key) <= 255:
        return dedup_key
    return "gw-" + hashlib.sha256(dedup_key.encode()).hexdigest()


def handles(sink: Sink, event: str) -> bool:
    return event in HANDLES[sink.type]


def build_request(sink: Sink, event: dict[str, Any]) -> Request:
    """The HTTP request delivering ``event`` (an outbox payload) to ``sink``."""
    builder = {"pagerduty": pagerduty, "opsgenie": opsgenie, "slack": slack, "webhook": webhook}[
        sink.type
    ]
    return builder(sink, event)


def _summary(event: dict[str, Any]) -> str:
    inc = event["incident"]
    return f"[{inc['severity']}] {inc['title']}"


def _details(event: dict[str, Any]) -> dict[str, Any]:
    inc = event["incident"]
    return {
        "incident_id": inc["id"],
        "state": inc["state"],
        "source": inc["source"],
        "rule": inc.get("rule"),
        "route": inc.get("route"),
        "upstream": inc.get("upstream"),
        "policy": inc.get("policy"),
        "breach_count": inc.get("breach_count"),
        "requests": inc.get("requests"),
        "first_seen": _iso(inc["first_seen"]),
        "last_seen": _iso(inc["last_seen"]),
    }


# -- PagerDuty Events API v2 -----------------------------------------------------
def pagerduty(sink: Sink, event: dict[str, Any]) -> Request:
    inc = event["incident"]
    action = {
        "trigger": "trigger",
        "escalate": "trigger",
        "acknowledge": "acknowledge",
        "resolve": "resolve",
    }[event["event"]]
    body: dict[str, Any] = {
        "routing_key": _env(sink.secret_env),
        "event_action": action,
        "dedup_key": sink_dedup_key(inc["dedup_key"]),
    }
    if action == "trigger":
        # a repeated trigger with the same dedup_key updates the open alert
        body["payload"] = {
            "summary": _summary(event)[:1024],
            "source": inc.get("upstream") or inc.get("route") or "governance-gateway",
            "severity": PD_SEVERITY[inc["severity"]],
            "timestamp": _iso(event["ts"]),
            "component": inc.get("route") or "gateway",
            "group": inc.get("policy") or inc.get("rule") or inc["source"],
            "class": inc["source"],
            "custom_details": _details(event),
        }
        body["client"] = "governance-gateway"
        if event.get("url"):
            body["client_url"] = event["url"]
            body["links"] = [{"href": event["url"], "text": f"Incident {inc['id']}"}]
    url = sink.url or PAGERDUTY_URL
    return Request("POST", url, {"content-type": "application/json"}, _dumps(body))


# -- Opsgenie Alert API -----------------------------------------------------------------
def opsgenie(sink: Sink, event: dict[str, Any]) -> Request:
    inc = event["incident"]
    base = (sink.url or OPSGENIE_URL).rstrip("/")
    headers = {
        "content-type": "application/json",
        "authorization": f"GenieKey {_env(sink.secret_env)}",
    }
    alias = sink_dedup_key(inc["dedup_key"])
    target = f"{base}/{quote(alias, safe='')}"
    kind = event["event"]
    actor = event.get("actor") or "gateway"
    if kind == "trigger":
        body: dict[str, Any] = {
            "message": _summary(event)[:130],
            "alias": alias,
            "description": (event.get("message") or inc["title"])[:15000],
            "tags": [t for t in ("llm-governance", inc["source"], inc["severity"]) if t],
            "details": {k: str(v) for k, v in _details(event).items() if v is not None},
            "entity": inc.get("route") or "gateway",
            "source": "governance-gateway",
            "priority": OG_PRIORITY[inc["severity"]],
        }
        return Request("POST", base, headers, _dumps(body))
    if kind == "escalate":
        return Request(
            "PUT",
            f"{target}/priority?identifierType=alias",
            headers,
            _dumps({"priority": OG_PRIORITY[inc["severity"]]}),
        )
    if kind == "acknowledge":
        return Request(
            "POST",
            f"{target}/acknowledge?identifierType=alias",
            headers,
            _dumps(
                {
                    "user": actor,
                    "source": "governance-gateway",
                    "note": event.get("message") or "acknowledged",
                }
            ),
        )
    if kind == "resolve":
        return Request(
            "POST",
            f"{target}/close?identifierType=alias",
            headers,
            _dumps(
                {
                    "user": actor,
                    "source": "governance-gateway",
                    "note": event.get("message") or "resolved",
                }
            ),
        )
    return Request(
        "POST",
        f"{target}/notes?identifierType=alias",
        headers,
        _dumps(
            {
                "user": actor,
                "source": "governance-gateway",
                "note": (event.get("message") or kind)[:25000],
            }
        ),
    )


# -- Slack incoming webhook ---------------------------------------------------------------
def _mrkdwn(text: Any) -> str:
    # Slack's three control characters; everything else is literal
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


SLACK_VERB = {
    "trigger": "opened",
    "escalate": "escalated",
    "acknowledge": "acknowledged",
    "contain": "contained",
    "restore": "restored",
    "note": "note added",
    "resolve": "resolved",
}


def slack(sink: Sink, event: dict[str, Any]) -> Request:
    inc = event["incident"]
    url = sink.url or _env(sink.url_env)
    verb = SLACK_VERB.get(event["event"], event["event"])
    headline = f"{inc['severity']} incident {verb}: {inc['title']}"
    fields = [
        ("Severity", inc["severity"]),
        ("State", inc["state"]),
        ("Route", inc.get("route") or "-"),
        ("Upstream", inc.get("upstream") or "-"),
        ("Policy", inc.get("policy") or inc.get("rule") or "-"),
        ("Breaches", inc.get("breach_count", 0)),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline[:150]}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*{name}*\n{_mrkdwn(value)}"} for name, value in fields
            ],
        },
    ]
    if event.get("message"):
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _mrkdwn(event["message"])[:3000]},
            }
        )
    context = f"{inc['id']} · by {_mrkdwn(event.get('actor') or 'gateway')}"
    if event.get("url"):
        context += f" · <{event['url']}|open>"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    body = {"text": _mrkdwn(headline), "blocks": blocks}
    return Request("POST", url, {"content-type": "application/json"}, _dumps(body))


# -- generic JSON webhook, HMAC-signed ----------------------------------------------------
SIGNATURE_HEADER = "x-gateway-signature"
TIMESTAMP_HEADER = "x-gateway-timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256 over ``timestamp + "." + body``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def webhook(sink: Sink, event: dict[str, Any], now: float | None = None) -> Request:
    url = sink.url or _env(sink.url_env)
    secret = _env(sink.secret_env)
    body = _dumps(
        {
            "id": event["delivery_id"],
            "type": f"incident.{event['event']}",
            "created_at": _iso(event["ts"]),
            "actor": event.get("actor"),
            "message": event.get("message"),
            "url": event.get("url"),
            "incident": event["incident"],
        }
    )
    # the timestamp is when we sign, so receivers can bound replays
    stamp = str(int(now if now is not None else time.time()))
    headers = {
        "content-type": "application/json",
        "x-gateway-event": f"incident.{event['event']}",
        "x-gateway-delivery": event["delivery_id"],
        TIMESTAMP_HEADER: stamp,
        SIGNATURE_HEADER: sign(secret, stamp, body),
    }
    return Request("POST", url, headers, body)
