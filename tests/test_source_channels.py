"""Every example in docs/retrieval.md of how sources reach the gateway, replayed through it.

The docs show upstream responses byte for byte; a fake upstream sends each one
as it stands, a real gateway judges it with a ``stale_retrieval`` policy, and
the decision record must name the source the example says. The same example
with fresh dates must pass, so a source read from somewhere else, or not at
all, fails the test.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from gateway.config import Route
from tests.conftest import ADMIN_TOKEN, write_policies

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "retrieval.md"

EXAMPLE = re.compile(
    r"<!-- sources-example: (?P<method>[A-Z]+) (?P<path>\S+)(?P<opts>[^>]*?) -->\n"
    r"```http\n(?P<raw>.*?)\n```",
    re.DOTALL,
)
ROUTE = re.compile(r"<!-- sources-route -->\n```yaml\n(?P<yaml>.*?)\n```", re.DOTALL)

POLICY = """\
policies:
  - id: stale
    kind: stale_retrieval
    max_age: 365d
    treat_as: fresh
    action: annotate
"""

# the dates the examples use, as text and as epoch seconds
OLD_DATES = ("2015-06-01", "1433116800")


@dataclass(frozen=True)
class Example:
    method: str
    path: str
    opts: dict[str, str]
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def streamed(self) -> bool:
        return self.headers.get("content-type") == "text/event-stream"

    @property
    def label(self) -> str:
        where = "header" if "x-rag-sources" in self.headers else "body"
        return f"{self.path}-{'stream' if self.streamed else 'json'}-{where}"


def parse_example(match: re.Match) -> Example:
    raw = match["raw"]
    head, _, body = raw.partition("\n\n")
    status_line, *header_lines = head.splitlines()
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    opts = dict(opt.split("=", 1) for opt in match["opts"].split())
    if headers.get("content-type") == "text/event-stream":
        # the fenced block drops the blank line that ends the last event
        body = body.rstrip("\n") + "\n\n"
    return Example(
        match["method"], match["path"], opts, int(status_line.split()[1]), headers, body.encode()
    )


def doc_examples() -> list[Example]:
    return [parse_example(m) for m in EXAMPLE.finditer(DOC.read_text(encoding="utf-8"))]


def doc_rag_route() -> dict:
    (match,) = ROUTE.finditer(DOC.read_text(encoding="utf-8"))
    (route,) = yaml.safe_load(match["yaml"])["routes"]
    return route


def fresh(example: Example) -> Example:
    """The example with every source dated last month."""
    last_month = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    text = example.body.decode()
    text = text.replace(OLD_DATES[0], last_month.date().isoformat())
    text = text.replace(OLD_DATES[1], str(int(last_month.timestamp())))
    headers = {
        k: v.replace(OLD_DATES[0], last_month.date().isoformat())
        for k, v in example.headers.items()
    }
    return Example(example.method, example.path, example.opts, 200, headers, text.encode())


def request_body(path: str, stream: bool) -> dict:
    question = "How long do I have to return an order?"
    if path.endswith("/chat/completions"):
        return {"model": "m", "messages": [{"role": "user", "content": question}], "stream": stream}
    if path.endswith("/completions"):
        return {"model": "m", "prompt": question, "stream": stream}
    if path.endswith("/responses"):
        return {"model": "m", "input": question, "stream": stream}
    if path.endswith("/messages"):
        return {
            "model": "m",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": question}],
            "stream": stream,
        }
    return {"query": question, "stream": stream}


class RawUpstream:
    """Answers every POST with the bytes of the example it is given."""

    def __init__(self) -> None:
        self.example: Example | None = None
        self.app = web.Application()
        self.app.router.add_post("/{tail:.*}", self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        await request.read()
        ex = self.example
        assert ex is not None
        return web.Response(status=ex.status, headers=ex.headers, body=ex.body)


@pytest.fixture
async def channel(aiohttp_server, make_gateway, policy_dir):
    upstream = RawUpstream()
    server = await aiohttp_server(upstream.app)
    url = str(server.make_url("")).rstrip("/")
    write_policies(policy_dir, POLICY)
    rag = dict(doc_rag_route(), upstream=url)
    proxy, admin, gw = await make_gateway(
        [Route.model_validate(rag), Route(name="default", upstream=url)]
    )

    async def replay(example: Example) -> tuple[int, dict]:
        upstream.example = example
        resp = await proxy.post(example.path, json=request_body(example.path, example.streamed))
        await resp.read()
        await gw.decisions.flush()
        got = await admin.get(
            f"/governance/v1/decisions/{resp.headers['x-governance-decision-id']}",
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        return resp.status, await got.json()

    return replay


def stale_verdict(record: dict) -> dict:
    (verdict,) = [p for p in record["policies"] if p["id"] == "stale"]
    return verdict


def test_the_docs_show_every_protocol_streamed_and_not():
    examples = doc_examples()
    shown = {(e.path, e.streamed) for e in examples}
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"):
        assert (path, False) in shown and (path, True) in shown, path
    assert any("x-rag-sources" in e.headers for e in examples)
    assert any(e.opts.get("route") == "rag" for e in examples)
    assert all("expect" in e.opts for e in examples)


@pytest.mark.parametrize("example", doc_examples(), ids=lambda e: e.label)
async def test_a_documented_example_reaches_the_policy(channel, example):
    status, record = await channel(example)
    assert status == 200
    assert record["route"] == example.opts.get("route", "default")
    verdict = stale_verdict(record)
    assert verdict["status"] == "breach", record
    assert [f["evidence"]["rule"] for f in verdict["findings"]] == ["max_age"]
    assert [f["evidence"]["source"]["id"] for f in verdict["findings"]] == [example.opts["expect"]]

    status, record = await channel(fresh(example))
    assert status == 200
    assert stale_verdict(record)["status"] == "pass", record


def _example(path: str, streamed: bool, header: bool) -> Example:
    return next(
        e
        for e in doc_examples()
        if e.path == path and e.streamed == streamed and ("x-rag-sources" in e.headers) == header
    )


def _events_with(example: Example, kind: str, add) -> Example:
    """The streamed example without its header, ``add`` applied to the event of ``kind``."""
    lines = []
    for line in example.body.decode().split("\n"):
        if line.startswith("data: {"):
            event = json.loads(line[len("data: ") :])
            if event.get("type") == kind:
                add(event)
                line = "data: " + json.dumps(event)
        lines.append(line)
    headers = {k: v for k, v in example.headers.items() if k != "x-rag-sources"}
    return Example(example.method, example.path, {}, 200, headers, "\n".join(lines).encode())


STALE = [{"id": "refund-faq", "updated_at": "2015-06-01"}]


def _anthropic_block_citations() -> Example:
    ex = _example("/v1/messages", False, False)
    body = json.loads(ex.body)
    del body["sources"]
    body["content"][0]["citations"] = STALE
    return Example(ex.method, ex.path, {}, 200, ex.headers, json.dumps(body).encode())


def _chat_stream_delta_context() -> Example:
    ex = _example("/v1/chat/completions", True, False)
    ex = _events_with(ex, "", lambda e: None)
    lines = ex.body.decode().split("\n")
    first = next(i for i, line in enumerate(lines) if line.startswith("data: {"))
    event = json.loads(lines[first][len("data: ") :])
    event["choices"][0]["delta"]["context"] = {"citations": STALE}
    lines[first] = "data: " + json.dumps(event)
    # the documented last chunk with top-level sources goes
    lines = [line for line in lines if '"sources"' not in line]
    return Example(ex.method, ex.path, {}, 200, ex.headers, "\n".join(lines).encode())


def _responses_metadata() -> Example:
    ex = _example("/v1/responses", False, False)
    body = json.loads(ex.body)
    del body["sources"]
    body["metadata"] = {"sources": json.dumps(STALE)}
    return Example(ex.method, ex.path, {}, 200, ex.headers, json.dumps(body).encode())


NOT_READ = {
    "chat-stream-delta-context": _chat_stream_delta_context,
    "responses-metadata": _responses_metadata,
    # the docs say these places are not read; if one becomes a channel, document it
    "responses-stream-final-event": lambda: _events_with(
        _example("/v1/responses", True, True),
        "response.completed",
        lambda e: e["response"].update(sources=STALE),
    ),
    "anthropic-stream-message-start": lambda: _events_with(
        _example("/v1/messages", True, True),
        "message_start",
        lambda e: e["message"].update(sources=STALE),
    ),
    "anthropic-content-block-citations": _anthropic_block_citations,
}


@pytest.mark.parametrize("name", sorted(NOT_READ))
async def test_places_the_docs_call_unread_are_not_read(channel, name):
    status, record = await channel(NOT_READ[name]())
    assert status == 200
    assert stale_verdict(record)["status"] == "pass", record
