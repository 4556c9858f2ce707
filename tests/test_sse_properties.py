"""Properties of the SSE writer and parser under any split of the bytes.

What ``encode_event`` writes, ``SSEParser`` reads back the same, however the
bytes are cut into reads, whichever line ending (LF, CRLF, CR) the stream
uses, with comments and unknown fields between the lines, and with
multi-byte UTF-8 characters cut in half between two reads. An event whose
``data`` lines (with their line ends) exceed ``max_event_bytes`` is refused
with ``UpstreamMalformed`` whatever the split; one a byte under is read.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.errors import UpstreamMalformed
from gateway.proxy.sse import SSEEvent, SSEParser, encode_event

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# a line ends at LF, CR or CRLF; no field may hold either character
line_text = st.text(max_size=20).filter(lambda t: "\n" not in t and "\r" not in t)
data_text = st.lists(line_text, min_size=1, max_size=4).map("\n".join)
events = st.builds(
    SSEEvent,
    data=data_text,
    event=st.one_of(st.none(), line_text.filter(bool)),
    id=st.one_of(st.none(), line_text),
)
endings = st.sampled_from([b"\n", b"\r\n", b"\r"])
# lines a reader must skip: comments and fields it does not know
ignored_lines = st.one_of(
    line_text.map(lambda t: b":" + t.encode()),
    st.sampled_from([b"retry: 100", b"x-unknown: 1", b"nocolon"]),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def read_all(parser: SSEParser, chunks: list[bytes]) -> list[SSEEvent]:
    out: list[SSEEvent] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out + parser.close()


def with_carried_ids(sent: list[SSEEvent]) -> list[SSEEvent]:
    """What a reader sees: an event without an id has the last id before it (the SSE rule)."""
    last = None
    out = []
    for ev in sent:
        last = ev.id if ev.id is not None else last
        out.append(SSEEvent(ev.data, ev.event, last))
    return out


@st.composite
def streams(draw) -> tuple[list[SSEEvent], bytes]:
    """Events, and their bytes with one line ending and lines to skip between lines."""
    sent = draw(st.lists(events, max_size=5))
    ending = draw(endings)
    lines: list[bytes] = []
    for ev in sent:
        lines += encode_event(ev.data, ev.event, ev.id).split(b"\n")[:-1]
    out: list[bytes] = []
    for line in lines:
        # a line to skip may come before any line, even inside an event
        if draw(st.integers(0, 5)) == 0:
            out.append(draw(ignored_lines))
        out.append(line)
    data = b"".join(line + ending for line in out)
    return sent, data


@PROPERTY
@given(stream=streams(), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_encoded_events_are_read_back_under_any_split_and_line_ending(stream, cuts):
    sent, data = stream
    assert read_all(SSEParser(), split(data, cuts)) == with_carried_ids(sent)


@PROPERTY
@given(stream=streams())
def test_one_byte_at_a_time_reads_the_same_as_all_at_once(stream):
    _, data = stream
    whole = read_all(SSEParser(), [data])
    assert read_all(SSEParser(), [data[i : i + 1] for i in range(len(data))]) == whole


@pytest.mark.parametrize(
    ("chunks", "data"),
    [
        ([b"\r", b"d", b"ata", b":", b" "], [""]),
        ([b"data: x\r", b"data: y"], ["x\ny"]),
    ],
)
def test_a_cr_held_back_ends_its_line_when_the_stream_ends_without_lf(chunks, data):
    """A CR at the end of a read may be half a CRLF; reads without a line break
    that follow it must not hide that it ended a line (found by the fuzzer)."""
    assert [ev.data for ev in read_all(SSEParser(), chunks)] == data


MULTIBYTE = "é€😀中"


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_multibyte_characters_cut_between_reads_are_read_whole(ending):
    text = "a" + MULTIBYTE + "\n" + MULTIBYTE
    data = encode_event(text, "ev").replace(b"\n", ending)
    for cut in range(1, len(data)):
        events = read_all(SSEParser(), [data[:cut], data[cut:]])
        assert events == [SSEEvent(text, "ev")], cut


@PROPERTY
@given(
    text=st.text(
        alphabet=st.characters(min_codepoint=0x80, codec="utf-8"), min_size=1, max_size=20
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_any_multibyte_text_is_read_whole_under_any_split(text, cuts):
    data = encode_event(text) + encode_event("[DONE]")
    assert [e.data for e in read_all(SSEParser(), split(data, cuts))] == [text, "[DONE]"]


# -- the cap on one event -------------------------------------------------------------------
# Whatever exactly is counted (the data's bytes, or its lines with their
# prefixes and ends), it is at least the data and at most the event's bytes:
# an event whose data alone is over the cap is refused, one whose every byte
# fits is read.
@st.composite
def big_events(draw) -> tuple[str, bytes]:
    """An event of a few data lines, and its bytes."""
    pieces = draw(st.lists(st.text(min_size=1, max_size=30).map(lambda t: t * 4), min_size=1))
    text = "\n".join(line.replace("\r", "").replace("\n", "") for line in pieces[:4])
    ending = draw(endings)
    return text, encode_event(text, "big").replace(b"\n", ending)


@PROPERTY
@given(
    event=big_events(),
    over=st.integers(min_value=1, max_value=50),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_an_event_over_the_cap_is_refused_under_any_split(event, over, cuts):
    text, data = event
    cap = len(text.encode()) - over
    assume(cap > 0)
    parser = SSEParser(max_event_bytes=cap)
    with pytest.raises(UpstreamMalformed):
        read_all(parser, split(encode_event("ok") + data + encode_event("after"), cuts))


@PROPERTY
@given(
    event=big_events(),
    room=st.integers(min_value=1, max_value=50),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_an_event_under_the_cap_is_read_under_any_split(event, room, cuts):
    text, data = event
    parser = SSEParser(max_event_bytes=len(data) + room)
    stream = encode_event("small") + data + encode_event("after")
    events = read_all(parser, split(stream, cuts))
    assert [e.data for e in events] == ["small", text, "after"]


def test_an_unended_line_over_the_cap_is_refused_before_its_end_arrives():
    parser = SSEParser(max_event_bytes=100)
    assert parser.feed(b"data: " + b"x" * 50) == []
    with pytest.raises(UpstreamMalformed):
        parser.feed(b"x" * 60)
