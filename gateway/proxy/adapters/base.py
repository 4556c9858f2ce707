"""The shape every protocol adapter shares.

An adapter turns one wire format into the internal shape (segments of text,
RAG sources, the user's query) and back: a rebuilt body with changed text, a
blocked or held answer, an approved answer rebuilt from reviewed text, an
error in the client's error format. For streams it hands out a
``StreamTranslator`` that turns SSE events into ``Text``/``Raw``/``End``/``Done``
items and renders them again, with the protocol's own ending after a breach.

Everything the gateway knows about a wire format lives in this package:
nothing outside it compares protocol names.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.contract.detector import ImagePart
from gateway.contract.sources import Sources
from gateway.errors import BadRequest, GatewayError, UpstreamMalformed
from gateway.proxy.sse import SSEEvent, encode_event
from gateway.records.review import Ticket

SOURCE_FIELDS = ("sources", "citations", "context")


def dumps(obj: Any) -> str:
    try:
        return orjson.dumps(obj).decode("utf-8")
    except orjson.JSONEncodeError as exc:
        # orjson reads JSON nested 1024 deep but writes only 254: what an
        # upstream nested deeper cannot be passed on
        raise UpstreamMalformed(f"upstream sent JSON the gateway cannot re-encode: {exc}") from None


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
class Picture:
    """An image in an upstream event, checked by the image policies before the event
    that carries it (which follows as its own item) may go on."""

    key: str
    image: ImagePart


@dataclass(slots=True)
class Done:
    payload: Any = None
    event: str | None = None


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


def key_order(key: str) -> tuple[int | str, ...]:
    """Sort key for segment keys such as ``"2"`` or ``"0.1"``."""
    return tuple(int(p) if p.isdecimal() else p for p in key.split("."))


def image_link(url: Any, where: str) -> ImagePart | None:
    """An image given by ``url``: inline when it is a ``data:`` URI, else a link (never fetched)."""
    if type(url) is not str:
        return None
    if url.startswith("data:"):
        return ImagePart(where, data=url, media_type=url[5:].partition(";")[0] or None)
    return ImagePart(where, url=url)


# -- error bodies -------------------------------------------------------------
def openai_error(err: GatewayError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.type, "param": None, "code": err.code}}


class StreamTranslator:
    """Per-stream state: parse upstream SSE events, render released ones."""

    # whether images in the stream's events reach the policies (else image
    # policies record the stream as not scanned)
    reads_images = False

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

    def cut(
        self, open_keys: list[str], reason: str, decision_id: str, ticket: Ticket | None = None
    ) -> bytes:
        """Events that end the stream after a breach, terminator included.

        With a ``ticket`` the answer is held for review; where the protocol's
        final event has room for it, it names the review id.
        """
        raise NotImplementedError

    def review_marker(self, ticket: Ticket) -> bytes:
        """An event naming a held answer's review id that the protocol's clients skip."""
        return b""

    def error(self, err: GatewayError) -> bytes:
        """An in-stream error event for a failure after the first byte."""
        return encode_event(dumps(openai_error(err))) + b"data: [DONE]\n\n"


class Adapter:
    """Base class; one instance per protocol (and per rag-json route)."""

    protocol = "base"
    # where an injected upstream key goes when the route does not say
    credential_header = "authorization"

    def ask(
        self, messages: list[dict[str, Any]], model: str, max_tokens: int
    ) -> tuple[str, dict[str, Any], dict[str, str]]:
        """The path, body and extra headers that ask this protocol's API for one answer.

        For callers that are clients themselves (``gateway gate``); only
        conversation protocols can be asked.
        """
        raise NotImplementedError(f"{self.protocol} cannot be asked a conversation")

    def request_info(self, body: dict[str, Any]) -> RequestInfo:
        raise NotImplementedError

    def segments(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        raise NotImplementedError

    def images(self, body: dict[str, Any]) -> list[tuple[str, ImagePart]]:
        """The images of a whole answer, each an image segment keyed ``image.…``."""
        return []

    def parse_form(self, body: bytes, content_type: str) -> dict[str, Any]:
        """A ``multipart/form-data`` request's fields; only adapters that take forms read them."""
        raise BadRequest("the request body must be JSON, not multipart/form-data")

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
        return openai_error(err)

    # -- answers a person reviewed ----------------------------------------------
    def held(
        self, info: RequestInfo, upstream: dict[str, Any] | None, message: str, ticket: Ticket
    ) -> dict[str, Any]:
        """The placeholder answer for a held response, naming the review."""
        body = self.blocked(info, upstream, message)
        body["x_governance"] = ticket.marker()
        return body

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` marked as a normal, finished answer."""
        return body

    def synthesize(self, info: RequestInfo, texts: dict[str, str]) -> dict[str, Any]:
        """A whole answer carrying ``texts`` by segment, for a stream that was held."""
        return self.complete(self.rebuild(self.blocked(info, None, ""), texts, None))

    def with_texts(
        self, info: RequestInfo, body: dict[str, Any] | None, texts: dict[str, str]
    ) -> dict[str, Any]:
        """The approved answer: ``body`` with reviewed segments replaced, or built anew."""
        if body is None:
            return self.synthesize(info, texts)
        return self.rebuild(body, texts, None)

    def stream_answer(self, info: RequestInfo, message: str, decision_id: str) -> bytes | None:
        """A complete stream that says ``message`` and ends as filtered, or None if the
        protocol has no such stream (the caller answers with an error instead)."""
        return None
