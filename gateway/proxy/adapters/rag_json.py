"""The generic ``rag-json`` protocol: answer text and sources at JSON paths.

Paths are dotted, with integer parts for list positions: ``data.answer``,
``result.documents``, ``choices.0.text``. Streams are SSE events whose JSON
carries a piece of the answer at ``stream_text_path`` (sources may come in
any event at ``sources_path``); ``data: [DONE]`` ends them. A breach ends the
stream with an event ``{"finish_reason": "content_filter"}`` and ``[DONE]``.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import BadRequest, UpstreamMalformed
from gateway.proxy.adapters.base import (
    Adapter,
    Done,
    Raw,
    RequestInfo,
    Sources,
    StreamTranslator,
    Text,
    dumps,
    loads_event,
)
from gateway.proxy.adapters.shapes import json_type, request_flag
from gateway.proxy.sse import SSEEvent, encode_event
from gateway.records.review import Ticket

_MISSING = object()


def get_path(obj: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        if isinstance(obj, list) and part.lstrip("-").isdigit():
            index = int(part)
            obj = obj[index] if -len(obj) <= index < len(obj) else _MISSING
        elif isinstance(obj, dict):
            obj = obj.get(part, _MISSING)
        else:
            return _MISSING
        if obj is _MISSING:
            return _MISSING
    return obj


def replaced(obj: Any, path: str, value: Any) -> Any:
    """A copy of ``obj`` with ``value`` at ``path``, where ``get_path`` found something.

    Only the containers along the path are copied; the rest is shared with
    ``obj``, which is never modified.
    """
    return _replaced(obj, path.split(".") if path else [], value)


def _replaced(obj: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    if isinstance(obj, list):
        out_list = list(obj)
        index = int(parts[0])
        out_list[index] = _replaced(obj[index], parts[1:], value)
        return out_list
    out = dict(obj)
    out[parts[0]] = _replaced(obj[parts[0]], parts[1:], value)
    return out


def set_path(obj: Any, path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        if isinstance(obj, list):
            obj = obj[int(part)]
        else:
            obj = obj.setdefault(part, {})
    last = parts[-1]
    if isinstance(obj, list):
        obj[int(last)] = value
    else:
        obj[last] = value


class RagJsonAdapter(Adapter):
    protocol = "rag-json"

    def __init__(
        self,
        text_path: str = "answer",
        sources_path: str = "sources",
        query_path: str = "query",
        stream_text_path: str = "delta",
        stream_field: str = "stream",
    ):
        self.text_path = text_path
        self.sources_path = sources_path
        self.query_path = query_path
        self.stream_text_path = stream_text_path
        self.stream_field = stream_field

    def request_info(self, body: dict[str, Any]) -> RequestInfo:
        query = get_path(body, self.query_path)
        if query is _MISSING or query is None:
            query = None
        elif type(query) is not str:
            raise BadRequest(f'"{self.query_path}" must be a string, not {json_type(query)}')
        model = body.get("model")
        return RequestInfo(
            body,
            model=model if type(model) is str else None,
            stream=request_flag(body, self.stream_field),
            query=query,
        )

    def segments(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        return [("0", self._answer(body))]

    def _answer(self, body: dict[str, Any]) -> str:
        text = get_path(body, self.text_path)
        if text is _MISSING:
            raise UpstreamMalformed(f"rag-json response has no answer at {self.text_path!r}")
        if not isinstance(text, str):
            raise UpstreamMalformed(
                f"rag-json answer at {self.text_path!r} is {type(text).__name__}, not a string"
            )
        return text

    def sources(self, body: dict[str, Any]) -> Sources:
        found = Sources()
        raw = get_path(body, self.sources_path)
        if raw is not _MISSING:
            found.extend(raw, self.sources_path)
        return found

    def rebuild(self, body: dict[str, Any], texts: dict[str, str], finish: str | None) -> dict:
        self._answer(body)
        out = replaced(body, self.text_path, texts["0"]) if "0" in texts else dict(body)
        if finish:
            out["finish_reason"] = finish
        return out

    def blocked(self, info: RequestInfo, upstream: dict[str, Any] | None, message: str) -> dict:
        out: dict[str, Any] = {}
        set_path(out, self.text_path, message)
        set_path(out, self.sources_path, [])
        out["finish_reason"] = "content_filter"
        return out

    def translator(self, info: RequestInfo) -> StreamTranslator:
        return RagJsonStream(info, self)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        out = dict(body)
        out.pop("finish_reason", None)
        return out


class RagJsonStream(StreamTranslator):
    def __init__(self, info: RequestInfo, adapter: RagJsonAdapter):
        super().__init__(info)
        self.adapter = adapter

    def parse(self, ev: SSEEvent) -> list[Any]:
        if ev.data.strip() == "[DONE]":
            return [Done("[DONE]")]
        obj = loads_event(ev)
        path = self.adapter.stream_text_path
        if path and type(obj) is not dict and type(obj) is not list:
            # a bare string would go out unscanned: the text lives at the path
            raise UpstreamMalformed(
                f"upstream sent an SSE event that is {json_type(obj)}, not a JSON object"
            )
        raw_sources = get_path(obj, self.adapter.sources_path)
        if raw_sources is not _MISSING:
            self.sources.extend(raw_sources, self.adapter.sources_path)
        text = get_path(obj, path)
        if isinstance(text, str):
            rest = replaced(obj, path, "")
            items: list[Any] = [Text("0", text)] if text else []
            if _has_more_than(rest, path):
                items.append(Raw("0", rest, ev.event))
            return items
        if text is not _MISSING and text is not None:
            raise UpstreamMalformed(
                f"rag-json stream event has {json_type(text)} at {path!r}, not a string"
            )
        # an event without answer text (the sources, say) may wait for the first text
        return [Raw(None, obj, ev.event, lead=True)]

    def render_text(self, key: str, text: str) -> bytes:
        out: dict[str, Any] = {}
        set_path(out, self.adapter.stream_text_path, text)
        return encode_event(dumps(out))

    def cut(
        self, open_keys: list[str], reason: str, decision_id: str, ticket: Ticket | None = None
    ) -> bytes:
        return encode_event(dumps({"finish_reason": reason})) + b"data: [DONE]\n\n"

    def review_marker(self, ticket: Ticket) -> bytes:
        return encode_event(dumps({"x_governance": ticket.marker()}))


def _has_more_than(obj: Any, path: str) -> bool:
    """Whether ``obj`` holds anything besides the (emptied) text field."""
    top = path.split(".")[0]
    return isinstance(obj, dict) and any(k != top for k in obj)
