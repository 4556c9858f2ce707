"""Hypothesis strategies for what the protocol adapters read, and drivers that exercise them.

JSON of any shape (with the field names and type values the adapters look
for, so random values reach their deeper branches), valid answers, streams
and requests of each protocol, and valid ones with one part changed. The
drivers do with a body or an event stream everything the gateway does, so a
test or fuzz target only states which errors may come out.

Shared by ``fuzz/targets_adapters.py`` and ``tests/test_adapter_properties.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import strategies as st

from gateway.errors import UpstreamMalformed
from gateway.proxy.adapters.anthropic import AnthropicAdapter
from gateway.proxy.adapters.base import Adapter, Done, End, Raw, RequestInfo, Text
from gateway.proxy.adapters.openai_chat import ChatAdapter, CompletionsAdapter
from gateway.proxy.adapters.openai_responses import ResponsesAdapter
from gateway.proxy.adapters.rag_json import RagJsonAdapter
from gateway.proxy.listener import parse_json_body
from gateway.proxy.sse import SSEEvent
from gateway.records.review import Ticket

# field names and values the adapters read: random JSON built from them gets
# past the first checks and into the branches behind them
KEYS = [
    "choices",
    "index",
    "message",
    "content",
    "text",
    "delta",
    "finish_reason",
    "usage",
    "role",
    "refusal",
    "context",
    "sources",
    "citations",
    "output",
    "type",
    "output_index",
    "content_index",
    "item_id",
    "item",
    "part",
    "response",
    "content_block",
    "id",
    "model",
    "stream",
    "messages",
    "n",
    "prompt",
    "input",
    "answer",
    "result",
    "documents",
    "query",
    "question",
]
WORDS = [
    "assistant",
    "user",
    "message",
    "text",
    "output_text",
    "refusal",
    "function_call",
    "reasoning",
    "tool_use",
    "text_delta",
    "input_json_delta",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_start",
    "message_delta",
    "message_stop",
    "ping",
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "stop",
    "[DONE]",
    "0",
    "0.0",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, 2, -1, 1023, 1024]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(WORDS),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)
json_objects = st.dictionaries(keys, json_values, max_size=6)
texts = st.text(max_size=30)
# fields no adapter knows: they must come back out as they went in
extras = st.dictionaries(st.text(max_size=6).map(lambda k: "x_" + k), json_values, max_size=3)


# -- valid answers ---------------------------------------------------------------
def _with_extras(draw: Callable, body: dict[str, Any]) -> dict[str, Any]:
    return {**draw(extras), **body}


@st.composite
def chat_answers(draw: Callable) -> dict[str, Any]:
    choices = []
    for i in range(draw(st.integers(1, 3))):
        content = draw(
            st.one_of(
                texts,
                st.none(),
                st.lists(
                    st.one_of(
                        texts.map(lambda t: {"type": "text", "text": t}),
                        st.just({"type": "image_url", "image_url": {"url": "https://x.test/a"}}),
                    ),
                    max_size=3,
                ),
            )
        )
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if content is None:
            message["tool_calls"] = [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ]
        choices.append(
            _with_extras(
                draw, {"index": i, "message": message, "finish_reason": "stop", "logprobs": None}
            )
        )
    return _with_extras(
        draw,
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-test",
            "choices": choices,
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        },
    )


@st.composite
def completions_answers(draw: Callable) -> dict[str, Any]:
    choices = [
        {"index": i, "text": draw(texts), "finish_reason": "stop", "logprobs": None}
        for i in range(draw(st.integers(1, 3)))
    ]
    return _with_extras(
        draw,
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "m",
            "choices": choices,
        },
    )


def _output_item(draw: Callable) -> dict[str, Any]:
    kind = draw(st.sampled_from(["message", "message", "function_call", "reasoning"]))
    if kind == "function_call":
        return {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "c",
            "name": "f",
            "arguments": "{}",
        }
    if kind == "reasoning":
        return {"type": "reasoning", "id": "rs_1", "summary": []}
    parts = draw(
        st.lists(
            st.one_of(
                texts.map(lambda t: {"type": "output_text", "text": t, "annotations": []}),
                texts.map(lambda t: {"type": "refusal", "refusal": t}),
            ),
            max_size=3,
        )
    )
    return _with_extras(
        draw,
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": parts,
        },
    )


@st.composite
def responses_answers(draw: Callable) -> dict[str, Any]:
    output = [_output_item(draw) for _ in range(draw(st.integers(0, 3)))]
    return _with_extras(
        draw,
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 1,
            "model": "m",
            "status": "completed",
            "output": output,
            "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
        },
    )


@st.composite
def anthropic_answers(draw: Callable) -> dict[str, Any]:
    blocks = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["text", "text", "tool_use", "thinking"]))
        if kind == "text":
            blocks.append(_with_extras(draw, {"type": "text", "text": draw(texts)}))
        elif kind == "tool_use":
            blocks.append({"type": "tool_use", "id": "tu_1", "name": "f", "input": {}})
        else:
            blocks.append({"type": "thinking", "thinking": draw(texts), "signature": "s"})
    return _with_extras(
        draw,
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": blocks,
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        },
    )


SOURCES = st.lists(
    st.one_of(
        st.fixed_dictionaries({"id": st.text(max_size=5), "text": texts}),
        st.just("https://x.test/doc"),
    ),
    max_size=2,
)


@st.composite
def rag_answers(draw: Callable) -> dict[str, Any]:
    return _with_extras(draw, {"answer": draw(texts), "sources": draw(SOURCES)})


@st.composite
def nested_rag_answers(draw: Callable) -> dict[str, Any]:
    result = _with_extras(draw, {"answer": draw(texts), "documents": draw(SOURCES)})
    return _with_extras(draw, {"result": result})


# -- valid streams: (events, the text of each segment) ---------------------------------
Stream = tuple[list[SSEEvent], dict[str, str]]


def _event(obj: Any, name: str | None = None) -> SSEEvent:
    return SSEEvent(orjson.dumps(obj).decode(), name)


DONE = SSEEvent("[DONE]")


@st.composite
def chat_streams(draw: Callable) -> Stream:
    n = draw(st.integers(1, 2))
    pieces = {str(i): draw(st.lists(texts, max_size=4)) for i in range(n)}
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(i: int, delta: dict, finish: str | None = None) -> SSEEvent:
        choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event({**base, "choices": [choice]})

    events = [chunk(i, {"role": "assistant", "content": ""}) for i in range(n)]
    for i in range(n):
        events += [chunk(i, {"content": p}) for p in pieces[str(i)]]
    events += [chunk(i, {}, "stop") for i in range(n)]
    events += [_event({**base, "choices": [], "usage": {"total_tokens": 3}}), DONE]
    return events, {k: "".join(v) for k, v in pieces.items()}


@st.composite
def completions_streams(draw: Callable) -> Stream:
    pieces = draw(st.lists(texts, max_size=4))
    base = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}
    events = [
        _event({**base, "choices": [{"index": 0, "text": p, "finish_reason": None}]})
        for p in pieces
    ]
    events += [
        _event({**base, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}),
        DONE,
    ]
    return events, {"0": "".join(pieces)}


@st.composite
def responses_streams(draw: Callable) -> Stream:
    pieces = draw(st.lists(texts, max_size=4))
    text = "".join(pieces)
    response = {"id": "resp_1", "object": "response", "model": "m", "output": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    item = {"type": "message", "id": "msg_1", "role": "assistant", "content": []}
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    done_item = dict(item, content=[dict(part, text=text)])
    raw = [
        {"type": "response.created", "response": dict(response, status="in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": part},
        *({"type": "response.output_text.delta", **where, "delta": p} for p in pieces),
        {"type": "response.output_text.done", **where, "text": text},
        {"type": "response.content_part.done", **where, "part": dict(part, text=text)},
        {"type": "response.output_item.done", "output_index": 0, "item": done_item},
        {
            "type": "response.completed",
            "response": dict(response, status="completed", output=[done_item]),
        },
    ]
    events = [_event(dict(e, sequence_number=i), e["type"]) for i, e in enumerate(raw)]
    return events, {"0.0": text}


@st.composite
def anthropic_streams(draw: Callable) -> Stream:
    pieces = draw(st.lists(texts, max_size=4))
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    raw = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
            for p in pieces
        ),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "tu", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}},
        {"type": "message_stop"},
    ]
    return [_event(e, e["type"]) for e in raw], {"0": "".join(pieces)}


@st.composite
def rag_streams(draw: Callable) -> Stream:
    pieces = draw(st.lists(texts, max_size=4))
    events = [_event({"sources": draw(SOURCES)})]
    events += [_event({"delta": p}) for p in pieces]
    return [*events, DONE], {"0": "".join(pieces)}


# -- valid requests ---------------------------------------------------------------------
_OPTIONAL = {"stream": st.booleans(), "n": st.integers(1, 4)}


@st.composite
def chat_requests(draw: Callable) -> dict[str, Any]:
    messages = [
        {"role": draw(st.sampled_from(["system", "user", "assistant"])), "content": draw(texts)}
        for _ in range(draw(st.integers(0, 3)))
    ]
    body = {"model": draw(texts), "messages": messages}
    return {**draw(st.fixed_dictionaries({}, optional=_OPTIONAL)), **body}


@st.composite
def completions_requests(draw: Callable) -> dict[str, Any]:
    prompt = draw(st.one_of(texts, st.lists(texts, max_size=2)))
    return {**draw(st.fixed_dictionaries({}, optional=_OPTIONAL)), "model": "m", "prompt": prompt}


@st.composite
def responses_requests(draw: Callable) -> dict[str, Any]:
    data = draw(
        st.one_of(
            texts,
            st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "assistant"]), "content": texts}
                ),
                max_size=3,
            ),
        )
    )
    stream = draw(st.fixed_dictionaries({}, optional={"stream": st.booleans()}))
    return {**stream, "model": "m", "input": data}


@st.composite
def anthropic_requests(draw: Callable) -> dict[str, Any]:
    content = st.one_of(texts, st.lists(texts.map(lambda t: {"type": "text", "text": t})))
    messages = [
        {"role": draw(st.sampled_from(["user", "assistant"])), "content": draw(content)}
        for _ in range(draw(st.integers(1, 3)))
    ]
    stream = draw(st.fixed_dictionaries({}, optional={"stream": st.booleans()}))
    return {**stream, "model": "claude-test", "max_tokens": 10, "messages": messages}


@st.composite
def rag_requests(draw: Callable) -> dict[str, Any]:
    stream = draw(st.fixed_dictionaries({}, optional={"stream": st.booleans()}))
    return {**stream, "query": draw(texts), "question": draw(texts)}


# -- the protocols -----------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    name: str
    adapter: Adapter
    answers: st.SearchStrategy[dict[str, Any]]
    streams: st.SearchStrategy[Stream]
    requests: st.SearchStrategy[dict[str, Any]]


NESTED_RAG = RagJsonAdapter(
    text_path="result.answer",
    sources_path="result.documents",
    query_path="question",
    stream_text_path="delta",
)
PROTOCOLS = [
    Protocol("chat", ChatAdapter(), chat_answers(), chat_streams(), chat_requests()),
    Protocol(
        "completions",
        CompletionsAdapter(),
        completions_answers(),
        completions_streams(),
        completions_requests(),
    ),
    Protocol(
        "responses",
        ResponsesAdapter(),
        responses_answers(),
        responses_streams(),
        responses_requests(),
    ),
    Protocol(
        "anthropic",
        AnthropicAdapter(),
        anthropic_answers(),
        anthropic_streams(),
        anthropic_requests(),
    ),
    Protocol("rag-json", RagJsonAdapter(), rag_answers(), rag_streams(), rag_requests()),
    Protocol("rag-json-nested", NESTED_RAG, nested_rag_answers(), rag_streams(), rag_requests()),
]
BY_NAME = {p.name: p for p in PROTOCOLS}


# -- changing one part of a valid value ------------------------------------------------------
def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """The path of every value inside ``value`` (not ``value`` itself)."""
    out: list[tuple] = []
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return out
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_paths(v, (*prefix, k)))
    return out


@st.composite
def mutated(draw: Callable, value: Any) -> Any:
    """``value`` with one inner value replaced by any JSON, removed, or wrapped in a list."""
    value = copy.deepcopy(value)
    paths = _paths(value)
    if not paths:
        return value
    path = draw(st.sampled_from(paths))
    parent = value
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    how = draw(st.sampled_from(["replace", "replace", "remove", "wrap"]))
    if how == "remove" and isinstance(parent, dict):
        del parent[last]
    elif how == "wrap":
        parent[last] = [parent[last]]
    else:
        parent[last] = draw(json_values)
    return value


@st.composite
def mutated_answers(draw: Callable, protocol: Protocol) -> dict[str, Any]:
    return draw(mutated(draw(protocol.answers)))


@st.composite
def mutated_streams(draw: Callable, protocol: Protocol) -> list[SSEEvent]:
    events, _ = draw(protocol.streams)
    at = draw(st.integers(0, len(events) - 1))
    if events[at].data == "[DONE]":
        return events
    obj = draw(mutated(orjson.loads(events[at].data)))
    events[at] = SSEEvent(orjson.dumps(obj).decode(), events[at].event)
    return events


# -- what the gateway does with them ---------------------------------------------------------
INFO = RequestInfo({}, model="m", n=2)
TICKET = Ticket("rev_1", "/governance/v1/reviews/rev_1/result")


def read_answer(adapter: Adapter, body: dict[str, Any]) -> list[tuple[str, str]]:
    """Everything the gateway does with a whole answer; returns its segments.

    Only ``UpstreamMalformed`` may come out, and only from reading it
    (``segments``, ``sources``): an answer read without error is one the
    gateway can rebuild, block, hold and encode.
    """
    segments = adapter.segments(body)
    adapter.sources(body)
    changed = {key: f"[{text}]" for key, text in segments}
    for out in (
        adapter.rebuild(body, changed, None),
        adapter.rebuild(body, changed, "content_filter"),
        adapter.blocked(INFO, body, "blocked"),
        adapter.held(INFO, body, "held", TICKET),
        adapter.with_texts(INFO, body, changed),
        adapter.synthesize(INFO, changed),
    ):
        orjson.dumps(out)
    return segments


def read_raw_answer(adapter: Adapter, raw: bytes) -> list[tuple[str, str]]:
    """``read_answer`` from the bytes, as ``Exchange.whole`` reads them."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamMalformed(f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise UpstreamMalformed("JSON that is not an object")
    return read_answer(adapter, body)


def read_stream(adapter: Adapter, events: list[SSEEvent]) -> dict[str, str]:
    """Parse events as a stream does and render what they yield; the text of each segment.

    ``UpstreamMalformed`` may come out of ``parse`` only: rendering what was
    parsed, and ending the stream after it, must always work.
    """
    translator = adapter.translator(INFO)
    released: dict[str, str] = {}
    try:
        for ev in events:
            for item in translator.parse(ev):
                if isinstance(item, Text):
                    released[item.key] = released.get(item.key, "") + item.text
                    translator.render_text(item.key, item.text)
                else:
                    assert isinstance(item, Raw | End | Done)
                    translator.render(item, released)
    except UpstreamMalformed as err:
        # after the first byte the client gets an error event instead
        translator.error(err)
        raise
    translator.review_marker(TICKET)
    translator.cut(list(released), "content_filter", "dec_1", TICKET)
    return released


def read_request(adapter: Adapter, raw: bytes) -> RequestInfo:
    """A client's body read as the listener reads it; only ``BadRequest`` may come out."""
    info = adapter.request_info(parse_json_body(raw))
    assert info.model is None or isinstance(info.model, str)
    assert isinstance(info.stream, bool)
    assert info.query is None or isinstance(info.query, str)
    assert isinstance(info.n, int) and info.n >= 1
    return info
