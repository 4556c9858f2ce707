"""The ``fallback`` action and upstream failures move to the route's fallback once."""

from __future__ import annotations

import pytest

from gateway.config import Route
from tests.conftest import ADMIN_TOKEN, write_policies
from tests.test_proxy_basic import CHAT, chat_body, read_sse, stream_text

FALLBACK_POLICY = """\
policies:
  - id: retry-elsewhere
    kind: phrases
    phrases: [bad answer]
    action: fallback
    message: "No safe answer was available."
"""


def routes(primary, backup):
    return [
        Route(name="primary", upstream=primary.url, fallback="backup"),
        Route(name="backup", upstream=backup.url, path_prefix="/never/"),
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_breach_falls_back_before_first_byte(
    make_gateway, fake, fallback_fake, policy_dir, stream
):
    write_policies(policy_dir, FALLBACK_POLICY)
    fake.script.text = "this is a bad answer indeed"
    proxy, admin, gw = await make_gateway(routes(fake, fallback_fake))
    resp = await proxy.post(CHAT, json=chat_body(stream=stream))
    if stream:
        _, events = await read_sse(resp)
        text = stream_text(events)
    else:
        text = (await resp.json())["choices"][0]["message"]["content"]
    assert text == fallback_fake.script.text
    assert resp.headers["x-governance-route"] == "backup"
    assert len(fake.requests) == 1 and len(fallback_fake.requests) == 1
    await gw.decisions.flush()
    rec = await admin.get(
        f"/governance/v1/decisions/{resp.headers['x-governance-decision-id']}",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    record = await rec.json()
    assert [a["route"] for a in record["attempts"]] == ["primary", "backup"]
    assert record["attempts"][0]["fell_back"] == "retry-elsewhere"
    assert record["route"] == "backup" and record["action"] == "allow"


async def test_fallback_that_also_breaches_is_blocked(
    make_gateway, fake, fallback_fake, policy_dir
):
    write_policies(policy_dir, FALLBACK_POLICY)
    fake.script.text = fallback_fake.script.text = "another bad answer"
    proxy, _, _ = await make_gateway(routes(fake, fallback_fake))
    body = await (await proxy.post(CHAT, json=chat_body())).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"] == "No safe answer was available."
    assert len(fallback_fake.requests) == 1


async def test_fallback_without_a_fallback_route_blocks(make_gateway, fake, policy_dir):
    write_policies(policy_dir, FALLBACK_POLICY)
    fake.script.text = "a bad answer"
    proxy, _, _ = await make_gateway(upstream=fake)
    body = await (await proxy.post(CHAT, json=chat_body())).json()
    assert body["choices"][0]["finish_reason"] == "content_filter"


async def test_breach_after_first_byte_cuts_instead(make_gateway, fake, fallback_fake, policy_dir):
    write_policies(policy_dir, FALLBACK_POLICY)
    fake.script.text = "word " * 40 + "and then a bad answer"
    fake.script.chunk = 5
    proxy, _, _ = await make_gateway(routes(fake, fallback_fake))
    resp = await proxy.post(CHAT, json=chat_body(stream=True))
    raw, events = await read_sse(resp)
    assert b"bad answer" not in raw
    assert stream_text(events).startswith("word word")
    finishes = [
        c["finish_reason"]
        for e in events
        if isinstance(e, dict)
        for c in e["choices"]
        if c.get("finish_reason")
    ]
    assert finishes == ["content_filter"]
    assert fallback_fake.requests == []


def test_fallback_must_be_another_upstream():
    from gateway.config import Settings

    with pytest.raises(ValueError, match="same upstream"):
        Settings(
            routes=[
                Route(name="a", upstream="http://x", fallback="b"),
                Route(name="b", upstream="http://x/"),
            ]
        )
