"""An upstream answering with JSON of the wrong shape gets the client a 502, never a 500.

For each protocol (chat completions, completions, responses, Anthropic
messages, a rag-json route), whole and streamed: the client gets the
protocol's error object with ``upstream-malformed-response``, or, once its
stream has started, the protocol's in-stream error event; and the gateway
answers the next normal request as usual. The gateway is the real one over
loopback; only the upstream is a fake, scripted per request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from gateway.config import Route

CODE = "upstream-malformed-response"
TEXT = (
    "Here is a long and perfectly ordinary answer, written out in full so that the "
    "gateway has cleared and sent some of it before anything goes wrong further on."
)
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "k"}

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETIONS = {"model": "m", "prompt": "hi"}
RESPONSES = {"model": "m", "input": "hi"}
MESSAGES = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
RAG = {"question": "hi"}

REQUESTS = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/responses": RESPONSES,
    "/v1/messages": MESSAGES,
    "/rag/answer": RAG,
}

# -- normal answers, for the request after the broken one ----------------------------------
NORMAL = {
    "/v1/chat/completions": {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}}],
    },
    "/v1/completions": {"id": "c", "object": "text_completion", "choices": [{"text": TEXT}]},
    "/v1/responses": {
        "id": "r",
        "object": "response",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": TEXT}]}],
    },
    "/v1/messages": {"id": "m", "type": "message", "content": [{"type": "text", "text": TEXT}]},
    "/rag/answer": {"result": {"answer": TEXT, "documents": []}},
}


def normal_text(path: str, body: dict[str, Any]) -> str:
    if path == "/v1/chat/completions":
        return body["choices"][0]["message"]["content"]
    if path == "/v1/completions":
        return body["choices"][0]["text"]
    if path == "/v1/responses":
        return body["output"][0]["content"][0]["text"]
    if path == "/v1/messages":
        return body["content"][0]["text"]
    return body["result"]["answer"]


# -- streams: events before and after a point where the upstream waits --------------------------
WAIT = object()


def chat_chunk(delta: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}


def text_events(path: str) -> list[Any]:
    """A good beginning of a stream that carries ``TEXT``."""
    pieces = [TEXT[i : i + 20] for i in range(0, len(TEXT), 20)]
    if path == "/v1/chat/completions":
        return [chat_chunk({"role": "assistant"}), *(chat_chunk({"content": p}) for p in pieces)]
    if path == "/v1/completions":
        return [{"choices": [{"index": 0, "text": p}]} for p in pieces]
    if path == "/v1/responses":
        where = {"item_id": "i", "output_index": 0, "content_index": 0}
        return [
            {"type": "response.created", "response": {"id": "r", "output": []}},
            {"type": "response.output_item.added", "output_index": 0, "item": {"type": "message"}},
            *({"type": "response.output_text.delta", **where, "delta": p} for p in pieces),
        ]
    if path == "/v1/messages":
        return [
            {"type": "message_start", "message": {"id": "m", "content": []}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
            *(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": p},
                }
                for p in pieces
            ),
        ]
    return [{"delta": p} for p in pieces]


TERMINATORS = {
    "/v1/chat/completions": "[DONE]",
    "/v1/completions": "[DONE]",
    "/v1/responses": {"type": "response.completed", "response": {"id": "r", "output": []}},
    "/v1/messages": {"type": "message_stop"},
    "/rag/answer": "[DONE]",
}


def sse(event: Any) -> bytes:
    if isinstance(event, str):
        return f"data: {event}\n\n".encode()
    name = event.get("type") if isinstance(event, dict) else None
    head = f"event: {name}\n" if isinstance(name, str) else ""
    return f"{head}data: {json.dumps(event)}\n\n".encode()


class ShapeUpstream:
    """Answers the next request with a scripted body or stream, then normally again."""

    def __init__(self) -> None:
        self.body: Any = None
        self.events: list[Any] | None = None
        self.gate = asyncio.Event()
        self.app = web.Application()
        for path in REQUESTS:
            self.app.router.add_post(path, self.answer)

    async def answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        events, self.events = self.events, None
        body, self.body = self.body, None
        if events is None:
            return web.json_response(body if body is not None else NORMAL[request.path])
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            if event is WAIT:
                # the client has its first bytes: what comes next breaks a started stream
                await self.gate.wait()
                continue
            await resp.write(sse(event))
        await resp.write(sse(TERMINATORS[request.path]))
        await resp.write_eof()
        return resp


@pytest.fixture
async def upstream(aiohttp_server):
    fake = ShapeUpstream()
    server = await aiohttp_server(fake.app)
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
async def proxy(make_gateway, upstream):
    routes = [
        Route(
            name="rag",
            upstream=upstream.url,
            protocol="rag-json",
            path_prefix="/rag/",
            rag={"text_path": "result.answer", "sources_path": "result.documents"},
        ),
        Route(name="default", upstream=upstream.url),
    ]
    client, _, _ = await make_gateway(routes)
    return client


def headers_for(path: str) -> dict[str, str]:
    return ANTHROPIC_HEADERS if path == "/v1/messages" else {}


def assert_error_object(path: str, body: dict[str, Any], message: str) -> None:
    if path == "/v1/messages":
        assert body == {
            "type": "error",
            "error": {"type": "api_error", "message": body["error"]["message"], "code": CODE},
        }
    else:
        assert body == {
            "error": {
                "message": body["error"]["message"],
                "type": "api_error",
                "param": None,
                "code": CODE,
            }
        }
    text = body["error"]["message"]
    assert message in text, text


async def assert_next_request_is_served(proxy, upstream, path: str) -> None:
    resp = await proxy.post(path, json=REQUESTS[path], headers=headers_for(path))
    assert resp.status == 200
    assert resp.headers["x-governance-decision"] == "allow"
    assert normal_text(path, await resp.json()) == TEXT


# a 300-deep list: read fine (orjson reads 1024 levels) but not written again (254)
DEEP: Any = 1
for _ in range(300):
    DEEP = [DEEP]

WHOLE = [
    pytest.param(
        "/v1/chat/completions",
        {"id": "c", "object": "chat.completion", "choices": "not a list"},
        'upstream sent "choices" that is not a list',
        id="chat-choices-not-a-list",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"choices": [{"index": 0, "message": "hi"}]},
        '"choices[0].message" that is not an object',
        id="chat-message-not-an-object",
    ),
    pytest.param(
        "/v1/completions",
        {"choices": [7]},
        '"choices[0]" that is not an object',
        id="completions-choice-not-an-object",
    ),
    pytest.param(
        "/v1/responses",
        {"object": "response", "output": [{"type": "message", "content": 7}]},
        '"output[0].content" that is not a list',
        id="responses-content-not-a-list",
    ),
    pytest.param(
        "/v1/messages",
        {"type": "message", "content": [{"type": "text", "text": 5}]},
        '"content[0].text" that is not a string',
        id="anthropic-text-not-a-string",
    ),
    pytest.param(
        "/v1/messages",
        {"type": "message", "content": 5},
        '"content" that is not a list',
        id="anthropic-content-not-a-list",
    ),
    pytest.param(
        "/rag/answer",
        # the mask-ids policy redacts, so the answer must be written out again
        {"result": {"answer": "Account ACCT-123456 is open.", "documents": [], "x": DEEP}},
        "sent a rag-json answer of a shape the gateway cannot read",
        id="rag-json-too-deep-to-rewrite",
    ),
]


@pytest.mark.parametrize("path, body, message", WHOLE)
async def test_a_whole_answer_of_the_wrong_shape_is_a_502_in_the_clients_protocol(
    proxy, upstream, path, body, message
):
    upstream.body = body
    resp = await proxy.post(path, json=REQUESTS[path], headers=headers_for(path))
    assert resp.status == 502
    assert resp.headers["x-governance-error-code"] == CODE
    assert_error_object(path, await resp.json(), message)
    await assert_next_request_is_served(proxy, upstream, path)


EARLY = [
    pytest.param(
        "/v1/chat/completions",
        chat_chunk({"role": "assistant"}) | {"choices": "x"},
        '"choices" that is not a list',
        id="chat-choices-not-a-list",
    ),
    pytest.param(
        "/v1/chat/completions",
        chat_chunk("hi"),
        '"choices[0].delta" that is not an object',
        id="chat-delta-not-an-object",
    ),
    pytest.param(
        "/v1/completions", {"choices": [7]}, '"choices[0]" that is not an object', id="completions"
    ),
    pytest.param(
        "/v1/responses",
        {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": [1]},
        '"delta" that is not a string',
        id="responses-delta-not-a-string",
    ),
    pytest.param(
        "/v1/messages",
        {"type": "content_block_start", "index": 0, "content_block": "text"},
        '"content_block" that is not an object',
        id="anthropic-block-not-an-object",
    ),
    pytest.param(
        "/rag/answer",
        {"delta": ["x"]},
        "rag-json stream event has a list at 'delta'",
        id="rag-json-text-not-a-string",
    ),
]


@pytest.mark.parametrize("path, event, message", EARLY)
async def test_a_stream_event_of_the_wrong_shape_before_any_byte_is_a_502(
    proxy, upstream, path, event, message
):
    upstream.events = [event]
    request = dict(REQUESTS[path], stream=True)
    resp = await proxy.post(path, json=request, headers=headers_for(path))
    assert resp.status == 502
    assert resp.headers["x-governance-error-code"] == CODE
    assert_error_object(path, await resp.json(), message)
    await assert_next_request_is_served(proxy, upstream, path)


LATE = [
    pytest.param(
        "/v1/chat/completions",
        chat_chunk("more"),
        '"choices[0].delta" that is not an object',
        id="chat-delta-not-an-object",
    ),
    pytest.param(
        "/v1/completions",
        {"choices": [{"index": 0, "text": {"t": "more"}}]},
        '"choices[0].text" that is not a string',
        id="completions-text-not-a-string",
    ),
    pytest.param(
        "/v1/responses",
        {"type": "response.output_text.delta", "output_index": "0", "delta": "more"},
        '"output_index" that is not an integer',
        id="responses-index-not-an-integer",
    ),
    pytest.param(
        "/v1/messages",
        {"type": "content_block_delta", "index": 0, "delta": "more"},
        '"delta" that is not an object',
        id="anthropic-delta-not-an-object",
    ),
    pytest.param(
        "/rag/answer",
        {"delta": {"text": "more"}},
        "rag-json stream event has an object at 'delta'",
        id="rag-json-text-not-a-string",
    ),
]


def error_event(path: str, raw: str) -> dict[str, Any]:
    """The protocol's in-stream error event, which must be the stream's last."""
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b.strip()]
    if path == "/v1/messages":
        assert blocks[-1].startswith("event: error\ndata: "), blocks[-1]
        return json.loads(blocks[-1].split("data: ", 1)[1])
    assert blocks[-1] == "data: [DONE]", blocks[-1]
    assert blocks[-2].startswith("data: "), blocks[-2]
    return json.loads(blocks[-2][len("data: ") :])


@pytest.mark.parametrize("path, event, message", LATE)
async def test_a_stream_event_of_the_wrong_shape_after_the_first_byte_ends_with_an_error_event(
    proxy, upstream, path, event, message
):
    upstream.gate.clear()
    upstream.events = [*text_events(path), WAIT, event]
    request = dict(REQUESTS[path], stream=True)
    async with asyncio.timeout(30):
        # the gateway sends its headers with the first released text
        resp = await proxy.post(path, json=request, headers=headers_for(path))
        assert resp.status == 200
        first = await resp.content.readany()
        assert first
        upstream.gate.set()
        raw = (first + await resp.content.read()).decode()
    assert_error_object(path, error_event(path, raw), message)
    # text cleared before the break reached the client, and nothing after it
    assert "more" not in raw
    await assert_next_request_is_served(proxy, upstream, path)
