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
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        self._buffer += chunk
        events: list[SSEEvent] = []
        while True:
            cut, skip = self._line_end()
            if cut < 0:
                break
            raw = self._buffer[:cut]
            self._buffer = self._buffer[cut + skip :]
            event = self._line(raw)
            if event is not None:
                events.append(event)
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise UpstreamMalformed("upstream sent an SSE line over 4 MiB")
        return events

    def _line_end(self) -> tuple[int, int]:
        buf = self._buffer
        lf = buf.find(b"\n")
        cr = buf.find(b"\r")
        if cr == -1 and lf == -1:
            return -1, 0
        if cr != -1 and (lf == -1 or cr < lf):
            if cr + 1 < len(buf):
                return cr, 2 if buf[cr + 1 : cr + 2] == b"\n" else 1
            # a CR at the very end: its LF may come in the next chunk
            self._pending_cr = True
            return cr, 1
        return lf, 1

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
        if self._buffer:
            tail = self._line(self._buffer)
            self._buffer = b""
            if tail is not None:
                events.append(tail)
        last = self._dispatch()
        if last is not None:
            events.append(last)
        return events
