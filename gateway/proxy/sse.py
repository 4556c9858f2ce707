"""Server-sent events: an incremental parser and an encoder.

The parser takes bytes as they arrive, in any split, and yields whole events.
It follows the WHATWG rules we rely on: lines end in LF, CRLF or CR; ``data``
lines join with LF; lines starting with ``:`` are comments.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import UpstreamMalformed

# an event larger than this is a broken upstream, not a big answer
MAX_EVENT_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class SSEEvent:
    data: str
    event: str | None = None
    id: str | None = None

    def encode(self) -> bytes:
        return encode_event(self.data, self.event, self.id)


def encode_event(data: str, event: str | None = None, id: str | None = None) -> bytes:
    parts = []
    if event:
        parts.append(f"event: {event}\n")
    if id is not None:
        parts.append(f"id: {id}\n")
    for line in data.split("\n"):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


class SSEParser:
    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        data = self._buffer + chunk
        # a CR at the very end may be the first half of a CRLF still in flight
        tail = b""
        if data.endswith(b"\r"):
            data, tail = data[:-1], b"\r"
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        # one split per read, not one slice per line: reads can hold many events
        lines = data.split(b"\n")
        self._buffer = lines.pop() + tail
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise UpstreamMalformed("upstream sent an SSE line over 4 MiB")
        events: list[SSEEvent] = []
        for raw in lines:
            event = self._line(raw)
            if event is not None:
                events.append(event)
        return events

    def _line(self, raw: bytes) -> SSEEvent | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UpstreamMalformed(f"upstream sent an SSE line that is not UTF-8: {exc}") from None
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = None
            return None
        event = SSEEvent("\n".join(self._data), self._event, self._id)
        self._data = []
        self._event = None
        return event

    def close(self) -> list[SSEEvent]:
        """End of stream: a last event without its blank line still counts."""
        events = []
        if self._buffer.endswith(b"\r"):
            self._buffer = self._buffer[:-1]
        if self._buffer:
            tail = self._line(self._buffer)
            self._buffer = b""
            if tail is not None:
                events.append(tail)
        last = self._dispatch()
        if last is not None:
            events.append(last)
        return events
