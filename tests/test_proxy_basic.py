from __future__ import annotations

import json

from gateway.config import Route
from tests.conftest import ADMIN_TOKEN

CHAT = "/v1/chat/completions"


def chat_body(stream: bool = False, **extra):
    return {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        **extra,
    }


async def read_sse(resp) -> tuple[bytes, list]:
    raw = await resp.read()
    events = []
    for block in raw.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else json.loads(data))
    return raw, events


def stream_text(events) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict)
        for c in e.get("choices", [])
    )


async def test_clean_answer_is_served_byte_for_byte(make_gateway, fake):
    proxy, _, _ = await make_gateway(upstream=fake)
    resp = await proxy.post(CHAT, json=chat_body())
    assert resp.status == 200
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == fake.script.text
    assert body["system_fingerprint"] == "fp_fake"
    assert resp.headers["x-governance-decision"] == "allow"
    assert len(resp.headers["x-governance-decision-id"]) == 32
    assert resp.headers["x-request-id"] == "req_fake"


async def test_blocked_answer_is_a_content_filter_completion(make_gateway, fake):
    fake.script.text = "Sure, the launch codes are 1234."
    proxy, admin, _ = await make_gateway(upstream=fake)
    resp = await proxy.post(CHAT, json=chat_body())
    body = await resp.json()
    assert resp.status == 200
    choice = body["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"] == "Blocked by policy."
    assert "launch" not in json.dumps(body)
    assert resp.headers["x-governance-decision"] == "block"
    decision_id = resp.headers["x-governance-decision-id"]
    rec = await admin.get(
        f"/governance/v1/decisions/{decision_id}",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    record = await rec.json()
    assert record["action"] == "block"
    statuses = {p["id"]: p["status"] for p in record["policies"]}
    assert statuses == {"no-forbidden": "breach", "mask-ids": "pass", "watch-competitor": "pass"}
    finding = record["policies"][0]["findings"][0]
    assert finding["evidence"]["match"] == "launch codes"


async def test_redact_masks_only_the_match(make_gateway, fake):
    fake.script.text = "Your account ACCT-123456 is active; ACCT-999999 too."
    proxy, _, _ = await make_gateway(upstream=fake)
    body = await (await proxy.post(CHAT, json=chat_body())).json()
    assert body["choices"][0]["message"]["content"] == (
        "Your account [ACCOUNT] is active; [ACCOUNT] too."
    )


async def test_stream_split_phrase_never_reaches_client(make_gateway, fake):
    fake.script.text = (
        "Here you go, after a long and winding preamble about many things: "
        "the launch codes are 0000, enjoy."
    )
    fake.script.chunk = 1
    proxy, _, _ = await make_gateway(upstream=fake)
    resp = await proxy.post(CHAT, json=chat_body(stream=True))
    raw, events = await read_sse(resp)
    assert b"launch" not in raw and b"codes" not in raw
    text = stream_text(events)
    assert "Here you go" in text
    finishes = [
        c["finish_reason"]
        for e in events
        if isinstance(e, dict)
        for c in e.get("choices", [])
        if c.get("finish_reason")
    ]
    assert finishes == ["content_filter"]
    assert events[-1] == "[DONE]"


async def test_stream_clean_text_arrives_whole(make_gateway, fake):
    fake.script.text = "A perfectly ordinary answer about gardening and tomatoes."
    fake.script.chunk = 3
    proxy, _, _ = await make_gateway(upstream=fake)
    resp = await proxy.post(CHAT, json=chat_body(stream=True))
    _, events = await read_sse(resp)
    assert stream_text(events) == fake.script.text
    assert events[-1] == "[DONE]"


async def test_passthrough_paths_untouched(make_gateway, fake):
    proxy, _, _ = await make_gateway(upstream=fake)
    resp = await proxy.get("/v1/models", headers={"authorization": "Bearer sk-client"})
    assert resp.status == 200
    assert (await resp.json())["data"][0]["id"] == "gpt-test"
    assert resp.headers["x-governance-decision"] == "passthrough"
    assert fake.requests[-1]["headers"]["Authorization"] == "Bearer sk-client"


async def test_fallback_route_on_upstream_500(make_gateway, fake, fallback_fake):
    fake.script.fault = "500"
    routes = [
        Route(name="primary", upstream=fake.url, fallback="backup"),
        Route(name="backup", upstream=fallback_fake.url, path_prefix="/never/"),
    ]
    proxy, _, _ = await make_gateway(routes)
    resp = await proxy.post(CHAT, json=chat_body())
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == fallback_fake.script.text
    assert resp.headers["x-governance-route"] == "backup"
