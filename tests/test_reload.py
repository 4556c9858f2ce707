"""Hot reload under load: good files swap in, broken ones keep the old set serving."""

from __future__ import annotations

import asyncio

from tests.conftest import ADMIN_TOKEN, write_policies
from tests.test_proxy_basic import CHAT, chat_body

GOOD = """\
policies:
  - id: no-forbidden
    kind: phrases
    phrases: ["forbidden phrase", "tomatoes"]
    action: block
"""
BROKEN = """\
policies:
  - id: no-forbidden
    kind: phrases
    phrases: ["forbidden phrase"]
    severty: high
  - id: bad-length
    kind: length
    max_chars: zero
"""


async def test_reload_under_load(make_gateway, fake, policy_dir, caplog):
    fake.script.text = "I like tomatoes in summer."
    proxy, admin, gw = await make_gateway(upstream=fake)
    first = gw.policies.current.revision
    statuses: list[int] = []
    decisions: list[str] = []
    stop = asyncio.Event()

    async def load():
        while not stop.is_set():
            resp = await proxy.post(CHAT, json=chat_body())
            statuses.append(resp.status)
            decisions.append(resp.headers["x-governance-decision"])
            await resp.read()

    workers = [asyncio.create_task(load()) for _ in range(4)]
    await asyncio.sleep(0.3)
    write_policies(policy_dir, GOOD)
    for _ in range(300):
        if gw.policies.current.revision != first:
            break
        await asyncio.sleep(0.05)
    good = gw.policies.current.revision
    assert good != first
    await asyncio.sleep(0.3)
    write_policies(policy_dir, BROKEN)
    for _ in range(300):
        if gw.policies.last_error:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*workers)

    assert statuses and all(s == 200 for s in statuses)
    # the new rule applied once loaded, and kept applying after the broken write
    assert "block" in decisions and decisions[-1] == "block"
    assert gw.policies.current.revision == good
    errors = gw.policies.last_error
    assert any(
        e.endswith("main.yaml:5:5: unknown-field: no-forbidden.severty (did you mean severity?)")
        for e in errors
    ), errors
    assert any(":8:16: invalid-type: bad-length.max_chars" in e for e in errors), errors
    assert any("policy reload failed" in r.getMessage() for r in caplog.records)
    resp = await admin.get(
        "/governance/v1/policies", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    state = await resp.json()
    assert state["revision"] == good and state["last_reload_errors"] == errors
