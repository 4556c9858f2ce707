"""The shape every protocol adapter shares.

An adapter turns one wire format into the internal shape (segments of text,
RAG sources, the user's query) and back: a rebuilt body with changed text, a
blocked answer with a ``content_filter`` finish, an error in the client's
error format. For streams it hands out a ``StreamTranslator`` that turns SSE
events into ``Text``/``Raw``/``End``/``Done`` items and renders them again.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamMalformed
from gateway.proxy.sse import SSEEvent, encode_event

SOURCE_FIELDS = ("sources", "citations", "context")
ID_FIELDS = ("id", "doc_id", "document_id", "source_id", "url")


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode("utf-8")


def loads_event(ev: SSEEvent) -> Any:
    try:
        return orjson.loads(ev.data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamMalformed(f"upstream sent an SSE event that is not JSON: {exc}") from None


@dataclass
class RequestInfo:
    """What the gateway needs from a client request, whatever its protocol."""

    body: dict[str, Any]
    model: str | None = None
    stream: bool = False
    query: str | None = None
    n: int = 1


# -- stream items -----------------------------------------------------------
@dataclass(slots=True)
class Text:
    key: str
    text: str


@dataclass(slots=True)
class Raw:
    """An upstream event to pass on, after the held text of ``key`` (None: of every key).

    ``lead`` marks a preamble event (a role, a message or block start, a ping)
    that may wait for the first released text: until the first byte leaves, a
    breach can still fall back to another upstream or become an error answer.
    """

    key: str | None
    payload: Any
    event: str | None = None
    lead: bool = False


@dataclass(slots=True)
class End:
    """A segment is complete; ``payload`` (if any) is emitted after its text."""

    key: str
    payload: Any = None
    event: str | None = None


@dataclass(slots=True)
class Done:
    payload: Any = None
    event: str | None = None


@dataclass
class Sources:
    items: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def extend(self, raw: Any, where: str) -> None:
        items, errors = normalize_sources(raw, where)
        self.items.extend(items)
        self.errors.extend(errors)


def normalize_sources(raw: Any, where: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Each source as a dict with an ``id``; problems are reported, never dropped silently."""
    if raw is None:
        return [], []
    if isinstance(raw, dict):
        # Azure-style ``context: {citations: [...]}`` or a single source object
        for name in ("citations", "sources", "documents"):
            if isinstance(raw.get(name), list):
                return normalize_sources(raw[name], f"{where}.{name}")
        raw = [raw]
    if not isinstance(raw, list):
        return [], [f"{where}: expected a list of sources, got {type(raw).__name__}"]
    items: list[dict[str, Any]] = []
    errors: list[str] = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            items.append(
                {"id": item, "url": item} if "://" in item else {"id": str(i), "text": item}
            )
        elif isinstance(item, dict):
            source = dict(item)
            if "id" not in source or source["id"] in (None, ""):
                found = next(
                    (source[k] for k in ID_FIELDS if source.get(k) not in (None, "")), None
                )
                source["id"] = str(found) if found is not None else str(i)
            else:
                source["id"] = str(source["id"])
            items.append(source)
        else:
            errors.append(
                f"{where}[{i}]: expected an object or a string, got {type(item).__name__}"
            )
    return items, errors


def text_of_content(content: Any) -> str:
    """Plain text of a message content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return ""


def last_user_text(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of_content(message.get("content")) or None
    return None


def gateway_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


# -- error bodies -------------------------------------------------------------
def openai_error(err: GatewayError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.type, "param": None, "code": err.code}}


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
}


def anthropic_error(err: GatewayError) -> dict[str, Any]:
    kind = _ANTHROPIC_TYPES.get(err.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": err.message, "code": err.code}}


class StreamTranslator:
    """Per-stream state: parse upstream SSE events, render released ones."""

    def __init__(self, info: RequestInfo):
        self.info = info
        self.sources = Sources()

    def parse(self, ev: SSEEvent) -> list[Any]:
        raise NotImplementedError

    def render_text(self, key: str, text: str) -> bytes:
        raise NotImplementedError

    def render(self, item: Raw | End | Done, released: dict[str, str]) -> bytes:
        """Encode a passed-through event; ``released`` is each segment's text as sent."""
        if item.payload is None:
            return b""
        if isinstance(item.payload, str):
            return encode_event(item.payload, item.event)
        return encode_event(dumps(item.payload), item.event)

    def cut(self, open_keys: list[str], reason: str, decision_id: str) -> bytes:
        """Events that end the stream after a breach, terminator included."""
        raise NotImplementedError

    def error(self, err: GatewayError) -> bytes:
        """An in-stream error event for a failure after the first byte."""
        return encode_event(dumps(openai_error(err))) + b"data: [DONE]\n\n"


class Adapter:
    """Base class; one instance per protocol (and per rag-json route)."""

    protocol = "base"
    error_style = "openai"

    def request_info(self, body: dict[str, Any]) -> RequestInfo:
        raise NotImplementedError

    def segments(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        raise NotImplementedError

    def sources(self, body: dict[str, Any]) -> Sources:
        found = Sources()
        for name in SOURCE_FIELDS:
            if name in body:
                found.extend(body[name], name)
        return found

    def rebuild(self, body: dict[str, Any], texts: dict[str, str], finish: str | None) -> dict:
        raise NotImplementedError

    def blocked(
        self, info: RequestInfo, upstream: dict[str, Any] | None, message: str
    ) -> dict[str, Any]:
        raise NotImplementedError

    def translator(self, info: RequestInfo) -> StreamTranslator:
        raise NotImplementedError

    def error_body(self, err: GatewayError) -> dict[str, Any]:
        return anthropic_error(err) if self.error_style == "anthropic" else openai_error(err)
