"""``review.on_store_down``: what a review action does when the store cannot take the hold.

The outage is real: another connection holds SQLite's exclusive lock, so
the gateway's insert waits out its busy timeout and fails as it would on a
full or locked disk.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import write_policies

HOLDING = """\
policies:
  - id: hold-sauce
    kind: phrases
    phrases: ["secret sauce"]
    action: review
    severity: high
"""
SAUCE = "Our recipe uses the secret sauce from grandma, mixed well."
CHAT = "/v1/chat/completions"


def chat(stream: bool) -> dict:
    return {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "recipe?"}],
        "stream": stream,
    }


@contextlib.contextmanager
def store_locked(db: Path) -> Iterator[None]:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def streamed_text(raw: str) -> str:
    out = []
    for line in raw.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                out.append(choice["delta"].get("content") or "")
    return "".join(out)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_allow_releases_the_answer_recorded_as_allowed_with_the_error(
    make_gateway, fake, policy_dir, tmp_path, stream
):
    write_policies(policy_dir, HOLDING)
    fake.script.text = SAUCE
    proxy, _, gw = await make_gateway(upstream=fake, review={"on_store_down": "allow"})
    with store_locked(tmp_path / "gateway.db"):
        resp = await proxy.post(CHAT, json=chat(stream))
        raw = await resp.text()
    assert resp.status == 200
    assert resp.headers["x-governance-review-status"] == "unavailable"
    assert "x-governance-review-id" not in resp.headers
    text = streamed_text(raw) if stream else json.loads(raw)["choices"][0]["message"]["content"]
    assert text == SAUCE
    decision_id = resp.headers["x-governance-decision-id"]
    await gw.decisions.flush()
    record = await gw.store.get_decision(decision_id)
    assert record is not None
    # released, but never a pass: the breach and the failed hold are both on record
    assert record["action"] == "allow"
    assert record["error"]["code"] == "review-unavailable"
    assert record["breached"] == ["hold-sauce"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_block_by_default_releases_nothing(make_gateway, fake, policy_dir, tmp_path, stream):
    write_policies(policy_dir, HOLDING)
    fake.script.text = SAUCE
    proxy, _, _ = await make_gateway(upstream=fake)
    with store_locked(tmp_path / "gateway.db"):
        resp = await proxy.post(CHAT, json=chat(stream))
        raw = await resp.text()
    assert "secret sauce" not in raw
    assert "review-unavailable" in raw


HOLDING_AND_REDACTING = (
    HOLDING
    + """\
  - id: mask-grandma
    kind: phrases
    phrases: ["grandma"]
    action: redact
"""
)


async def test_allow_never_releases_what_another_policy_redacts(
    make_gateway, fake, policy_dir, tmp_path
):
    write_policies(policy_dir, HOLDING_AND_REDACTING)
    fake.script.text = SAUCE
    proxy, _, _ = await make_gateway(upstream=fake, review={"on_store_down": "allow"})
    with store_locked(tmp_path / "gateway.db"):
        resp = await proxy.post(CHAT, json=chat(False))
        raw = await resp.text()
    # released unreviewed it would go out unredacted: refused as in block mode
    assert resp.status == 503
    assert "grandma" not in raw and "review-unavailable" in raw
