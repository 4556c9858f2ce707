"""What each action does for the client, and the logs that go with it."""

from __future__ import annotations

import json
import logging

from tests.conftest import write_policies
from tests.test_proxy_basic import CHAT, chat_body, read_sse

POLICIES = """\
policies:
  - id: refuse-loudly
    kind: phrases
    phrases: [forbidden phrase]
    error_response: true
    message: "Refused by policy."
  - id: flag-long
    kind: length
    max_chars: 10
    action: annotate
  - id: hold-it
    kind: phrases
    phrases: [needs a human]
    action: review
"""


async def test_error_response_option(make_gateway, fake, policy_dir):
    write_policies(policy_dir, POLICIES)
    fake.script.text = "the forbidden phrase"
    proxy, _, _ = await make_gateway(upstream=fake)
    resp = await proxy.post(CHAT, json=chat_body())
    body = await resp.json()
    assert resp.status == 400
    assert body["error"] == {
        "message": "Refused by policy.",
        "type": "invalid_request_error",
        "param": None,
        "code": "content-filtered",
    }
    resp = await proxy.post(CHAT, json=chat_body(stream=True))
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "content-filtered"


async def test_annotate_passes_the_answer_with_headers(make_gateway, fake, policy_dir):
    write_policies(policy_dir, POLICIES)
    fake.script.text = "a long but harmless answer"
    proxy, _, _ = await make_gateway(upstream=fake)
    resp = await proxy.post(CHAT, json=chat_body())
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == fake.script.text
    assert resp.headers["x-governance-decision"] == "annotate"
    assert resp.headers["x-governance-policies"] == "flag-long"


async def test_review_without_a_queue_holds_with_a_message(make_gateway, fake, policy_dir):
    write_policies(policy_dir, POLICIES)
    fake.script.text = "this one needs a human"
    proxy, _, gw = await make_gateway(upstream=fake, subsystems=[])
    assert gw.hold is None
    resp = await proxy.post(CHAT, json=chat_body())
    body = await resp.json()
    assert resp.headers["x-governance-decision"] == "review"
    assert "x-governance-review-id" not in resp.headers
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["choices"][0]["message"]["content"] == "This response is held for review."


async def test_review_with_the_queue_names_the_item(make_gateway, fake, policy_dir):
    write_policies(policy_dir, POLICIES)
    fake.script.text = "this one needs a human"
    proxy, _, gw = await make_gateway(upstream=fake)
    resp = await proxy.post(CHAT, json=chat_body())
    body = await resp.json()
    assert resp.headers["x-governance-decision"] == "review"
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["x_governance"]["review_id"] == resp.headers["x-governance-review-id"]


async def test_logs_are_json_with_the_decision_id(make_gateway, fake, caplog):
    from gateway.observability.logs import JsonFormatter

    fake.script.fault = "500"
    proxy, _, _ = await make_gateway(upstream=fake)
    with caplog.at_level(logging.WARNING):
        resp = await proxy.post(CHAT, json=chat_body(stream=True))
        await read_sse(resp) if resp.status == 200 else await resp.read()
    decision_id = resp.headers["x-governance-decision-id"]
    formatter = JsonFormatter()
    lines = [
        json.loads(formatter.format(r)) for r in caplog.records if r.name.startswith("gateway")
    ]
    assert lines, "expected the upstream failure to be logged"
    assert all(line["decision_id"] == decision_id for line in lines)
