"""Server-sent events: an incremental parser and an encoder.

The parser takes bytes as they arrive, in any split, and yields whole events.
It follows the WHATWG rules we rely on: lines end in LF, CRLF or CR; ``data``
lines join with LF; lines starting with ``:`` are comments.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import UpstreamMalformed

# an event larger than this is a broken upstream, not a big answer
# (the default of ``limits.max_upstream_event_bytes``)
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
    """Bytes in, events out, holding at most ``max_event_bytes`` of one event.

    Both an unfinished line and the ``data`` lines of an event not yet ended
    by a blank line count against the cap, so an upstream that never ends
    its event cannot make the gateway buffer without bound.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._buffer = b""
        # reads that carried no line break yet: joined once one does, so a
        # long line arriving in small reads is copied once, not once a read
        self._pieces: list[bytes] = []
        self._pieces_len = 0
        # the data lines of the event, as one block per read (joined by LF):
        # a flood of tiny lines costs what its bytes do, not an object a line,
        # and the blocks never need the copies a growing buffer makes
        self._blocks: list[bytes] = []
        self._values: list[bytes] = []
        self._held = 0
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if b"\n" not in chunk and b"\r" not in chunk and not self._buffer.endswith(b"\r"):
            # (a CR held back from the last read ends a line once this read shows no LF)
            self._pieces.append(chunk)
            self._pieces_len += len(chunk)
            if self._held + len(self._buffer) + self._pieces_len > self.max_event_bytes:
                self._too_big()
            return []
        if self._pieces:
            self._pieces.append(chunk)
            chunk = b"".join(self._pieces)
            self._pieces = []
            self._pieces_len = 0
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
        events: list[SSEEvent] = []
        for raw in lines:
            event = self._line(raw)
            if event is not None:
                events.append(event)
        self._settle()
        if self._held + len(self._buffer) > self.max_event_bytes:
            self._too_big()
        return events

    def _settle(self) -> None:
        """Fold this read's data lines of the unfinished event into one block."""
        if self._values:
            block = b"\n".join(self._values)
            self._blocks.append(b"\n" + block if self._blocks else block)
            self._values = []

    def _too_big(self) -> None:
        self._buffer = b""
        self._pieces = []
        self._pieces_len = 0
        self._blocks = []
        self._values = []
        self._held = 0
        raise UpstreamMalformed(
            f"upstream sent an SSE event over {self.max_event_bytes} bytes without ending it"
        )

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        if raw[:1] == b":":
            return None
        name, _, value = raw.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._values.append(value)
            self._held += len(value) + 1
            if self._held > self.max_event_bytes:
                self._too_big()
        elif name == b"event":
            self._event = _text(value)
        elif name == b"id":
            self._id = _text(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._held:
            self._event = None
            return None
        values = self._values
        if not self._blocks and len(values) == 1:
            raw = values[0]  # the usual event: one data line, read whole
        else:
            self._settle()
            raw = b"".join(self._blocks)
            self._blocks = []
        self._values = []
        event = SSEEvent(_text(raw), self._event, self._id)
        self._held = 0
        self._event = None
        return event

    def close(self) -> list[SSEEvent]:
        """End of stream: a last event without its blank line still counts."""
        events = []
        if self._pieces:
            self._buffer += b"".join(self._pieces)
            self._pieces = []
            self._pieces_len = 0
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


def _text(raw: bytes | bytearray) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UpstreamMalformed(f"upstream sent an SSE line that is not UTF-8: {exc}") from None
