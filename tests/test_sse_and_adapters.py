"""SSE parsing in any split, and the adapters' handling of text, sources and rewrites."""

from __future__ import annotations

import json

import pytest

from gateway.config import Route
from gateway.contract.sources import normalize_sources
from gateway.errors import UpstreamMalformed
from gateway.proxy.adapters import Adapters
from gateway.proxy.sse import SSEParser

STREAM = (
    b'event: a\ndata: {"x": 1}\n\n: comment\n\ndata: line1\ndata: line2\r\n\r\n'
    b"id: 7\ndata: last\r\rdata: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 1000])
def test_sse_parser_any_split(size):
    parser = SSEParser()
    events = []
    for i in range(0, len(STREAM), size):
        events += parser.feed(STREAM[i : i + size])
    events += parser.close()
    assert [(e.event, e.data, e.id) for e in events] == [
        ("a", '{"x": 1}', None),
        (None, "line1\nline2", None),
        (None, "last", "7"),
        # the last event id carries over to later events, as the SSE spec says
        (None, "[DONE]", "7"),
    ]


def test_sse_parser_rejects_non_utf8():
    with pytest.raises(UpstreamMalformed):
        SSEParser().feed(b"data: \xff\xfe\n\n")


@pytest.mark.parametrize(
    "protocol, path, expected",
    [
        ("auto", "/v1/chat/completions", "openai-chat"),
        ("auto", "/v1/completions", "openai-completions"),
        ("auto", "/v1/responses", "openai-responses"),
        ("auto", "/v1/messages", "anthropic-messages"),
        ("openai", "/v1/messages", None),
        ("anthropic", "/v1/chat/completions", None),
        ("auto", "/v1/embeddings", None),
        ("auto", "/v1/responses/resp_123", None),
    ],
)
def test_adapter_selection(protocol, path, expected):
    route = Route(name="r", upstream="http://upstream.test", protocol=protocol)
    adapter = Adapters([route]).for_route(route, path)
    assert (adapter.protocol if adapter else None) == expected


def test_sources_are_normalised_and_problems_reported():
    items, errors = normalize_sources(
        [{"doc_id": "a", "text": "t"}, "https://x.test/p", {"title": "no id"}, 5], "sources"
    )
    assert [s["id"] for s in items] == ["a", "https://x.test/p", "2"]
    assert errors == ["sources[3]: expected an object or a string, got int"]
    items, errors = normalize_sources({"citations": [{"id": 1}]}, "context")
    assert items == [{"id": "1"}] and errors == []
    assert normalize_sources("nope", "s")[1] == ["s: expected a list of sources, got str"]


RAG_ROUTE = {
    "name": "rag",
    "protocol": "rag-json",
    "path_prefix": "/rag/",
    "rag": {
        "text_path": "result.answer",
        "sources_path": "result.documents",
        "query_path": "question",
    },
}


async def test_rag_json_whole_and_streamed(make_gateway, fake, policy_dir):
    fake.script.text = "Your balance for ACCT-123456 is fine."
    fake.script.extra = {"sources": [{"id": "kb-1", "updated_at": "2026-01-01"}]}
    routes = [Route(upstream=fake.url, **RAG_ROUTE)]
    proxy, admin, gw = await make_gateway(routes)
    resp = await proxy.post("/rag/answer", json={"question": "balance?"})
    body = await resp.json()
    assert body["result"]["answer"] == "Your balance for [ACCOUNT] is fine."
    assert body["result"]["documents"][0]["id"] == "kb-1"
    resp = await proxy.post("/rag/answer", json={"question": "balance?", "stream": True})
    raw = (await resp.read()).decode()
    assert "ACCT-123456" not in raw
    deltas = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    assert "".join(d.get("delta", "") for d in deltas) == "Your balance for [ACCOUNT] is fine."
    assert raw.rstrip().endswith("data: [DONE]")


async def test_rag_json_missing_answer_is_malformed(make_gateway, aiohttp_server):
    from aiohttp import web

    async def answer(request):
        return web.json_response({"result": {"documents": []}})

    app = web.Application()
    app.router.add_post("/rag/answer", answer)
    server = await aiohttp_server(app)
    routes = [Route(upstream=str(server.make_url("")).rstrip("/"), **RAG_ROUTE)]
    proxy, _, _ = await make_gateway(routes)
    resp = await proxy.post("/rag/answer", json={"question": "q"})
    body = await resp.json()
    assert resp.status == 502 and "no answer at 'result.answer'" in body["error"]["message"]


async def test_responses_stream_rewrites_closing_events_with_redacted_text(make_gateway, fake):
    fake.script.text = "Account ACCT-123456 is open."
    fake.script.chunk = 3
    proxy, _, _ = await make_gateway(upstream=fake)
    resp = await proxy.post("/v1/responses", json={"model": "m", "input": "x", "stream": True})
    raw = (await resp.read()).decode()
    assert "ACCT-123456" not in raw
    events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["text"] == "Account [ACCOUNT] is open."
    final = events[-1]
    assert final["type"] == "response.completed"
    assert final["response"]["output"][0]["content"][0]["text"] == "Account [ACCOUNT] is open."
    numbers = [e["sequence_number"] for e in events]
    assert numbers == list(range(len(events)))


async def test_sources_from_header_reach_detectors(make_gateway, fake, policy_dir):
    fake.script.headers = {"x-rag-sources": json.dumps([{"id": "doc-9"}])}
    proxy, admin, gw = await make_gateway(upstream=fake)
    seen: list = []
    original = gw.policies.current.policies[0].detector.start

    def spy(ctx):
        seen.append([s["id"] for s in ctx.sources])
        return original(ctx)

    gw.policies.current.policies[0].detector.start = spy
    await (
        await proxy.post(
            "/v1/chat/completions", json={"model": "m", "messages": [], "stream": False}
        )
    ).read()
    assert ["doc-9"] in seen


async def test_anthropic_stream_blocked_before_text_is_well_formed(make_gateway, fake):
    fake.script.text = "the launch codes"
    proxy, _, _ = await make_gateway(upstream=fake)
    resp = await proxy.post(
        "/v1/messages",
        json={
            "model": "c",
            "max_tokens": 5,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    raw = (await resp.read()).decode()
    kinds = [line[7:] for line in raw.splitlines() if line.startswith("event: ")]
    assert kinds == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert "Blocked by policy." in raw and "launch" not in raw
    assert '"stop_reason":"refusal"' in raw


async def test_chat_stream_keeps_role_chunk_first(make_gateway, fake):
    fake.script.text = "plain words " * 10
    proxy, _, _ = await make_gateway(upstream=fake)
    resp = await proxy.post(
        "/v1/chat/completions", json={"model": "m", "messages": [], "stream": True}
    )
    raw = (await resp.read()).decode()
    chunks = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == fake.script.text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
