"""Copyright policies in the running gateway: streams, redaction and index hot swap."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.config import Route
from gateway.index import BuildParams, add_documents, build_index
from tests.conftest import ADMIN_TOKEN, write_policies
from tests.test_proxy_basic import CHAT, chat_body, read_sse, stream_text

# real text: the opening of Lincoln's Gettysburg Address (public domain)
GETTYSBURG = (
    "Four score and seven years ago our fathers brought forth on this continent, a new "
    "nation, conceived in Liberty, and dedicated to the proposition that all men are created "
    "equal. Now we are engaged in a great civil war, testing whether that nation, or any nation "
    "so conceived and so dedicated, can long endure. We are met on a great battle-field of that "
    "war."
)
# and of Washington's Farewell Address
FAREWELL = (
    "The period for a new election of a citizen to administer the executive government of the "
    "United States being not far distant, and the time actually arrived when your thoughts must "
    "be employed in designating the person who is to be clothed with that important trust, it "
    "appears to me proper, especially as it may conduce to a more distinct expression of the "
    "public voice, that I should now apprise you of the resolution I have formed."
)
LEXICAL = BuildParams(semantic=False)
FILLER = (
    "Here is a short overview written in my own words about gardens, weather and "
    "the best time to plant beans in the spring. "
)


def corpus(path: Path, docs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": t, "title": i}) + "\n" for i, t in docs))
    return path


POLICY = """\
policies:
  - id: no-copies
    kind: copyright
    index: books
    match: [verbatim, near_verbatim]
    action: {action}
    redact_with: "[copied]"
"""


@pytest.fixture
def books(tmp_path: Path) -> Path:
    out = tmp_path / "indexes" / "books"
    build_index(corpus(tmp_path / "c.jsonl", [("gettysburg", GETTYSBURG)]), out, LEXICAL)
    return out


async def start(make_gateway, fake, policy_dir, books, action="block"):
    write_policies(policy_dir, POLICY.format(action=action))
    return await make_gateway(
        [Route(name="default", upstream=fake.url)], indexes={"books": str(books)}
    )


async def test_copied_span_across_many_chunks_is_never_released(
    make_gateway, fake, policy_dir, books
):
    copied = " ".join(GETTYSBURG.split()[:30])
    fake.script.text = FILLER * 3 + copied + ". " + FILLER
    fake.script.chunk = 3
    proxy, admin, gw = await start(make_gateway, fake, policy_dir, books)
    resp = await proxy.post(CHAT, json=chat_body(stream=True))
    raw, events = await read_sse(resp)
    assert b"Four score" not in raw and b"fathers brought" not in raw
    assert stream_text(events).startswith(FILLER.strip()[:40])
    finishes = [
        c["finish_reason"]
        for e in events
        if isinstance(e, dict)
        for c in e["choices"]
        if c.get("finish_reason")
    ]
    assert finishes == ["content_filter"]
    await gw.decisions.flush()
    record = await (
        await admin.get(
            f"/governance/v1/decisions/{resp.headers['x-governance-decision-id']}",
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        )
    ).json()
    finding = record["policies"][0]["findings"][0]
    assert finding["evidence"]["source_id"] == "gettysburg"


@pytest.mark.parametrize("stream", [False, True])
async def test_redaction_masks_exactly_the_copied_span(
    make_gateway, fake, policy_dir, books, stream
):
    copied = " ".join(GETTYSBURG.split()[:25])
    fake.script.text = FILLER + copied + " " + FILLER
    fake.script.chunk = 5
    proxy, _, _ = await start(make_gateway, fake, policy_dir, books, action="redact")
    resp = await proxy.post(CHAT, json=chat_body(stream=stream))
    if stream:
        _, events = await read_sse(resp)
        text = stream_text(events)
    else:
        text = (await resp.json())["choices"][0]["message"]["content"]
    assert text == FILLER + "[copied] " + FILLER


async def test_index_hot_swap_through_the_admin_api(
    make_gateway, fake, policy_dir, books, tmp_path
):
    copied = " ".join(FAREWELL.split()[:30])
    fake.script.text = FILLER + copied
    proxy, admin, gw = await start(make_gateway, fake, policy_dir, books)
    before = await (await proxy.post(CHAT, json=chat_body())).json()
    assert before["choices"][0]["finish_reason"] == "stop"
    add_documents(books, corpus(tmp_path / "more.jsonl", [("farewell", FAREWELL)]))
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    resp = await admin.post("/governance/v1/indexes/books/reload", headers=headers)
    assert resp.status == 200, await resp.text()
    after = await (await proxy.post(CHAT, json=chat_body())).json()
    assert after["choices"][0]["finish_reason"] == "content_filter"
    status = await (await admin.get("/governance/v1/indexes", headers=headers)).json()
    assert status["indexes"]["books"]["loaded"] is True
    missing = await admin.post("/governance/v1/indexes/nope/reload", headers=headers)
    assert missing.status == 404


async def test_index_swap_on_file_change_keeps_serving(
    make_gateway, fake, policy_dir, books, tmp_path
):
    copied = " ".join(FAREWELL.split()[:30])
    fake.script.text = FILLER + copied
    proxy, _, gw = await start(make_gateway, fake, policy_dir, books)
    statuses: list[int] = []
    finishes: list[str] = []
    stop = asyncio.Event()

    async def load():
        while not stop.is_set():
            resp = await proxy.post(CHAT, json=chat_body())
            statuses.append(resp.status)
            finishes.append((await resp.json())["choices"][0]["finish_reason"])

    workers = [asyncio.create_task(load()) for _ in range(3)]
    await asyncio.sleep(0.2)
    await asyncio.to_thread(
        add_documents, books, corpus(tmp_path / "more.jsonl", [("farewell", FAREWELL)])
    )
    for _ in range(300):
        if finishes and finishes[-1] == "content_filter":
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*workers)
    assert all(s == 200 for s in statuses)
    assert finishes[0] == "stop" and finishes[-1] == "content_filter"
