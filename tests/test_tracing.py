"""OpenTelemetry tracing: a span per governed request, a child per policy, and
the W3C ``traceparent`` carried on to the upstream; off by default and then
never imported."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from gateway.config import Route, Settings
from gateway.observability import tracing
from tests.conftest import write_policies
from tests.test_proxy_basic import CHAT, chat_body, read_sse

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
# the W3C trace-flags bit that says the trace is recorded
SAMPLED = 0x01


@pytest.fixture
def spans(monkeypatch) -> InMemorySpanExporter:
    """What the gateway's tracer exports, in memory instead of over OTLP."""
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "_exporter", lambda config: exporter)
    return exporter


async def traced(make_gateway, fake, **tracing_config):
    return await make_gateway(upstream=fake, tracing={"enabled": True, **tracing_config})


async def request_span(gw, exporter: InMemorySpanExporter):
    """The request span, once the exchange has published its record (off the response path)."""
    for _ in range(200):
        gw.tracer.flush()
        found = [s for s in exporter.get_finished_spans() if s.name == tracing.REQUEST_SPAN]
        if found:
            assert len(found) == 1
            return found[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no request span was exported")


def policy_spans(exporter: InMemorySpanExporter, parent) -> dict[str, object]:
    return {
        s.attributes["gateway.policy.id"]: s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent.context.span_id
    }


async def test_a_request_gets_one_span_with_its_decision_and_a_child_per_policy(
    make_gateway, fake, spans
):
    fake.script.text = "Your account is ACCT-123456, ask the competitor."
    proxy, _, gw = await traced(make_gateway, fake)
    resp = await proxy.post(CHAT, json=chat_body())
    assert resp.status == 200
    assert resp.headers["x-governance-decision"] == "redact"
    span = await request_span(gw, spans)
    attrs = span.attributes
    assert attrs["gateway.decision_id"] == resp.headers["x-governance-decision-id"]
    assert attrs["gateway.route"] == "default"
    assert attrs["gateway.protocol"] == "openai-chat"
    assert attrs["gen_ai.request.model"] == "gpt-test"
    assert attrs["gateway.stream"] is False
    assert attrs["gateway.decision"] == "redact"
    assert tuple(attrs["gateway.policies.breached"]) == ("mask-ids", "watch-competitor")
    assert attrs["gateway.added_latency_ms"] >= 0
    assert attrs["gateway.upstream_status"] == 200
    assert attrs["url.path"] == CHAT
    assert span.parent is None

    children = policy_spans(spans, span)
    assert set(children) == {"no-forbidden", "mask-ids", "watch-competitor"}
    assert children["mask-ids"].attributes["gateway.policy.status"] == "breach"
    assert children["mask-ids"].attributes["gateway.policy.kind"] == "phrases"
    assert children["no-forbidden"].attributes["gateway.policy.status"] == "pass"
    assert children["watch-competitor"].attributes["gateway.policy.mode"] == "monitor"
    for child in children.values():
        assert child.context.trace_id == span.context.trace_id
        assert span.start_time <= child.start_time <= child.end_time <= span.end_time


async def test_the_clients_trace_is_continued_and_passed_to_the_upstream(make_gateway, fake, spans):
    proxy, _, gw = await traced(make_gateway, fake)
    incoming = f"00-{TRACE_ID}-{PARENT_ID}-01"
    resp = await proxy.post(CHAT, json=chat_body(), headers={"traceparent": incoming})
    assert resp.status == 200
    span = await request_span(gw, spans)
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_ID
    # the upstream's parent is the gateway's span, in the same trace
    sent = fake.requests[-1]["headers"]["traceparent"]
    assert sent == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert fake.requests[-1]["headers"].getall("traceparent") == [sent]


async def test_a_streamed_request_starts_a_trace_the_upstream_shares(make_gateway, fake, spans):
    proxy, _, gw = await traced(make_gateway, fake)
    resp = await proxy.post(CHAT, json=chat_body(stream=True))
    assert resp.status == 200
    await read_sse(resp)
    span = await request_span(gw, spans)
    assert span.attributes["gateway.stream"] is True
    assert span.attributes["gateway.decision"] == "allow"
    version, trace_id, parent_id, flags = fake.requests[-1]["headers"]["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & SAMPLED
    assert int(trace_id, 16) == span.context.trace_id
    assert int(parent_id, 16) == span.context.span_id
    assert set(policy_spans(spans, span)) == {"no-forbidden", "mask-ids", "watch-competitor"}


async def test_an_unsampled_trace_still_propagates_but_exports_nothing(make_gateway, fake, spans):
    proxy, _, gw = await traced(make_gateway, fake, sample_ratio=0)
    resp = await proxy.post(CHAT, json=chat_body())
    assert resp.status == 200
    sent = fake.requests[-1]["headers"]["traceparent"]
    assert sent.startswith("00-")
    assert not int(sent.rsplit("-", 1)[1], 16) & SAMPLED
    # the exchange publishes its record just after answering
    await asyncio.sleep(0.05)
    gw.tracer.flush()
    assert spans.get_finished_spans() == ()


async def test_tracing_is_off_by_default_and_adds_no_header(make_gateway, fake):
    proxy, _, gw = await make_gateway(upstream=fake)
    assert gw.tracer is None
    resp = await proxy.post(CHAT, json=chat_body())
    assert resp.status == 200
    assert "traceparent" not in fake.requests[-1]["headers"]
    # a client's own trace header still passes through untouched
    incoming = f"00-{TRACE_ID}-{PARENT_ID}-01"
    await proxy.post(CHAT, json=chat_body(), headers={"traceparent": incoming})
    assert fake.requests[-1]["headers"]["traceparent"] == incoming


MODULES = """\
import sys
from gateway.app import build_gateway, create_app
from gateway.config import Route, Settings, Store
settings = Settings(
    routes=[Route(name="default", upstream="http://127.0.0.1:9")],
    policies=[{policies!r}],
    store=Store(url="sqlite:///{db}"),
    data_dir={data!r},
    tracing={{"enabled": {enabled}, "exporter": "console"}},
)
gw = build_gateway(settings)
create_app(gw)
print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
"""


@pytest.mark.parametrize("enabled", [False, True])
def test_opentelemetry_is_imported_only_when_tracing_is_on(tmp_path, enabled):
    policies = tmp_path / "policies"
    write_policies(policies)
    script = MODULES.format(
        policies=str(policies),
        db=tmp_path / "gateway.db",
        data=str(tmp_path / "data"),
        enabled=enabled,
    )
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    loaded = eval(out.stdout.strip().splitlines()[-1])
    if enabled:
        assert "opentelemetry.sdk.trace" in loaded
    else:
        assert loaded == []


@pytest.mark.parametrize(
    "tracing_config",
    [{"sample_ratio": 1.5}, {"exporter": "zipkin"}, {"enabled": True, "endpont": "x"}],
)
def test_bad_tracing_settings_are_refused(tracing_config):
    with pytest.raises(ValidationError):
        Settings(routes=[Route(name="d", upstream="http://u")], tracing=tracing_config)
