"""OpenAI ``/v1/responses``.

Scanned: every ``output_text`` part of every ``message`` output item, each
its own segment keyed ``item.part``. Function calls, reasoning items and
other output types pass through unscanned. The closing events that repeat
the text (``output_text.done``, ``content_part.done``, ``output_item.done``,
``response.completed``) are rewritten to carry the text as released. A
breach ends the stream with ``response.incomplete`` and
``incomplete_details.reason = "content_filter"``.
"""

from __future__ import annotations

import copy
from typing import Any

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
    loads_event,
    now,
    text_of_content,
)
from gateway.proxy.sse import SSEEvent, encode_event
from gateway.records.review import Ticket

FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")
LEAD_EVENTS = (
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
)


def _query(body: dict[str, Any]) -> str | None:
    data = body.get("input")
    if isinstance(data, str):
        return data
    if isinstance(data, list):
        for item in reversed(data):
            if isinstance(item, dict) and item.get("role", "user") == "user":
                text = text_of_content(item.get("content"))
                if text:
                    return text
    return None


def _text_parts(output: Any):
    for i, item in enumerate(output or []):
        if isinstance(item, dict) and item.get("type") == "message":
            for j, part in enumerate(item.get("content") or []):
                if isinstance(part, dict) and part.get("type") == "output_text":
                    yield f"{i}.{j}", part


def _with_texts(response: dict[str, Any], texts: dict[str, str]) -> dict[str, Any]:
    out = copy.deepcopy(response)
    for key, part in _text_parts(out.get("output")):
        if key in texts:
            part["text"] = texts[key]
    return out


class ResponsesAdapter(Adapter):
    protocol = "openai-responses"

    def request_info(self, body: dict[str, Any]) -> RequestInfo:
        return RequestInfo(
            body, model=body.get("model"), stream=bool(body.get("stream")), query=_query(body)
        )

    def segments(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        return [(key, part.get("text") or "") for key, part in _text_parts(body.get("output"))]

    def rebuild(self, body: dict[str, Any], texts: dict[str, str], finish: str | None) -> dict:
        out = _with_texts(body, texts)
        if finish:
            out["status"] = "incomplete"
            out["incomplete_details"] = {"reason": finish}
        return out

    def blocked(self, info: RequestInfo, upstream: dict[str, Any] | None, message: str) -> dict:
        base = upstream or {}
        return {
            "id": base.get("id") or gateway_id("resp_gw"),
            "object": "response",
            "created_at": base.get("created_at") or now(),
            "model": base.get("model") or info.model or "unknown",
            "status": "incomplete",
            "incomplete_details": {"reason": "content_filter"},
            "error": None,
            "output": [
                {
                    "type": "message",
                    "id": gateway_id("msg_gw"),
                    "status": "incomplete",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": message, "annotations": []}],
                }
            ],
            "parallel_tool_calls": base.get("parallel_tool_calls", True),
            "tool_choice": base.get("tool_choice", "auto"),
            "tools": base.get("tools", []),
            "usage": base.get("usage"),
        }

    def translator(self, info: RequestInfo) -> StreamTranslator:
        return ResponsesStream(info, self)

    def held(
        self, info: RequestInfo, upstream: dict[str, Any] | None, message: str, ticket: Ticket
    ) -> dict[str, Any]:
        body = super().held(info, upstream, message, ticket)
        # a response object's ``metadata`` is a map of strings the SDKs keep
        body["metadata"] = dict(body.get("metadata") or {}, governance_review_id=ticket.review_id)
        return body

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        out = dict(body, status="completed", incomplete_details=None)
        out["output"] = [dict(o, status="completed") for o in body.get("output") or []]
        return out

    def synthesize(self, info: RequestInfo, texts: dict[str, str]) -> dict[str, Any]:
        body = self.blocked(info, None, "")
        if texts:
            # the placeholder has one part; the answer may have had several
            body["output"][0]["content"] = [
                {"type": "output_text", "text": texts[k], "annotations": []}
                for k in sorted(texts, key=key_order)
            ]
        return self.complete(body)

    def with_texts(
        self, info: RequestInfo, body: dict[str, Any] | None, texts: dict[str, str]
    ) -> dict[str, Any]:
        if body is None:
            return self.synthesize(info, texts)
        if not any(k in texts for k, _ in self.segments(body)):
            return self.synthesize(RequestInfo({}, model=body.get("model") or info.model), texts)
        return self.rebuild(body, texts, None)


class ResponsesStream(StreamTranslator):
    def __init__(self, info: RequestInfo, adapter: ResponsesAdapter):
        super().__init__(info)
        self.adapter = adapter
        self.sequence = 0
        self.response: dict[str, Any] | None = None
        self.item_ids: dict[str, str] = {}

    def parse(self, ev: SSEEvent) -> list[Any]:
        obj = loads_event(ev)
        if not isinstance(obj, dict):
            return [Raw(None, obj, ev.event)]
        kind = obj.get("type")
        name = ev.event or kind
        if kind in ("response.created", "response.in_progress") and isinstance(
            obj.get("response"), dict
        ):
            self.response = obj["response"]
        if kind == "response.output_text.delta":
            key = f"{obj.get('output_index', 0)}.{obj.get('content_index', 0)}"
            self.item_ids[key] = obj.get("item_id", "")
            return [Text(key, obj.get("delta") or "")]
        if kind == "response.output_text.done":
            key = f"{obj.get('output_index', 0)}.{obj.get('content_index', 0)}"
            return [End(key, obj, name)]
        if kind == "response.content_part.done":
            key = f"{obj.get('output_index', 0)}.{obj.get('content_index', 0)}"
            return [Raw(key, obj, name)]
        if kind in FINAL_EVENTS:
            return [Done(obj, name)]
        return [Raw(None, obj, name, lead=kind in LEAD_EVENTS)]

    def _emit(self, payload: dict[str, Any], name: str | None) -> bytes:
        if "sequence_number" in payload or self.sequence:
            payload = dict(payload, sequence_number=self.sequence)
            self.sequence += 1
        return encode_event(dumps(payload), name or payload.get("type"))

    def render_text(self, key: str, text: str) -> bytes:
        output_index, content_index = (int(x) for x in key.split("."))
        payload = {
            "type": "response.output_text.delta",
            "item_id": self.item_ids.get(key, ""),
            "output_index": output_index,
            "content_index": content_index,
            "delta": text,
            "logprobs": [],
            "sequence_number": 0,
        }
        return self._emit(payload, "response.output_text.delta")

    def render(self, item: Raw | End | Done, released: dict[str, str]) -> bytes:
        payload = item.payload
        if not isinstance(payload, dict):
            return super().render(item, released)
        kind = payload.get("type")
        if kind == "response.output_text.done":
            key = f"{payload.get('output_index', 0)}.{payload.get('content_index', 0)}"
            payload = dict(payload, text=released.get(key, payload.get("text", "")))
        elif kind == "response.content_part.done" and isinstance(payload.get("part"), dict):
            key = f"{payload.get('output_index', 0)}.{payload.get('content_index', 0)}"
            if payload["part"].get("type") == "output_text" and key in released:
                payload = dict(payload, part=dict(payload["part"], text=released[key]))
        elif kind == "response.output_item.done" and isinstance(payload.get("item"), dict):
            index = payload.get("output_index", 0)
            texts = {
                k.split(".", 1)[1]: v
                for k, v in released.items()
                if k.split(".", 1)[0] == str(index)
            }
            item_copy = copy.deepcopy(payload["item"])
            for j, part in enumerate(item_copy.get("content") or []):
                if isinstance(part, dict) and part.get("type") == "output_text" and str(j) in texts:
                    part["text"] = texts[str(j)]
            payload = dict(payload, item=item_copy)
        elif kind in FINAL_EVENTS and isinstance(payload.get("response"), dict):
            payload = dict(payload, response=_with_texts(payload["response"], released))
        return self._emit(payload, item.event)

    def cut(
        self, open_keys: list[str], reason: str, decision_id: str, ticket: Ticket | None = None
    ) -> bytes:
        response = dict(
            self.response
            or {
                "id": gateway_id("resp_gw"),
                "object": "response",
                "created_at": now(),
                "model": self.info.model,
            }
        )
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": reason}
        if ticket is not None:
            # the Responses API has no event a client skips: the review id rides
            # in the final response object's metadata instead of a marker
            response["metadata"] = dict(
                response.get("metadata") or {}, governance_review_id=ticket.review_id
            )
        payload = {"type": "response.incomplete", "response": response, "sequence_number": 0}
        return self._emit(payload, "response.incomplete")
