"""Each upstream fault, and each bad request, gets an exact, well-formed answer."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from gateway.config import Route, Timeouts
from tests.conftest import ADMIN_TOKEN
from tests.test_proxy_basic import CHAT, chat_body, read_sse, stream_text

FAST = Timeouts(connect=1, first_byte=0.5, idle=0.5, total=5)
LONG_TEXT = "word " * 60


def route(url: str) -> list[Route]:
    return [Route(name="default", upstream=url, timeouts=FAST)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def expect_error(resp, status: int, code: str) -> dict:
    assert resp.status == status
    body = await resp.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert resp.headers["x-governance-decision"] == "error"
    assert resp.headers["x-governance-error-code"] == code
    return body


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "fault, status, code",
    [
        ("500", 502, "upstream-error"),
        ("malformed-json", 502, "upstream-malformed-response"),
        ("html", 502, "upstream-malformed-response"),
        ("hang", 504, "upstream-timeout"),
    ],
)
async def test_upstream_fault_before_first_byte(make_gateway, fake, fault, status, code, stream):
    fake.script.fault = fault
    proxy, _, _ = await make_gateway(route(fake.url))
    resp = await proxy.post(CHAT, json=chat_body(stream=stream))
    await expect_error(resp, status, code)


async def test_refused_connection(make_gateway):
    proxy, _, _ = await make_gateway(route(f"http://127.0.0.1:{free_port()}"))
    resp = await proxy.post(CHAT, json=chat_body())
    body = await expect_error(resp, 502, "upstream-unreachable")
    assert "cannot connect" in body["error"]["message"]


@pytest.mark.parametrize(
    "fault, code",
    [
        ("bad-sse", "upstream-malformed-response"),
        ("no-terminator", "upstream-malformed-response"),
        ("stall-mid-stream", "upstream-timeout"),
        ("drop-mid-stream", "upstream-disconnected"),
    ],
)
async def test_stream_fault_after_first_byte_ends_with_error_event(make_gateway, fake, fault, code):
    fake.script.text = LONG_TEXT
    fake.script.chunk = 5
    fake.script.fault = fault
    proxy, _, _ = await make_gateway(route(fake.url))
    resp = await proxy.post(CHAT, json=chat_body(stream=True))
    assert resp.status == 200
    raw, events = await read_sse(resp)
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1 and errors[0]["error"]["code"] == code
    assert events[-1] == "[DONE]"
    assert LONG_TEXT.startswith(stream_text(events))


async def test_anthropic_errors_use_anthropic_shape(make_gateway, fake):
    fake.script.fault = "500"
    proxy, _, _ = await make_gateway(route(fake.url))
    resp = await proxy.post(
        "/v1/messages",
        json={"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    )
    assert resp.status == 502
    body = await resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert body["error"]["code"] == "upstream-error"


async def test_bad_client_json_is_400(make_gateway, fake):
    proxy, _, _ = await make_gateway(route(fake.url))
    resp = await proxy.post(CHAT, data=b"{not json", headers={"content-type": "application/json"})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "invalid-request"
    assert body["error"]["type"] == "invalid_request_error"
    resp = await proxy.post(CHAT, json=[1, 2])
    assert resp.status == 400 and "JSON object" in (await resp.json())["error"]["message"]
    assert fake.requests == []


async def test_oversized_body_is_413(make_gateway, fake):
    proxy, _, _ = await make_gateway(route(fake.url), limits={"max_body_bytes": 1000})
    big = chat_body(messages=[{"role": "user", "content": "x" * 5000}])
    resp = await proxy.post(CHAT, json=big)
    body = await resp.json()
    assert resp.status == 413 and body["error"]["code"] == "request-too-large"
    assert fake.requests == []


async def test_unknown_path_prefix_is_404(make_gateway, fake):
    routes = [Route(name="only", upstream=fake.url, path_prefix="/v1/")]
    proxy, _, _ = await make_gateway(routes)
    resp = await proxy.get("/other")
    body = await resp.json()
    assert resp.status == 404 and body["error"]["code"] == "no-route"


async def test_client_disconnect_cancels_upstream(make_gateway, fake):
    fake.script.text = "slow words " * 200
    fake.script.chunk = 3
    fake.script.delay = 0.01
    proxy, admin, gw = await make_gateway(route(fake.url))
    resp = await proxy.post(CHAT, json=chat_body(stream=True))
    await resp.content.readany()
    decision_id = resp.headers["x-governance-decision-id"]
    resp.close()
    for _ in range(200):
        if fake.cancelled:
            break
        await asyncio.sleep(0.02)
    assert fake.cancelled == 1 and fake.finished_streams == 0
    await gw.decisions.flush()
    rec = await admin.get(
        f"/governance/v1/decisions/{decision_id}",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    record = await rec.json()
    assert record["client_disconnected"] is True


async def test_upstream_4xx_is_relayed_unchanged(make_gateway, aiohttp_server):
    from aiohttp import web

    async def unauthorized(request):
        return web.json_response(
            {
                "error": {
                    "message": "Incorrect API key",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
            status=401,
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", unauthorized)
    server = await aiohttp_server(app)
    proxy, _, _ = await make_gateway(route(str(server.make_url("")).rstrip("/")))
    resp = await proxy.post(CHAT, json=chat_body())
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_api_key"
    assert resp.headers["x-governance-decision-id"]


async def test_injected_key_replaces_client_key(make_gateway, fake, monkeypatch):
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "sk-from-env")
    routes = [
        Route(
            name="default",
            upstream=fake.url,
            api_key={"mode": "inject", "env": "TEST_UPSTREAM_KEY"},
        )
    ]
    proxy, _, _ = await make_gateway(routes)
    await proxy.post(CHAT, json=chat_body(), headers={"authorization": "Bearer sk-client"})
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-from-env"
    monkeypatch.delenv("TEST_UPSTREAM_KEY")
    resp = await proxy.post(CHAT, json=chat_body())
    body = await resp.json()
    assert resp.status == 500 and body["error"]["code"] == "upstream-credential-missing"
    assert "sk-from-env" not in json.dumps(body)


async def test_an_injected_key_goes_where_the_clients_protocol_puts_it(
    make_gateway, fake, monkeypatch
):
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "sk-from-env")
    inject = {"mode": "inject", "env": "TEST_UPSTREAM_KEY"}
    proxy, _, _ = await make_gateway([Route(name="default", upstream=fake.url, api_key=inject)])
    messages = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    await proxy.post("/v1/messages", json=messages, headers={"x-api-key": "sk-client"})
    assert fake.requests[-1]["headers"]["x-api-key"] == "sk-from-env"
    assert "authorization" not in fake.requests[-1]["headers"]
    # a path no adapter governs: an Anthropic SDK (its version header) gets x-api-key too,
    # any other client the bearer header
    await proxy.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
    assert fake.requests[-1]["headers"]["x-api-key"] == "sk-from-env"
    await proxy.get("/v1/models")
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-from-env"


async def test_a_stream_that_breaks_off_releases_its_tail_before_the_error_in_order(
    make_gateway, aiohttp_server
):
    """Text held back for scanning goes out when the stream breaks; what came after it
    upstream (a usage chunk) is not sent ahead of it."""
    from aiohttp import web

    text = "Plain words that hold no forbidden term at all, said slowly."

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        for i in range(0, len(text), 5):
            delta = {"content": text[i : i + 5]}
            chunk = dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": None}])
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = dict(base, choices=[], usage={"prompt_tokens": 1, "completion_tokens": 12})
        await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
        return resp  # ends with no [DONE]: the gateway reports the break

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    proxy, _, _ = await make_gateway(route(str(server.make_url("")).rstrip("/")))
    resp = await proxy.post(CHAT, json=chat_body(stream=True))
    _, events = await read_sse(resp)
    assert stream_text(events) == text
    errors = [i for i, e in enumerate(events) if isinstance(e, dict) and "error" in e]
    texts = [i for i, e in enumerate(events) if isinstance(e, dict) and e.get("choices")]
    assert len(errors) == 1 and errors[0] > max(texts)
    assert events[errors[0]]["error"]["code"] == "upstream-malformed-response"
    # the usage chunk came after the held tail upstream: it never jumps ahead of it
    assert not any(isinstance(e, dict) and "usage" in e for e in events[: max(texts)])
