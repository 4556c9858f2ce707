"""A base URL with one /v1 too many gets a 404 that names the fix, not the upstream's 404."""

from __future__ import annotations

import asyncio

import anthropic
import pytest

AMSG = {
    "model": "claude-test",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "hello"}],
}


async def test_anthropic_sdk_with_v1_in_its_base_url_is_told_to_drop_it(make_gateway, fake):
    proxy, _, _ = await make_gateway(upstream=fake)
    client = anthropic.Anthropic(
        base_url=str(proxy.make_url("/v1")), api_key="sk-ant-client", max_retries=0
    )
    with pytest.raises(anthropic.NotFoundError) as info:
        await asyncio.to_thread(client.messages.create, **AMSG)
    assert info.value.status_code == 404
    # Anthropic's own error shape, with a message that says what to change
    assert info.value.body["type"] == "error"
    message = info.value.body["error"]["message"]
    assert "/v1/v1/messages" in message and "without /v1" in message
    assert fake.requests == []
    # the root, as the README says, works
    client = anthropic.Anthropic(
        base_url=str(proxy.make_url("")), api_key="sk-ant-client", max_retries=0
    )
    answer = await asyncio.to_thread(client.messages.create, **AMSG)
    assert answer.content[0].text == fake.script.text
    assert [r["path"] for r in fake.requests] == ["/v1/messages"]


async def test_a_doubled_openai_path_is_a_no_route_error_in_openai_shape(make_gateway, fake):
    proxy, _, _ = await make_gateway(upstream=fake)
    resp = await proxy.post(
        "/v1/v1/chat/completions",
        json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": "Bearer sk-client"},
    )
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["code"] == "no-route" and "repeats /v1" in error["message"]
    assert fake.requests == []
