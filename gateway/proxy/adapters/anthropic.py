"""Anthropic ``/v1/messages``.

Scanned: every ``text`` content block, each its own segment. ``tool_use``,
``thinking`` and other blocks pass through unscanned. A breach ends the
message with ``stop_reason: "refusal"``, the value Anthropic itself uses when
it declines to continue.
"""

from __future__ import annotations

from typing import Any

from gateway.contract.detector import ImagePart
from gateway.errors import GatewayError, UpstreamMalformed
from gateway.proxy.adapters.base import (
    Adapter,
    Done,
    End,
    Raw,
    RequestInfo,
    StreamTranslator,
    Text,
    dumps,
    gateway_id,
    key_order,
    last_user_text,
    loads_event,
)
from gateway.proxy.adapters.shapes import (
    body_list,
    event_object,
    index_of,
    malformed,
    opt_str,
    picked,
    request_flag,
    request_messages,
    request_model,
)
from gateway.proxy.sse import SSEEvent, encode_event
from gateway.records.review import Ticket

STOP_REASON = "refusal"


# Anthropic's error ``type`` for each HTTP status we answer with
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
}


# the usage of an answer the gateway wrote without an upstream's: every field
# the message schema requires, the counts zero and the optional details null
_NO_USAGE: dict[str, Any] = {
    "input_tokens": 0,
    "output_tokens": 0,
    "cache_creation": None,
    "cache_creation_input_tokens": None,
    "cache_read_input_tokens": None,
    "inference_geo": None,
    "output_tokens_details": None,
    "server_tool_use": None,
    "service_tier": None,
}


def anthropic_error(err: GatewayError) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(err.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": err.message, "code": err.code}}


def _text_blocks(body: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """Position and block of every ``text`` content block, each block checked."""
    out = []
    for i, block in enumerate(body_list(body, "content")):
        if type(block) is not dict:
            raise malformed(f"content[{i}]", "an object")
        kind = block.get("type")
        if type(kind) is not str:
            raise malformed(f"content[{i}].type", "a string")
        if kind == "text":
            if type(block.get("text")) is not str:
                raise malformed(f"content[{i}].text", "a string")
            out.append((i, block))
    return out


# the API version a client of ours asks for (``ask``)
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicAdapter(Adapter):
    protocol = "anthropic-messages"
    credential_header = "x-api-key"

    def ask(
        self, messages: list[dict[str, Any]], model: str, max_tokens: int
    ) -> tuple[str, dict[str, Any], dict[str, str]]:
        # Messages takes system prompts apart and needs max_tokens
        system = [str(m.get("content", "")) for m in messages if m.get("role") == "system"]
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "messages": [m for m in messages if m.get("role") != "system"],
        }
        if system:
            body["system"] = "\n\n".join(system)
        return "/v1/messages", body, {"anthropic-version": ANTHROPIC_VERSION}

    def error_body(self, err: GatewayError) -> dict[str, Any]:
        return anthropic_error(err)

    def request_info(self, body: dict[str, Any]) -> RequestInfo:
        return RequestInfo(
            body,
            model=request_model(body),
            stream=request_flag(body, "stream"),
            query=last_user_text(request_messages(body)),
        )

    def segments(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        return [(str(i), block["text"]) for i, block in _text_blocks(body)]

    def images(self, body: dict[str, Any]) -> list[tuple[str, ImagePart]]:
        """``image`` content blocks: a base64 ``source``, or a ``url`` one (never fetched)."""
        out: list[tuple[str, ImagePart]] = []
        for i, block in enumerate(body_list(body, "content")):
            if type(block) is not dict or block.get("type") != "image":
                continue
            source = block.get("source")
            where = f"content[{i}].source"
            if type(source) is not dict:
                raise malformed(where, "an object")
            if source.get("type") == "url" and type(source.get("url")) is str:
                out.append((f"image.{i}", ImagePart(where, url=source["url"])))
                continue
            if type(source.get("data")) is not str:
                raise malformed(f"{where}.data", "a base64 string")
            media = source.get("media_type")
            part = ImagePart(
                where, data=source["data"], media_type=media if type(media) is str else None
            )
            out.append((f"image.{i}", part))
        return out

    def rebuild(self, body: dict[str, Any], texts: dict[str, str], finish: str | None) -> dict:
        content = list(body_list(body, "content"))
        for i, block in _text_blocks(body):
            key = str(i)
            if key in texts:
                content[i] = dict(block, text=texts[key])
        out = dict(body, content=content)
        if finish:
            out["stop_reason"] = STOP_REASON
        return out

    def blocked(self, info: RequestInfo, upstream: dict[str, Any] | None, message: str) -> dict:
        # only well-typed fields of the upstream's answer are kept in ours
        base = upstream or {}
        return {
            "id": picked(base, "id", str) or gateway_id("msg_gw"),
            "type": "message",
            "role": "assistant",
            "model": picked(base, "model", str) or info.model or "unknown",
            "content": [{"type": "text", "text": message, "citations": None}],
            "stop_reason": STOP_REASON,
            "stop_sequence": None,
            # required by Anthropic's message schema, null when there is nothing to say
            "stop_details": None,
            "container": picked(base, "container", dict),
            "usage": picked(base, "usage", dict) or dict(_NO_USAGE),
        }

    def translator(self, info: RequestInfo) -> StreamTranslator:
        return AnthropicStream(info)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(body, stop_reason="end_turn")

    def synthesize(self, info: RequestInfo, texts: dict[str, str]) -> dict[str, Any]:
        body = self.blocked(info, None, "")
        body["content"] = [
            {"type": "text", "text": texts[k], "citations": None}
            for k in sorted(texts, key=key_order)
        ]
        return self.complete(body)

    def stream_answer(self, info: RequestInfo, message: str, decision_id: str) -> bytes:
        whole = self.blocked(info, None, message)
        events: list[dict[str, Any]] = [
            {"type": "message_start", "message": dict(whole, content=[], stop_reason=None)},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": message},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": whole["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": 0},
            },
            {"type": "message_stop"},
        ]
        return b"".join(encode_event(dumps(e), e["type"]) for e in events)


class AnthropicStream(StreamTranslator):
    def __init__(self, info: RequestInfo):
        super().__init__(info)
        self.text_blocks: set[str] = set()
        # blocks whose start the client has seen and whose stop it has not:
        # parsing runs ahead of sending, so this is tracked as events go out
        self.open_blocks: list[str] = []

    def parse(self, ev: SSEEvent) -> list[Any]:
        obj = event_object(loads_event(ev))
        kind = obj.get("type")
        if type(kind) is not str:
            raise malformed("type", "a string")
        name = ev.event or kind
        if kind == "content_block_start":
            key = str(index_of(obj.get("index"), "index", 0))
            block = obj.get("content_block")
            if type(block) is not dict:
                raise malformed("content_block", "an object")
            block_type = block.get("type")
            if type(block_type) is not str:
                raise malformed("content_block.type", "a string")
            if block_type != "text":
                self.text_blocks.discard(key)
                return [Raw(key, obj, name)]
            self.text_blocks.add(key)
            first = opt_str(block.get("text"), "content_block.text")
            items: list[Any] = [
                Raw(key, dict(obj, content_block=dict(block, text="")), name, lead=True)
            ]
            if first:
                items.append(Text(key, first))
            return items
        if kind == "content_block_delta":
            key = str(index_of(obj.get("index"), "index", 0))
            delta = obj.get("delta")
            if type(delta) is not dict:
                raise malformed("delta", "an object")
            delta_type = delta.get("type")
            if type(delta_type) is not str:
                raise malformed("delta.type", "a string")
            if delta_type == "text_delta":
                if key not in self.text_blocks:
                    # text nobody started a text block for would go out unscanned
                    raise UpstreamMalformed(
                        f"upstream sent a text_delta for content block {key}, "
                        "which is not a text block"
                    )
                return [Text(key, opt_str(delta.get("text"), "delta.text") or "")]
            return [Raw(key, obj, name)]
        if kind == "content_block_stop":
            key = str(index_of(obj.get("index"), "index", 0))
            if key in self.text_blocks:
                return [End(key, obj, name)]
            return [Raw(key, obj, name)]
        if kind == "message_stop":
            return [Done(obj, name)]
        return [Raw(None, obj, name, lead=kind in ("message_start", "ping"))]

    def render(self, item, released: dict[str, str]) -> bytes:
        payload = item.payload
        # block events carry the block's key, checked by ``parse``
        key = item.key if isinstance(item, Raw | End) else None
        if key is not None and isinstance(payload, dict):
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

    def cut(
        self, open_keys: list[str], reason: str, decision_id: str, ticket: Ticket | None = None
    ) -> bytes:
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

    def review_marker(self, ticket: Ticket) -> bytes:
        # clients skip ping events; the field rides along for those that look
        return encode_event(dumps({"type": "ping", "x_governance": ticket.marker()}), "ping")

    def error(self, err: GatewayError) -> bytes:
        return encode_event(dumps(anthropic_error(err)), "error")
