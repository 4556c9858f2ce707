"""Sources extracted by the protocol adapters reach the RAG policy kinds intact."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from gateway.config import Route
from gateway.contract.detector import ScanContext
from gateway.contract.kind import BuildContext, Resources
from gateway.detectors.stale_retrieval import StaleRetrievalPolicy
from gateway.detectors.stale_retrieval import build as build_stale
from gateway.proxy.adapters import Adapters, parse_answer

# a rag-json route with the default paths: answer text at ``answer``, sources at ``sources``
RAG = Adapters([Route(name="rag", upstream="http://rag.test", protocol="rag-json")])
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp()
REGISTRY = "documents:\n  - {id: handbook, current_version: '2'}\n"
SOURCES = [
    {"doc_id": "handbook", "version": "1", "updated_at": "2026-05-01"},
    {"document_id": "news", "published_at": 1500000000},
]
ANSWER = "Leave is 20 days a year."

BODIES = {
    "openai-chat": {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
            }
        ],
        "sources": SOURCES,
    },
    "openai-chat-azure-context": {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": ANSWER,
                    "context": {"citations": SOURCES},
                },
                "finish_reason": "stop",
            }
        ],
    },
    "rag-json": {"answer": ANSWER, "sources": SOURCES},
}


@pytest.fixture
def detector(tmp_path):
    (tmp_path / "reg.yaml").write_text(REGISTRY, encoding="utf-8")
    config = StaleRetrievalPolicy(
        id="s", kind="stale_retrieval", max_age="365d", registry="reg.yaml"
    )
    return build_stale(
        config, BuildContext(base_dir=tmp_path, resources=Resources(clock=lambda: NOW))
    )


@pytest.mark.parametrize("name", sorted(BODIES))
def test_sources_from_each_protocol_are_judged(detector, name):
    segments, found, _ = parse_answer(BODIES[name], RAG, "rag")
    sources, errors = found.items, found.errors
    assert errors == []
    assert [s["id"] for s in sources] == ["handbook", "news"]
    ctx = ScanContext(sources=sources, source_errors=errors)
    text = segments[0][1]
    found = detector.start(ctx).feed(text, final=True)
    assert sorted((f.evidence["source"]["id"], f.evidence["rule"]) for f in found) == [
        ("handbook", "superseded"),
        ("news", "max_age"),
    ]


def test_malformed_sources_from_an_adapter_give_a_clear_error(detector):
    from gateway.errors import SourceMetadataError

    body = {"answer": ANSWER, "sources": [{"id": "ok"}, 17]}
    _, found, _ = parse_answer(body, RAG, "rag")
    sources, errors = found.items, found.errors
    assert errors, "the adapter reports the bad entry"
    ctx = ScanContext(sources=sources, source_errors=errors)
    with pytest.raises(SourceMetadataError, match="sources\\[1\\]"):
        detector.start(ctx).feed(ANSWER, final=True)


def test_engine_turns_malformed_metadata_into_an_error_status(tmp_path):
    from gateway.contract.policy import Status
    from gateway.policy.check import context_for, evaluate
    from gateway.policy.loader import load_policies

    (tmp_path / "p.yaml").write_text(
        "policies:\n  - {id: stale, kind: stale_retrieval, max_age: 30d, on_error: allow}\n",
        encoding="utf-8",
    )
    policies = load_policies([tmp_path / "p.yaml"]).for_route("default")
    ctx = context_for("default", sources=[{"id": "a", "updated_at": "2026-01-01"}, 5])

    async def run():
        return await evaluate(policies, [("0", ANSWER)], ctx, chunk=8)

    guard = asyncio.run(run())
    result = guard.results[0]
    assert result.status is Status.ERROR
    assert "malformed source metadata" in result.error
