"""Anthropic ``/v1/messages``.

Scanned: every ``text`` content block, each its own segment. ``tool_use``,
``thinking`` and other blocks pass through unscanned. A breach ends the
message with ``stop_reason: "refusal"``, the value Anthropic itself uses when
it declines to continue.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError
from gateway.proxy.adapters.base import (
    Adapter,
    Done,
    End,
    Raw,
    RequestInfo,
    StreamTranslator,
    Text,
    anthropic_error,
    dumps,
    gateway_id,
    last_user_text,
    loads_event,
)
from gateway.proxy.sse import SSEEvent, encode_event

STOP_REASON = "refusal"


class AnthropicAdapter(Adapter):
    protocol = "anthropic-messages"
    error_style = "anthropic"

    def request_info(self, body: dict[str, Any]) -> RequestInfo:
        return RequestInfo(
            body,
            model=body.get("model"),
            stream=bool(body.get("stream")),
            query=last_user_text(body.get("messages")),
        )

    def segments(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        return [
            (str(i), block.get("text", ""))
            for i, block in enumerate(body.get("content") or [])
            if isinstance(block, dict) and block.get("type") == "text"
        ]

    def rebuild(self, body: dict[str, Any], texts: dict[str, str], finish: str | None) -> dict:
        out = dict(body)
        out["content"] = [
            dict(block, text=texts[str(i)]) if str(i) in texts else block
            for i, block in enumerate(body.get("content") or [])
        ]
        if finish:
            out["stop_reason"] = STOP_REASON
        return out

    def blocked(self, info: RequestInfo, upstream: dict[str, Any] | None, message: str) -> dict:
        base = upstream or {}
        return {
            "id": base.get("id") or gateway_id("msg_gw"),
            "type": "message",
            "role": "assistant",
            "model": base.get("model") or info.model or "unknown",
            "content": [{"type": "text", "text": message}],
            "stop_reason": STOP_REASON,
            "stop_sequence": None,
            "usage": base.get("usage") or {"input_tokens": 0, "output_tokens": 0},
        }

    def translator(self, info: RequestInfo) -> StreamTranslator:
        return AnthropicStream(info)


class AnthropicStream(StreamTranslator):
    def __init__(self, info: RequestInfo):
        super().__init__(info)
        self.text_blocks: set[str] = set()
        # blocks whose start the client has seen and whose stop it has not:
        # parsing runs ahead of sending, so this is tracked as events go out
        self.open_blocks: list[str] = []

    def parse(self, ev: SSEEvent) -> list[Any]:
        obj = loads_event(ev)
        kind = obj.get("type") if isinstance(obj, dict) else None
        name = ev.event or kind
        if kind == "content_block_start":
            key = str(obj.get("index", 0))
            block = obj.get("content_block") or {}
            if block.get("type") != "text":
                return [Raw(key, obj, name)]
            self.text_blocks.add(key)
            first = block.get("text") or ""
            items: list[Any] = [
                Raw(key, dict(obj, content_block=dict(block, text="")), name, lead=True)
            ]
            if first:
                items.append(Text(key, first))
            return items
        if kind == "content_block_delta":
            key = str(obj.get("index", 0))
            delta = obj.get("delta") or {}
            if delta.get("type") == "text_delta" and key in self.text_blocks:
                return [Text(key, delta.get("text") or "")]
            return [Raw(key, obj, name)]
        if kind == "content_block_stop":
            key = str(obj.get("index", 0))
            if key in self.text_blocks:
                return [End(key, obj, name)]
            return [Raw(key, obj, name)]
        if kind == "message_stop":
            return [Done(obj, name)]
        return [Raw(None, obj, name, lead=kind in ("message_start", "ping"))]

    def render(self, item, released: dict[str, str]) -> bytes:
        payload = item.payload
        if isinstance(payload, dict):
            key = str(payload.get("index", 0))
            if payload.get("type") == "content_block_start":
                self.open_blocks.append(key)
            elif payload.get("type") == "content_block_stop" and key in self.open_blocks:
                self.open_blocks.remove(key)
        return super().render(item, released)

    def render_text(self, key: str, text: str) -> bytes:
        payload = {
            "type": "content_block_delta",
            "index": int(key),
            "delta": {"type": "text_delta", "text": text},
        }
        return encode_event(dumps(payload), "content_block_delta")

    def cut(self, open_keys: list[str], reason: str, decision_id: str) -> bytes:
        out = [
            encode_event(
                dumps({"type": "content_block_stop", "index": int(k)}), "content_block_stop"
            )
            for k in self.open_blocks
        ]
        self.open_blocks = []
        out.append(
            encode_event(
                dumps(
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": STOP_REASON, "stop_sequence": None},
                        "usage": {"output_tokens": 0},
                    }
                ),
                "message_delta",
            )
        )
        out.append(encode_event(dumps({"type": "message_stop"}), "message_stop"))
        return b"".join(out)

    def error(self, err: GatewayError) -> bytes:
        return encode_event(dumps(anthropic_error(err)), "error")
