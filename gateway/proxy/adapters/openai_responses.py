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

from collections.abc import Iterator
from typing import Any

from gateway.contract.detector import ImagePart
from gateway.proxy.adapters.base import (
    Adapter,
    Done,
    End,
    Picture,
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
from gateway.proxy.adapters.shapes import (
    body_list,
    event_object,
    index_of,
    invalid,
    malformed,
    opt_dict,
    opt_list,
    opt_str,
    picked,
    request_flag,
    request_messages,
    request_model,
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
    if data is None or type(data) is str:
        return data
    if type(data) is not list:
        raise invalid("input", "a string or a list of items", data)
    for item in reversed(request_messages(body, "input") or []):
        if item.get("role", "user") == "user":
            text = text_of_content(item.get("content"))
            if text:
                return text
    return None


def _text_parts(output: list[Any], name: str = "output") -> Iterator[tuple[int, int, dict]]:
    """Position, part position and part of every ``output_text`` part, each item checked."""
    for i, item in enumerate(output):
        for j, part in _message_parts(item, f"{name}[{i}]"):
            yield i, j, part


def _message_parts(item: Any, name: str) -> Iterator[tuple[int, dict]]:
    """The ``output_text`` parts of one output item (none unless it is a message)."""
    if type(item) is not dict:
        raise malformed(name, "an object")
    kind = item.get("type")
    if type(kind) is not str:
        raise malformed(f"{name}.type", "a string")
    if kind != "message":
        return
    content = item.get("content")
    if content is None:
        return
    if type(content) is not list:
        raise malformed(f"{name}.content", "a list")
    for j, part in enumerate(content):
        if type(part) is not dict:
            raise malformed(f"{name}.content[{j}]", "an object")
        if part.get("type") == "output_text":
            if type(part.get("text")) is not str:
                raise malformed(f"{name}.content[{j}].text", "a string")
            yield j, part


def _with_texts(response: dict[str, Any], texts: dict[str, str]) -> dict[str, Any]:
    """A copy of ``response`` whose ``output_text`` parts carry ``texts``.

    Only the items and parts that change are copied: the rest is shared with
    ``response``, which is never modified.
    """
    output = response.get("output")
    if type(output) is not list:
        return dict(response)
    new_output = list(output)
    copied: set[int] = set()
    for i, j, part in _text_parts(output):
        key = f"{i}.{j}"
        if key not in texts:
            continue
        if i not in copied:
            copied.add(i)
            new_output[i] = dict(output[i], content=list(output[i]["content"]))
        new_output[i]["content"][j] = dict(part, text=texts[key])
    return dict(response, output=new_output)


def _text_part(text: str) -> dict[str, Any]:
    # ``annotations`` and ``logprobs`` are required by the schema, even empty
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _number(base: dict[str, Any], field: str) -> int | float | None:
    value = base.get(field)
    return value if type(value) in (int, float) else None


class ResponsesAdapter(Adapter):
    protocol = "openai-responses"

    def request_info(self, body: dict[str, Any]) -> RequestInfo:
        return RequestInfo(
            body,
            model=request_model(body),
            stream=request_flag(body, "stream"),
            query=_query(body),
        )

    def segments(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        return [(f"{i}.{j}", part["text"]) for i, j, part in _text_parts(body_list(body, "output"))]

    def images(self, body: dict[str, Any]) -> list[tuple[str, ImagePart]]:
        """The ``result`` (base64) of each ``image_generation_call`` output item."""
        out: list[tuple[str, ImagePart]] = []
        for i, item in enumerate(body_list(body, "output")):
            if type(item) is not dict or item.get("type") != "image_generation_call":
                continue
            data = opt_str(item.get("result"), f"output[{i}].result")
            if data is not None:
                where = f"output[{i}].result"
                fmt = item.get("output_format")
                media = f"image/{fmt}" if type(fmt) is str else None
                out.append((f"image.{i}", ImagePart(where, data=data, media_type=media)))
        return out

    def rebuild(self, body: dict[str, Any], texts: dict[str, str], finish: str | None) -> dict:
        body_list(body, "output")
        out = _with_texts(body, texts)
        if finish:
            out["status"] = "incomplete"
            out["incomplete_details"] = {"reason": finish}
        return out

    def blocked(self, info: RequestInfo, upstream: dict[str, Any] | None, message: str) -> dict:
        # only well-typed fields of the upstream's answer are kept in ours
        base = upstream or {}
        parallel = picked(base, "parallel_tool_calls", bool)
        body: dict[str, Any] = {
            "id": picked(base, "id", str) or gateway_id("resp_gw"),
            "object": "response",
            "created_at": picked(base, "created_at", int) or now(),
            "model": picked(base, "model", str) or info.model or "unknown",
            "status": "incomplete",
            "incomplete_details": {"reason": "content_filter"},
            "error": None,
            "output": [
                {
                    "type": "message",
                    "id": gateway_id("msg_gw"),
                    "status": "incomplete",
                    "role": "assistant",
                    "content": [_text_part(message)],
                }
            ],
            "parallel_tool_calls": True if parallel is None else parallel,
            "tool_choice": picked(base, "tool_choice", str)
            or picked(base, "tool_choice", dict)
            or "auto",
            "tools": picked(base, "tools", list) or [],
            # required by OpenAI's response schema, each nullable but never absent
            "instructions": picked(base, "instructions", str),
            "metadata": picked(base, "metadata", dict) or {},
            "temperature": _number(base, "temperature"),
            "top_p": _number(base, "top_p"),
        }
        # optional, but an object when present
        usage = picked(base, "usage", dict)
        if usage is not None:
            body["usage"] = usage
        return body

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
        output = body_list(body, "output")
        for i, item in enumerate(output):
            if type(item) is not dict:
                raise malformed(f"output[{i}]", "an object")
        out = dict(body, status="completed", incomplete_details=None)
        out["output"] = [dict(o, status="completed") for o in output]
        return out

    def synthesize(self, info: RequestInfo, texts: dict[str, str]) -> dict[str, Any]:
        body = self.blocked(info, None, "")
        if texts:
            # the placeholder has one part; the answer may have had several
            body["output"][0]["content"] = [
                _text_part(texts[k]) for k in sorted(texts, key=key_order)
            ]
        return self.complete(body)

    def with_texts(
        self, info: RequestInfo, body: dict[str, Any] | None, texts: dict[str, str]
    ) -> dict[str, Any]:
        if body is None:
            return self.synthesize(info, texts)
        if not any(k in texts for k, _ in self.segments(body)):
            model = picked(body, "model", str) or info.model
            return self.synthesize(RequestInfo({}, model=model), texts)
        return self.rebuild(body, texts, None)


class ResponsesStream(StreamTranslator):
    # image_generation_call results, partial and final, are checked before they leave
    reads_images = True

    def __init__(self, info: RequestInfo, adapter: ResponsesAdapter):
        super().__init__(info)
        self.adapter = adapter
        self.sequence = 0
        self.response: dict[str, Any] | None = None
        self.item_ids: dict[str, str] = {}
        # output positions whose final image was already checked
        self.pictured: set[int] = set()

    def parse(self, ev: SSEEvent) -> list[Any]:
        obj = event_object(loads_event(ev))
        kind = obj.get("type")
        if type(kind) is not str:
            raise malformed("type", "a string")
        name = ev.event or kind
        if kind in ("response.created", "response.in_progress"):
            response = opt_dict(obj.get("response"), "response")
            if response is not None:
                self.response = response
        elif kind == "response.output_text.delta":
            key = self._key(obj)
            self.item_ids[key] = opt_str(obj.get("item_id"), "item_id") or ""
            return [Text(key, opt_str(obj.get("delta"), "delta") or "")]
        elif kind == "response.output_text.done":
            key = self._key(obj)
            opt_str(obj.get("text"), "text")
            return [End(key, obj, name)]
        elif kind == "response.content_part.done":
            key = self._key(obj)
            opt_dict(obj.get("part"), "part")
            return [Raw(key, obj, name)]
        elif kind == "response.image_generation_call.partial_image":
            # a partial image is a lower-fidelity copy of the final one: checked too
            index = index_of(obj.get("output_index"), "output_index", 0)
            n = index_of(obj.get("partial_image_index"), "partial_image_index", 0)
            data = opt_str(obj.get("partial_image_b64"), "partial_image_b64")
            if data is not None:
                part = ImagePart("partial_image_b64", data=data)
                return [Picture(f"image.{index}.partial.{n}", part), Raw(None, obj, name)]
        elif kind == "response.output_item.done":
            # rewritten with the released text when it goes out
            index = index_of(obj.get("output_index"), "output_index", 0)
            item = opt_dict(obj.get("item"), "item")
            if item is not None:
                for _ in _message_parts(item, "item"):
                    pass
                pictures = self._pictures([(index, item)], "item.result")
                if pictures:
                    return [*pictures, Raw(None, obj, name)]
        elif kind in FINAL_EVENTS:
            response = opt_dict(obj.get("response"), "response")
            pictures = []
            if response is not None:
                output = opt_list(response.get("output"), "response.output") or []
                for _ in _text_parts(output, "response.output"):
                    pass
                # images the stream never sent in an output_item.done
                where = "response.output[].result"
                pictures = self._pictures(list(enumerate(output)), where)
            return [*pictures, Done(obj, name)]
        return [Raw(None, obj, name, lead=kind in LEAD_EVENTS)]

    def _pictures(self, items: list[tuple[int, Any]], where: str) -> list[Picture]:
        """An image segment for each finished ``image_generation_call`` not yet checked."""
        out = []
        for index, item in items:
            if type(item) is not dict or item.get("type") != "image_generation_call":
                continue
            data = opt_str(item.get("result"), where)
            if data is not None and index not in self.pictured:
                self.pictured.add(index)
                out.append(Picture(f"image.{index}", ImagePart(where, data=data)))
        return out

    @staticmethod
    def _key(obj: dict[str, Any]) -> str:
        """The segment key of a text event: its output and content positions."""
        output_index = index_of(obj.get("output_index"), "output_index", 0)
        content_index = index_of(obj.get("content_index"), "content_index", 0)
        return f"{output_index}.{content_index}"

    def _emit(self, payload: dict[str, Any], name: str | None) -> bytes:
        if "sequence_number" in payload or self.sequence:
            payload = dict(payload, sequence_number=self.sequence)
            self.sequence += 1
        return encode_event(dumps(payload), name or payload.get("type"))

    def render_text(self, key: str, text: str) -> bytes:
        # a stream cut before any text (only images so far) says why under key "0"
        first, _, second = key.partition(".")
        output_index, content_index = int(first), int(second or 0)
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
        # ``parse`` has checked the fields read here
        payload = item.payload
        if not isinstance(payload, dict):
            return super().render(item, released)
        kind = payload.get("type")
        if kind == "response.output_text.done":
            key = self._key(payload)
            payload = dict(payload, text=released.get(key, payload.get("text") or ""))
        elif kind == "response.content_part.done" and isinstance(payload.get("part"), dict):
            key = self._key(payload)
            if payload["part"].get("type") == "output_text" and key in released:
                payload = dict(payload, part=dict(payload["part"], text=released[key]))
        elif kind == "response.output_item.done" and isinstance(payload.get("item"), dict):
            index = payload.get("output_index") or 0
            texts = {
                k.split(".", 1)[1]: v
                for k, v in released.items()
                if k.split(".", 1)[0] == str(index)
            }
            item_copy = dict(payload["item"])
            content = item_copy.get("content")
            if content:
                item_copy["content"] = [
                    dict(part, text=texts[str(j)])
                    if isinstance(part, dict)
                    and part.get("type") == "output_text"
                    and str(j) in texts
                    else part
                    for j, part in enumerate(content)
                ]
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
