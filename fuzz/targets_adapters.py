"""Fuzz targets for the protocol adapters and the SSE parser.

For every protocol: a whole upstream answer (as raw bytes, as any JSON
object, and as a valid answer with one part changed), an upstream stream (as
raw SSE bytes, as events of any JSON, and as a valid stream with one event
changed) and a client's request body. The SSE parser takes any bytes in any
split. An upstream's bytes may only be refused with ``UpstreamMalformed``, a
client's with ``BadRequest``; an answer that is read must also rebuild,
block, hold and encode (``fuzz.wire`` does what the gateway does with it).
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.wire import (
    BY_NAME,
    PROTOCOLS,
    WORDS,
    json_objects,
    json_values,
    mutated,
    mutated_answers,
    mutated_streams,
    read_answer,
    read_raw_answer,
    read_request,
    read_stream,
)
from gateway.errors import BadRequest, UpstreamMalformed
from gateway.proxy.sse import SSEEvent, SSEParser

# pieces of SSE and JSON syntax, so random bytes reach the parsers' deeper states
SSE_TOKENS = [
    b"data: ",
    b"data:",
    b"event: ",
    b"id: ",
    b": comment",
    b"\n",
    b"\r\n",
    b"\r",
    b"\n\n",
    b"[DONE]",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b":",
    b",",
    b"null",
    b"0",
    b"-1",
    b"\xc3",
    b"\xa9",
    b"\xf0\x9f\x98",
    b"\xff",
    *(b'"' + k.encode() + b'"' for k in ("choices", "delta", "content", "type", "index")),
    *(b'"' + w.encode() + b'"' for w in WORDS[:20]),
]
sse_bytes = st.one_of(
    st.binary(max_size=600),
    st.lists(st.one_of(st.sampled_from(SSE_TOKENS), st.binary(max_size=4)), max_size=120).map(
        b"".join
    ),
)
cuts = st.lists(st.integers(min_value=0, max_value=4096), max_size=8)
event_json = st.one_of(
    json_objects.map(lambda v: SSEEvent(orjson.dumps(v).decode())),
    json_values.map(lambda v: SSEEvent(orjson.dumps(v).decode())),
    st.just(SSEEvent("[DONE]")),
)
names = st.sampled_from([p.name for p in PROTOCOLS])


def _chunks(data: bytes, at: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in at})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _events(data: bytes, at: list[int], cap: int | None = None) -> list[SSEEvent]:
    parser = SSEParser() if cap is None else SSEParser(max_event_bytes=cap)
    out: list[SSEEvent] = []
    for chunk in _chunks(data, at):
        out += parser.feed(chunk)
    return out + parser.close()


def _upstream(read: Any, *args: Any) -> None:
    try:
        read(*args)
    except UpstreamMalformed:
        pass


# -- the SSE parser -----------------------------------------------------------------
@settings(database=None)
@given(data=sse_bytes, at=cuts, cap=st.one_of(st.none(), st.integers(1, 256)))
def fuzz_sse_parser(data: bytes, at: list[int], cap: int | None) -> None:
    try:
        split = _events(data, at, cap)
    except UpstreamMalformed:
        return
    # a split that parses reads the same events as the whole bytes at once
    assert _events(data, [], cap) == split


# -- whole answers ----------------------------------------------------------------------
@settings(database=None)
@given(name=names, raw=st.one_of(st.binary(max_size=400), sse_bytes))
def fuzz_answer_bytes(name: str, raw: bytes) -> None:
    _upstream(read_raw_answer, BY_NAME[name].adapter, raw)


@settings(database=None)
@given(name=names, body=json_objects)
def fuzz_answer_json(name: str, body: dict[str, Any]) -> None:
    _upstream(read_answer, BY_NAME[name].adapter, body)


@settings(database=None)
@given(data=st.data(), name=names)
def fuzz_answer_mutated(data: st.DataObject, name: str) -> None:
    protocol = BY_NAME[name]
    _upstream(read_answer, protocol.adapter, data.draw(mutated_answers(protocol)))


# -- streams -----------------------------------------------------------------------------
@settings(database=None)
@given(name=names, data=sse_bytes, at=cuts)
def fuzz_stream_bytes(name: str, data: bytes, at: list[int]) -> None:
    try:
        events = _events(data, at)
    except UpstreamMalformed:
        return
    _upstream(read_stream, BY_NAME[name].adapter, events)


@settings(database=None)
@given(name=names, events=st.lists(event_json, max_size=8))
def fuzz_stream_json(name: str, events: list[SSEEvent]) -> None:
    _upstream(read_stream, BY_NAME[name].adapter, events)


@settings(database=None)
@given(data=st.data(), name=names)
def fuzz_stream_mutated(data: st.DataObject, name: str) -> None:
    protocol = BY_NAME[name]
    _upstream(read_stream, protocol.adapter, data.draw(mutated_streams(protocol)))


# -- the client's request ----------------------------------------------------------------------
@settings(database=None)
@given(
    name=names,
    raw=st.one_of(
        st.binary(max_size=300),
        json_values.map(orjson.dumps),
        st.just(b"{}"),
    ),
)
def fuzz_request_bytes(name: str, raw: bytes) -> None:
    try:
        read_request(BY_NAME[name].adapter, raw)
    except BadRequest:
        pass


@settings(database=None)
@given(data=st.data(), name=names)
def fuzz_request_mutated(data: st.DataObject, name: str) -> None:
    protocol = BY_NAME[name]
    body = data.draw(mutated(data.draw(protocol.requests)))
    try:
        read_request(protocol.adapter, orjson.dumps(body))
    except BadRequest:
        pass
