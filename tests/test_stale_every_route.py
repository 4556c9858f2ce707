"""Stale sources are flagged on every route, the quick start's included.

The gateway runs as the README's quick start runs it, ``gateway serve
--upstream URL --policies policies/``, over a copy of the shipped policy
directory (and the sample index the shipped copyright policy reads, which the
demo would build). A fake upstream answers chat completions carrying the
sources a test gives it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.contract.detector import ScanContext
from gateway.index.build import BuildParams, build_index
from gateway.policy.loader import load_policies
from tests.fakes import FakeUpstream
from tests.gateway_process import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_BIN = Path(sys.executable).with_name("gateway")
ANSWER = "Refunds are accepted for 30 days after delivery, according to the shop's FAQ."

# one gateway process serves the module's async tests: its start loads models
in_quickstart = pytest.mark.asyncio(loop_scope="module")


def dated(days_ago: int) -> list[dict]:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    return [
        {
            "id": "shop-faq",
            "title": "Shop FAQ",
            "url": "https://shop.example/faq",
            "updated_at": when.date().isoformat(),
        }
    ]


TEN_YEARS = 3653  # days, leap days included


@dataclass
class QuickStart:
    upstream: FakeUpstream
    proxy: str
    admin: str
    token: str
    http: aiohttp.ClientSession

    async def chat(self, sources: list[dict] | None, *, stream: bool = False) -> tuple:
        self.upstream.script.text = ANSWER
        self.upstream.script.extra = {} if sources is None else {"sources": sources}
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "How long do I have to return an order?"}],
            "stream": stream,
        }
        async with self.http.post(f"{self.proxy}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
            raw = await resp.read()
            headers = resp.headers.copy()
        return headers, raw, await self.record(headers["x-governance-decision-id"])

    async def record(self, decision_id: str) -> dict:
        # records are written off the hot path: wait for this one to land
        for _ in range(200):
            async with self.http.get(
                f"{self.admin}/governance/v1/decisions/{decision_id}",
                headers={"authorization": f"Bearer {self.token}"},
            ) as resp:
                if resp.status == 200:
                    return await resp.json()
            await asyncio.sleep(0.05)
        raise AssertionError(f"decision {decision_id} was never recorded")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def quickstart(tmp_path_factory) -> AsyncIterator[QuickStart]:
    project = tmp_path_factory.mktemp("quickstart")
    shutil.copytree(ROOT / "policies", project / "policies")
    build_index(
        ROOT / "indexes" / "sample" / "corpus.jsonl",
        project / "indexes" / "sample",
        BuildParams(semantic=False),
    )
    upstream = FakeUpstream()
    runner = web.AppRunner(upstream.app)
    await runner.setup()
    up_port, port, admin_port = free_port(), free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", up_port).start()
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_STORE_URL"}
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
    log = project / "gateway.log"
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            str(GATEWAY_BIN),
            "serve",
            "--upstream",
            f"http://127.0.0.1:{up_port}/v1",
            "--policies",
            "policies/",
            # the quick start's 8080 and 8081 may be taken on a test machine
            "--port",
            str(port),
            "--admin-port",
            str(admin_port),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            cwd=str(project),
        )
    admin = f"http://127.0.0.1:{admin_port}"
    http = aiohttp.ClientSession()
    try:
        # the shipped policies load embedding models before /readyz says ready
        await wait_ready(proc, admin, log, seconds=120)
        token = (project / ".gateway" / "admin-token").read_text().strip()
        yield QuickStart(upstream, f"http://127.0.0.1:{port}", admin, token, http)
    finally:
        await http.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await runner.cleanup()


def verdict(record: dict, policy_id: str) -> dict:
    (found,) = [p for p in record["policies"] if p["id"] == policy_id]
    return found


def chat_text(raw: bytes, stream: bool) -> tuple[str, list[str]]:
    """The answer's text and finish reasons, from a body or an SSE stream."""
    if not stream:
        choice = json.loads(raw)["choices"][0]
        return choice["message"]["content"], [choice["finish_reason"]]
    text, finishes = "", []
    for line in raw.decode().splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[len("data: ") :]).get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
                if choice.get("finish_reason"):
                    finishes.append(choice["finish_reason"])
    return text, finishes


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.slow
@in_quickstart
async def test_a_ten_year_old_source_on_the_default_route_is_held(quickstart, stream):
    headers, raw, record = await quickstart.chat(dated(TEN_YEARS), stream=stream)
    assert record["route"] == "default"
    assert record["action"] == "review"
    assert record["breached"] == ["stale-sources"]
    (finding,) = verdict(record, "stale-sources")["findings"]
    assert finding["evidence"]["rule"] == "max_age"
    assert finding["evidence"]["source"]["id"] == "shop-faq"
    assert finding["evidence"]["age_days"] >= TEN_YEARS - 1
    assert record["review_id"]
    text, finishes = chat_text(raw, stream)
    # held, not released: the client gets the placeholder, not the answer
    assert ANSWER not in text
    assert finishes[-1] == "content_filter"
    if not stream:
        assert headers["x-governance-decision"] == "review"
        assert headers["x-governance-review-id"] == record["review_id"]


@pytest.mark.slow
@in_quickstart
async def test_a_source_from_last_month_passes(quickstart):
    headers, raw, record = await quickstart.chat(dated(30))
    assert headers["x-governance-decision"] == "allow"
    assert record["action"] == "allow" and record["breached"] == []
    assert verdict(record, "stale-sources")["status"] == "pass"
    assert chat_text(raw, False) == (ANSWER, ["stop"])


@pytest.mark.slow
@in_quickstart
async def test_a_factual_chat_answer_without_sources_passes(quickstart):
    headers, raw, record = await quickstart.chat(None)
    assert headers["x-governance-decision"] == "allow"
    assert record["action"] == "allow" and record["breached"] == []
    ids = [p["id"] for p in record["policies"]]
    # min_sources belongs to RAG routes: it does not even run here
    assert "stale-sources" in ids and "rag-source-requirements" not in ids
    assert chat_text(raw, False) == (ANSWER, ["stop"])


def test_the_every_route_policy_reads_no_clock_without_sources():
    # an answer without sources must cost nothing beyond noticing there are none
    policy_set = load_policies([ROOT / "policies" / "retrieval.yaml"])
    (stale,) = [p for p in policy_set.for_route("default") if p.config.id == "stale-sources"]
    detector = stale.detector
    reads = []
    detector.clock = lambda: reads.append(1) or time.time()
    scan = detector.start(ScanContext())
    for end in range(10, len(ANSWER), 10):
        assert scan.feed(ANSWER[:end], False) == []
    assert scan.feed(ANSWER, True) == []
    assert detector.judge(ANSWER, ScanContext()) == []
    assert reads == []
    # with a source the clock is read, once per judgement
    assert detector.judge(ANSWER, ScanContext(sources=dated(TEN_YEARS)))
    assert reads == [1]
