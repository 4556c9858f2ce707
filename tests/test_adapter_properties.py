"""Properties of every protocol adapter over generated JSON.

- a client's body, whatever JSON it is, is read or refused with ``BadRequest``;
- an upstream answer or stream, whatever JSON it is (random, or a valid one
  with one part changed), is read or refused with ``UpstreamMalformed``, and
  one that is read can always be rebuilt, blocked, held and encoded;
- a valid answer's texts come back out of ``rebuild`` as they went in, and a
  valid stream's text comes out of ``parse`` as the upstream sent it;
- each malformed shape is named in the error: field and expected type.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.wire import (
    BY_NAME,
    INFO,
    PROTOCOLS,
    json_objects,
    json_values,
    mutated_answers,
    mutated_streams,
    read_answer,
    read_request,
    read_stream,
)
from gateway.errors import BadRequest, UpstreamMalformed
from gateway.proxy.adapters import Adapters
from gateway.proxy.adapters.base import Text, last_user_text
from gateway.proxy.sse import SSEEvent

# no deadline: a slow machine must not fail a property about correctness
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = [p.name for p in PROTOCOLS]


# -- the client's request --------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(value=json_values)
def test_a_request_of_any_json_is_read_or_a_bad_request(name, value):
    try:
        read_request(BY_NAME[name].adapter, orjson.dumps(value))
    except BadRequest:
        pass


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(raw=st.binary(max_size=200))
def test_a_request_of_any_bytes_is_read_or_a_bad_request(name, raw):
    try:
        read_request(BY_NAME[name].adapter, raw)
    except BadRequest:
        pass


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(data=st.data())
def test_a_valid_request_is_read_as_sent(name, data):
    protocol = BY_NAME[name]
    body = data.draw(protocol.requests)
    info = read_request(protocol.adapter, orjson.dumps(body))
    assert info.stream is body.get("stream", False)
    assert info.n == body.get("n", 1)
    if name.startswith("rag"):
        path = "question" if name == "rag-json-nested" else "query"
        assert info.query == body[path]
        return
    assert info.model == body["model"]
    if name in ("chat", "anthropic"):
        assert info.query == last_user_text(body["messages"])


REQUESTS = [
    ("chat", {"model": "m", "messages": "hi"}, '"messages" must be a list, not a string'),
    ("chat", {"model": "m", "messages": [5]}, '"messages[0]" must be an object'),
    (
        "chat",
        {"model": "m", "messages": [{"role": "user", "content": 5}]},
        '"messages[0].content" must be a string or a list of parts, not an integer',
    ),
    ("chat", {"model": "m", "messages": [], "stream": "yes"}, '"stream" must be a boolean'),
    ("chat", {"model": 5, "messages": []}, '"model" must be a string, not an integer'),
    ("chat", {"model": "m", "messages": [], "n": 0}, '"n" must be an integer from 1'),
    ("chat", {"model": "m", "messages": [], "n": True}, '"n" must be an integer from 1'),
    ("completions", {"model": "m", "prompt": {"a": 1}}, '"prompt" must be a string or a list'),
    ("responses", {"model": "m", "input": 5}, '"input" must be a string or a list of items'),
    ("responses", {"model": "m", "input": ["x"]}, '"input[0]" must be an object'),
    ("anthropic", {"model": "m", "messages": {"role": "user"}}, '"messages" must be a list'),
    ("anthropic", {"model": "m", "messages": [], "stream": 1}, '"stream" must be a boolean'),
    ("rag-json", {"query": "q", "stream": "true"}, '"stream" must be a boolean'),
    ("rag-json", {"query": ["q"]}, '"query" must be a string, not a list'),
]


@pytest.mark.parametrize("name, body, message", REQUESTS)
def test_a_request_of_the_wrong_shape_is_a_bad_request_naming_the_field(name, body, message):
    with pytest.raises(BadRequest) as caught:
        read_request(BY_NAME[name].adapter, orjson.dumps(body))
    assert message in caught.value.message


# -- whole answers ---------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(body=json_objects)
def test_an_answer_of_any_json_is_read_or_malformed(name, body):
    try:
        read_answer(BY_NAME[name].adapter, body)
    except UpstreamMalformed:
        pass


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(data=st.data())
def test_a_valid_answer_with_one_part_changed_is_read_or_malformed(name, data):
    protocol = BY_NAME[name]
    body = data.draw(mutated_answers(protocol))
    try:
        read_answer(protocol.adapter, body)
    except UpstreamMalformed:
        pass


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(data=st.data())
def test_a_valid_answer_round_trips_through_rebuild(name, data):
    protocol = BY_NAME[name]
    adapter = protocol.adapter
    body = data.draw(protocol.answers)
    before = orjson.dumps(body)
    segments = read_answer(adapter, body)
    same = adapter.rebuild(body, dict(segments), None)
    assert adapter.segments(same) == segments
    new = {key: data.draw(st.text(max_size=20)) for key, _ in segments}
    rebuilt = adapter.rebuild(body, new, None)
    assert adapter.segments(rebuilt) == list(new.items())
    # fields the adapter does not know pass through untouched, and the input is not changed
    for key in body:
        if key.startswith("x_"):
            assert rebuilt[key] == body[key]
    assert orjson.dumps(body) == before


CHOICE = {"index": 0, "message": {"role": "assistant", "content": "hi"}}
MALFORMED = [
    ("chat", {"choices": {"0": CHOICE}}, 'upstream sent "choices" that is not a list'),
    ("chat", {"id": "x"}, 'upstream sent no "choices"'),
    ("chat", {"choices": ["hi"]}, '"choices[0]" that is not an object'),
    ("chat", {"choices": [{"message": "hi"}]}, '"choices[0].message" that is not an object'),
    (
        "chat",
        {"choices": [{"message": {"content": 5}}]},
        '"choices[0].message.content" that is not a string or a list of parts',
    ),
    (
        "chat",
        {"choices": [{"message": {"content": [{"type": "text", "text": 5}]}}]},
        '"choices[0].message.content[0].text" that is not a string',
    ),
    ("chat", {"choices": [{**CHOICE, "index": "0"}]}, '"choices[0].index" that is not an integer'),
    ("chat", {"choices": [CHOICE, CHOICE]}, 'two choices with "index" 0'),
    ("completions", {"choices": [{"text": ["a"]}]}, '"choices[0].text" that is not a string'),
    ("responses", {"output": {}}, '"output" that is not a list'),
    ("responses", {"output": [{"type": "message", "content": "x"}]}, '"output[0].content"'),
    ("responses", {"output": [{"content": []}]}, '"output[0].type" that is not a string'),
    (
        "responses",
        {"output": [{"type": "message", "content": [{"type": "output_text", "text": None}]}]},
        '"output[0].content[0].text" that is not a string',
    ),
    ("anthropic", {"content": "hi"}, '"content" that is not a list'),
    ("anthropic", {"content": [["text"]]}, '"content[0]" that is not an object'),
    ("anthropic", {"content": [{"type": "text", "text": {}}]}, '"content[0].text"'),
    ("rag-json", {"answer": 5}, "rag-json answer at 'answer' is int"),
    ("rag-json-nested", {"result": []}, "no answer at 'result.answer'"),
]


@pytest.mark.parametrize("name, body, message", MALFORMED)
def test_an_answer_of_the_wrong_shape_is_malformed_naming_the_field(name, body, message):
    with pytest.raises(UpstreamMalformed) as caught:
        read_answer(BY_NAME[name].adapter, body)
    assert message in caught.value.message


def test_the_check_api_reads_a_malformed_body_as_the_callers_bad_request():
    from gateway.proxy.adapters import parse_answer

    with pytest.raises(BadRequest) as caught:
        parse_answer({"object": "response", "output": [5]}, Adapters([]))
    assert caught.value.message == (
        'openai-responses response: the response has "output[0]" that is not an object'
    )


def test_an_upstream_id_or_usage_of_the_wrong_type_is_not_copied_into_a_blocked_answer():
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    body = {"id": 5, "model": ["m"], "usage": {"x": deep}, "choices": [CHOICE]}
    blocked = BY_NAME["chat"].adapter.blocked(INFO, body, "no")
    assert blocked["id"].startswith("chatcmpl-gw") and blocked["model"] == "m"
    assert blocked["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    orjson.dumps(blocked)


# -- streams ----------------------------------------------------------------------------
events_of_any_json = st.lists(
    st.one_of(
        json_objects.map(lambda v: SSEEvent(orjson.dumps(v).decode())),
        json_values.map(lambda v: SSEEvent(orjson.dumps(v).decode())),
        st.just(SSEEvent("[DONE]")),
        st.just(SSEEvent("{not json")),
    ),
    max_size=8,
)


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(events=events_of_any_json)
def test_a_stream_of_any_json_is_read_or_malformed(name, events):
    try:
        read_stream(BY_NAME[name].adapter, events)
    except UpstreamMalformed:
        pass


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(data=st.data())
def test_a_valid_stream_with_one_event_changed_is_read_or_malformed(name, data):
    protocol = BY_NAME[name]
    events = data.draw(mutated_streams(protocol))
    try:
        read_stream(protocol.adapter, events)
    except UpstreamMalformed:
        pass


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(data=st.data())
def test_a_valid_stream_gives_its_text_back(name, data):
    protocol = BY_NAME[name]
    events, expected = data.draw(protocol.streams)
    released = read_stream(protocol.adapter, events)
    assert {k: v for k, v in released.items() if v} == {k: v for k, v in expected.items() if v}


CHUNK = {"id": "c", "object": "chat.completion.chunk"}
STREAM_MALFORMED = [
    ("chat", '"not an object"', "an SSE event that is not a JSON object but a string"),
    ("chat", {**CHUNK, "choices": {"index": 0}}, '"choices" that is not a list'),
    ("chat", {**CHUNK, "choices": [{"delta": []}]}, '"choices[0].delta" that is not an object'),
    (
        "chat",
        {**CHUNK, "choices": [{"delta": {"content": ["a"]}}]},
        '"choices[0].delta.content" that is not a string',
    ),
    ("chat", {**CHUNK, "choices": [{"index": -1, "delta": {}}]}, '"choices[0].index"'),
    ("chat", {**CHUNK, "choices": [{"index": 1.5, "delta": {}}]}, '"choices[0].index"'),
    ("chat", {**CHUNK, "choices": [{"delta": {}}], "usage": 3}, '"usage" that is not an object'),
    (
        "chat",
        {**CHUNK, "choices": [{"delta": {}, "finish_reason": 1}]},
        '"choices[0].finish_reason" that is not a string',
    ),
    ("completions", {"choices": [{"text": 1}]}, '"choices[0].text" that is not a string'),
    ("responses", {"delta": "x"}, '"type" that is not a string'),
    ("responses", {"type": "response.output_text.delta", "delta": 5}, '"delta"'),
    (
        "responses",
        {"type": "response.output_text.delta", "output_index": "0", "delta": "x"},
        '"output_index" that is not an integer',
    ),
    ("responses", {"type": "response.created", "response": []}, '"response"'),
    (
        "responses",
        {"type": "response.output_item.done", "item": {"type": "message", "content": {}}},
        '"item.content" that is not a list',
    ),
    (
        "responses",
        {"type": "response.completed", "response": {"output": [7]}},
        '"response.output[0]" that is not an object',
    ),
    ("anthropic", {"type": "content_block_start", "index": 0}, '"content_block"'),
    (
        "anthropic",
        {"type": "content_block_start", "content_block": {"type": 1}},
        '"content_block.type" that is not a string',
    ),
    (
        "anthropic",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}},
        "a text_delta for content block 0, which is not a text block",
    ),
    ("anthropic", {"type": "content_block_delta", "index": 0, "delta": "x"}, '"delta"'),
    ("anthropic", {"type": "content_block_stop", "index": "0"}, '"index"'),
    ("rag-json", {"delta": ["a"]}, "rag-json stream event has a list at 'delta'"),
    ("rag-json", '"bare text"', "an SSE event that is a string"),
]


@pytest.mark.parametrize("name, event, message", STREAM_MALFORMED)
def test_a_stream_event_of_the_wrong_shape_is_malformed_naming_the_field(name, event, message):
    data = event if isinstance(event, str) else orjson.dumps(event).decode()
    with pytest.raises(UpstreamMalformed) as caught:
        read_stream(BY_NAME[name].adapter, [SSEEvent(data)])
    assert message in caught.value.message


def test_unknown_fields_of_a_stream_event_pass_through_untouched():
    adapter = BY_NAME["anthropic"].adapter
    translator = adapter.translator(BY_NAME["anthropic"].adapter.request_info({}))
    event = {"type": "message_delta", "delta": {"x_new": [1, {"a": None}]}, "x_top": "kept"}
    (item,) = translator.parse(SSEEvent(orjson.dumps(event).decode(), "message_delta"))
    out = translator.render(item, {})
    assert out == b"event: message_delta\ndata: " + orjson.dumps(event) + b"\n\n"


def test_an_anthropic_block_without_an_index_is_block_0_when_a_breach_closes_it():
    translator = BY_NAME["anthropic"].adapter.translator(INFO)
    start = {"type": "content_block_start", "index": None, "content_block": {"type": "text"}}
    for item in translator.parse(SSEEvent(orjson.dumps(start).decode(), "content_block_start")):
        if not isinstance(item, Text):
            translator.render(item, {})
    out = translator.cut([], "content_filter", "dec_1")
    assert out.startswith(
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}'
    )
