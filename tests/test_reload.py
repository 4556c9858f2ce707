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


# -- files YAML cannot read, and failures that are not about a file ----------------------

BELL = "policies:\n  - id: no-forbidden\n    kind: phrases\n    phrases: ['tomatoes\x07']\n"
BELL_ERROR = (
    "main.yaml:4:24: yaml-syntax: character U+0007 is not allowed in YAML "
    "(write control characters as escapes in a double-quoted string)"
)
DEEP = "policies: " + "[" * 3000 + "]" * 3000 + "\n"
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


async def _state(admin) -> dict:
    resp = await admin.get("/governance/v1/policies", headers=AUTH)
    assert resp.status == 200
    return await resp.json()


async def _until(admin, check, seconds: float = 5.0) -> dict:
    """Poll the admin API until ``check(state)`` holds (bounded), and return that state."""
    state = await _state(admin)
    for _ in range(int(seconds / 0.05)):
        if check(state):
            return state
        await asyncio.sleep(0.05)
        state = await _state(admin)
    raise AssertionError(f"the policy state never got there: {state}")


async def _decision(proxy) -> str:
    resp = await proxy.post(CHAT, json=chat_body())
    await resp.read()
    return resp.headers["x-governance-decision"]


def _watcher(gw) -> asyncio.Task:
    [task] = [t for t in gw.background if t.get_name() == "policy-watch"]
    return task


async def test_watcher_survives_unreadable_files_and_takes_the_next_good_edit(
    make_gateway, fake, policy_dir, caplog
):
    fake.script.text = "I like tomatoes in summer."
    proxy, admin, gw = await make_gateway(upstream=fake)
    first = (await _state(admin))["revision"]
    assert await _decision(proxy) == "allow"

    write_policies(policy_dir, BELL)
    state = await _until(admin, lambda s: s["last_reload_errors"])
    assert state["last_reload_errors"] == [f"{policy_dir}/{BELL_ERROR}"]
    assert state["revision"] == first
    # the log says it too, with the position
    assert any(r.getMessage() == f"{policy_dir}/{BELL_ERROR}" for r in caplog.records)

    write_policies(policy_dir, DEEP)
    state = await _until(admin, lambda s: s["last_reload_errors"] != [f"{policy_dir}/{BELL_ERROR}"])
    [line] = state["last_reload_errors"]
    assert line.startswith(f"{policy_dir}/main.yaml:1:") and ": yaml-too-deep: " in line
    assert not _watcher(gw).done()

    write_policies(policy_dir, GOOD)
    state = await _until(admin, lambda s: s["revision"] != first)
    assert state["last_reload_errors"] is None
    assert [p["id"] for p in state["policies"]] == ["no-forbidden"]
    assert await _decision(proxy) == "block"


async def test_manual_reload_answers_json_with_the_positioned_errors(
    make_gateway, fake, policy_dir
):
    proxy, admin, gw = await make_gateway(upstream=fake)
    first = gw.policies.current.revision
    for text, expected in [
        (BELL, [f"{policy_dir}/{BELL_ERROR}"]),
        # an ordinary invalid policy answers the same way
        (BROKEN, None),
    ]:
        write_policies(policy_dir, text)
        resp = await admin.post("/governance/v1/policies/reload", headers=AUTH)
        assert resp.status == 422
        assert resp.content_type == "application/json"
        body = await resp.json()
        assert body["reloaded"] is False and body["revision"] == first
        assert body["errors"] and all(
            e.startswith(f"{policy_dir}/main.yaml:") for e in body["errors"]
        )
        if expected is not None:
            assert body["errors"] == expected


async def test_a_reload_that_crashes_is_recorded_and_watching_goes_on(
    make_gateway, fake, policy_dir, monkeypatch, caplog
):
    fake.script.text = "I like tomatoes in summer."
    proxy, admin, gw = await make_gateway(upstream=fake)
    first = gw.policies.current.revision

    def boom(paths):
        raise RuntimeError("boom")

    monkeypatch.setattr(gw.policies, "load", boom)
    resp = await admin.post("/governance/v1/policies/reload", headers=AUTH)
    assert resp.status == 422
    body = await resp.json()
    assert body["reloaded"] is False and body["revision"] == first
    assert body["errors"] == [f"{policy_dir}: internal-error: RuntimeError: boom"]
    assert any("policy reload crashed" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()

    # the watcher's own look at the files fails once; it keeps watching
    real = gw.policies._fingerprint
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("stat failed")
        return real()

    monkeypatch.setattr(gw.policies, "_fingerprint", flaky)
    for _ in range(100):
        if calls["n"] > 1:
            break
        await asyncio.sleep(0.05)
    assert calls["n"] > 1 and not _watcher(gw).done()

    write_policies(policy_dir, GOOD)
    state = await _until(admin, lambda s: s["revision"] != first)
    assert state["last_reload_errors"] is None
    assert await _decision(proxy) == "block"
