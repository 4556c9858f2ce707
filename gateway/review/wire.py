"""Held responses in the client's protocol: complete bodies, placeholders, stream markers.

A streamed answer that is held never existed as one JSON body, yet a client
polling for the approved result wants exactly that. These helpers build a
body in the client's protocol from the adapter's own shapes, so approvals
look like an ordinary non-streamed answer.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from gateway.proxy.adapters import Adapter, RequestInfo, adapter_for
from gateway.proxy.adapters.anthropic import AnthropicAdapter
from gateway.proxy.adapters.base import dumps
from gateway.proxy.adapters.openai_chat import ChatAdapter, CompletionsAdapter
from gateway.proxy.adapters.openai_responses import ResponsesAdapter
from gateway.proxy.sse import encode_event

_BUILTIN: dict[str, Adapter] = {
    a.protocol: a
    for a in (ChatAdapter(), CompletionsAdapter(), ResponsesAdapter(), AnthropicAdapter())
}

# request headers never stored with a held item: credentials and session state
_SECRET_HEADERS = {
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "set-cookie",
    "openai-api-key",
    "anthropic-api-key",
}
_SECRET_WORDS = ("key", "token", "secret", "auth", "password", "signature", "credential")


def safe_headers(headers) -> dict[str, str]:
    out = {}
    for name, value in headers.items():
        low = name.lower()
        if low in _SECRET_HEADERS or any(w in low for w in _SECRET_WORDS):
            continue
        out[low] = value
    return out


def api_key_id(headers) -> str | None:
    """A stable id for the client's API key that does not reveal it."""
    raw = headers.get("x-api-key") or headers.get("api-key")
    if not raw:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        raw = value.strip() if scheme.lower() == "bearer" else ""
    if not raw:
        return None
    return "key_" + hashlib.sha256(b"gateway-review:" + raw.encode()).hexdigest()[:32]


def text_hash(texts: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for key in sorted(texts):
        digest.update(key.encode() + b"\0" + texts[key].encode() + b"\0")
    return digest.hexdigest()


def adapter_named(protocol: str, route_protocol: str | None, path: str, rag) -> Adapter | None:
    if protocol == "rag-json":
        return rag
    return _BUILTIN.get(protocol) or (
        adapter_for(route_protocol, path, rag) if route_protocol else None
    )


def complete(adapter: Adapter, body: dict[str, Any]) -> dict[str, Any]:
    """Mark a synthesized body as a normal, finished answer."""
    out = dict(body)
    if adapter.protocol in ("openai-chat", "openai-completions"):
        out["choices"] = [dict(c, finish_reason="stop") for c in out.get("choices") or []]
    elif adapter.protocol == "anthropic-messages":
        out["stop_reason"] = "end_turn"
    elif adapter.protocol == "openai-responses":
        out["status"] = "completed"
        out["incomplete_details"] = None
        out["output"] = [dict(o, status="completed") for o in out.get("output") or []]
    elif adapter.protocol == "rag-json":
        out.pop("finish_reason", None)
    return out


def synthesize(adapter: Adapter, info: RequestInfo, texts: dict[str, str]) -> dict[str, Any]:
    """A whole response body in the client's protocol carrying ``texts`` by segment."""
    if adapter.protocol == "anthropic-messages":
        body = adapter.blocked(info, None, "")
        body["content"] = [
            {"type": "text", "text": texts[k]} for k in sorted(texts, key=_key_order)
        ]
        return complete(adapter, body)
    if adapter.protocol in ("openai-chat", "openai-completions"):
        n = max([info.n, *[int(k) + 1 for k in texts if k.isdigit()]])
        info = RequestInfo(info.body, model=info.model, stream=False, query=info.query, n=n)
    body = adapter.blocked(info, None, "")
    if adapter.protocol == "openai-responses" and texts:
        # the placeholder has one part; the answer may have had several
        message = body["output"][0]
        message["content"] = [
            {"type": "output_text", "text": texts[k], "annotations": []}
            for k in sorted(texts, key=_key_order)
        ]
        return complete(adapter, body)
    return complete(adapter, adapter.rebuild(body, texts, None))


def with_texts(adapter: Adapter, body: dict[str, Any], texts: dict[str, str]) -> dict[str, Any]:
    """``body`` with some segments replaced (a reviewer's edit)."""
    if adapter.protocol == "openai-responses" and not any(
        k in texts for k in adapter_segments(adapter, body)
    ):
        return synthesize(adapter, RequestInfo({}, model=body.get("model")), texts)
    return adapter.rebuild(body, texts, None)


def adapter_segments(adapter: Adapter, body: dict[str, Any]) -> dict[str, str]:
    return dict(adapter.segments(body))


def _key_order(key: str):
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def stream_marker(protocol: str, review_id: str, result_path: str) -> bytes:
    """An event that names the review id, in a form the protocol's clients tolerate."""
    marker = {"review_id": review_id, "status": "pending", "result": result_path}
    if protocol in ("openai-chat", "openai-completions"):
        # an empty ``choices`` chunk, as the usage chunk is: SDKs pass it through
        obj: dict[str, Any] = {
            "object": "chat.completion.chunk" if protocol == "openai-chat" else "text_completion",
            "choices": [],
            "x_governance": marker,
        }
        return encode_event(dumps(obj))
    if protocol == "anthropic-messages":
        # clients skip ping events; the field rides along for those that look
        return encode_event(dumps({"type": "ping", "x_governance": marker}), "ping")
    if protocol == "rag-json":
        return encode_event(dumps({"x_governance": marker}))
    # the Responses API has no event a client ignores; the header has to do
    return b""


def tag_cut(protocol: str, data: bytes, review_id: str) -> bytes:
    """Name the review id inside the final event where the protocol has room for it.

    A Responses API response object carries ``metadata`` (a map of strings),
    so the closing ``response.incomplete`` gets ``governance_review_id``
    there; other protocols get their own marker event instead.
    """
    if protocol != "openai-responses":
        return data
    from gateway.proxy.sse import SSEParser

    out = []
    for ev in SSEParser().feed(data):
        try:
            obj = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            out.append(ev.encode())
            continue
        if isinstance(obj, dict) and isinstance(obj.get("response"), dict):
            response = dict(obj["response"])
            response["metadata"] = dict(
                response.get("metadata") or {}, governance_review_id=review_id
            )
            obj = dict(obj, response=response)
            out.append(encode_event(dumps(obj), ev.event, ev.id))
        else:
            out.append(ev.encode())
    return b"".join(out)
