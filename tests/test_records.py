"""Typed records: one JSON form each, frozen, and what the gateway publishes and stores."""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
import pytest
from pydantic import ValidationError

from gateway.contract.policy import ReviewOptions
from gateway.records import containment as containment_records
from gateway.records import monitor as monitor_records
from gateway.records.containment import MODES, Switch
from gateway.records.decision import (
    SCHEMA as DECISION_SCHEMA,
)
from gateway.records.decision import (
    Attempt,
    Containment,
    DecisionRecord,
    FindingRecord,
    PolicyVerdict,
)
from gateway.records.manifest import CorpusInfo, Counts, IndexManifest, Update
from gateway.records.monitor import MonitorEvent
from gateway.records.review import (
    SCHEMA as REVIEW_SCHEMA,
)
from gateway.records.review import (
    SUMMARY_FIELDS,
    HeldAnswer,
    HeldDecision,
    HeldRequest,
    ReviewEvent,
    ReviewItem,
    ReviewOutcome,
    ReviewSummary,
    Ticket,
)
from gateway.severity import Severity
from tests.conftest import ADMIN_TOKEN, write_policies
from tests.test_review_api import CLIENT_KEY, REVIEW_POLICIES, SAUCE, auth, chat

CHAT = "/v1/chat/completions"

# -- samples: every optional part filled in -------------------------------------------------
FINDING = FindingRecord(
    segment="0",
    start=12,
    end=24,
    score=0.875,
    message="phrase 'secret sauce'",
    evidence={"phrase": "secret sauce", "sources": ["doc-1", "doc-2"], "nested": {"k": 1}},
)
VERDICT = PolicyVerdict(
    id="hold-sauce",
    kind="phrases",
    mode="enforce",
    status="breach",
    action="review",
    severity="high",
    elapsed_ms=0.125,
    findings=(FINDING, dataclasses.replace(FINDING, start=30, end=42, score=0.5)),
    finding_count=5,
)
ERRORED = PolicyVerdict(
    id="bias",
    kind="bias",
    mode="monitor",
    status="error",
    action="block",
    severity="medium",
    elapsed_ms=3.5,
    error="timeout after 2.0 s",
)
PASSED = PolicyVerdict(
    id="answer-length",
    kind="length",
    mode="enforce",
    status="pass",
    action="annotate",
    severity="low",
    elapsed_ms=0.0,
)
PRIMARY = Attempt(
    route="primary",
    upstream="http://primary",
    status=200,
    fell_back="hold-sauce",
    action="fallback",
)
FAILED = Attempt(route="backup", upstream="http://backup", error="upstream-timeout")
SKIPPED = Attempt(route="primary", upstream="http://primary", skipped="containment")
CONTAINMENT = Containment(mode="fallback", route="primary", incident_id="INC-7")

DECISION = DecisionRecord(
    decision_id="d" * 32,
    ts=1_700_000_000.25,
    route="backup",
    upstream="http://backup",
    protocol="openai-chat",
    path=CHAT,
    model="gpt-test",
    stream=True,
    revision="abc123def456",
    action="review",
    policies=(VERDICT, ERRORED, PASSED),
    breached=("hold-sauce",),
    chars_released=17,
    cut=True,
    attempts=(PRIMARY, FAILED, SKIPPED),
    upstream_status=200,
    added_latency_ms=1.5,
    upstream_ms=20.25,
    total_ms=22.0,
    client_disconnected=True,
    error={"code": "upstream-timeout", "message": "the upstream did not answer"},
    containment=CONTAINMENT,
    review_id="r" * 32,
)
MINIMAL_DECISION = DecisionRecord(
    decision_id="e" * 32,
    ts=1_700_000_001.0,
    route="default",
    upstream="http://u",
    protocol="rag-json",
    path="/rag/answer",
    model=None,
    stream=False,
    revision=None,
    action="allow",
)
HELD = HeldDecision(
    decision_id=DECISION.decision_id,
    revision="abc123def456",
    route="default",
    protocol="openai-chat",
    path=CHAT,
    model="gpt-test",
    stream=True,
    action="review",
    policies=(VERDICT, PASSED),
    breached=("hold-sauce",),
    chars_released=0,
    segment_keys=("0", "1"),
    complete=False,
    n=2,
)
ITEM = ReviewItem(
    id="r" * 32,
    decision_id=DECISION.decision_id,
    created_at=1_700_000_000.0,
    updated_at=1_700_000_100.0,
    state="rejected",
    outcome="rejected",
    route="default",
    protocol="openai-chat",
    path=CHAT,
    model="gpt-test",
    stream=True,
    policy="hold-sauce",
    policies=("hold-sauce", "other"),
    severity="high",
    severity_rank=3,
    priority=2,
    sla_deadline=1_700_003_600.0,
    expires_at=1_700_604_800.0,
    expire_action="reject",
    retain_until=1_702_592_000.0,
    overdue=True,
    escalations=1,
    assignee="rita",
    key_id="k" * 16,
    tenant="acme",
    text_stored=True,
    preview="Here is the answer…",
    text_hash="h" * 64,
    request={"method": "POST", "path": CHAT, "query": "", "headers": {}, "body": {"n": 2}},
    response={"choices": [{"index": 0, "message": {"content": SAUCE}}]},
    segments={"0": SAUCE, "1": "second choice"},
    record=HELD,
    edited={"0": "An edited answer."},
    reason="leaks the recipe",
    decided_by="rita",
    decided_at=1_700_000_100.0,
    version=4,
)
SWITCH = Switch(
    route="primary",
    mode="review_all",
    incident_id="INC-7",
    actor="root",
    reason="drill",
    since=1_700_000_000.5,
    auto_revert=True,
)
MONITOR_EVENT = MonitorEvent(
    monitor="credit-decisions",
    rule="disparate_impact",
    state="fired",
    route="credit",
    at=1_700_000_000.0,
    observation=1200,
    value=0.62,
    threshold=0.8,
    severity="high",
    details={"cohorts": {"a": 0.5, "b": 0.31}, "samples": [30, 41]},
)
MANIFEST = IndexManifest(
    format=1,
    name="sample",
    created_at="2025-01-01T00:00:00Z",
    updated_at="2025-01-02T00:00:00Z",
    build_seconds=87.5,
    model="all-MiniLM-L6-v2",
    params={"chunk_words": 50, "semantic": True},
    counts=Counts(documents=16, passages=2358, anchors=26860, vectors=2358),
    corpus=CorpusInfo(path="indexes/sample/corpus.jsonl", sha256="c" * 64, documents=16),
    faiss={"metric": "inner_product", "dim": 384, "type": "Flat"},
    screen={"components_removed": 8},
    generation=2,
    updates=(Update(op="add", documents=1, at="2025-01-02T00:00:00Z", corpus_sha256="d" * 64),),
)

# (record, how to read it back)
ROUND_TRIPS = [
    pytest.param(FINDING, FindingRecord.from_json, id="FindingRecord"),
    pytest.param(VERDICT, PolicyVerdict.from_json, id="PolicyVerdict-findings"),
    pytest.param(ERRORED, PolicyVerdict.from_json, id="PolicyVerdict-error"),
    pytest.param(PASSED, PolicyVerdict.from_json, id="PolicyVerdict-pass"),
    pytest.param(PRIMARY, Attempt.from_json, id="Attempt-fell-back"),
    pytest.param(FAILED, Attempt.from_json, id="Attempt-failed"),
    pytest.param(SKIPPED, Attempt.from_json, id="Attempt-skipped"),
    pytest.param(DECISION, DecisionRecord.from_json, id="DecisionRecord-full"),
    pytest.param(MINIMAL_DECISION, DecisionRecord.from_json, id="DecisionRecord-minimal"),
    pytest.param(HELD, HeldDecision.from_json, id="HeldDecision"),
    pytest.param(ITEM, ReviewItem.from_json, id="ReviewItem"),
    pytest.param(SWITCH, Switch.from_json, id="Switch"),
    pytest.param(MONITOR_EVENT, MonitorEvent.from_json, id="MonitorEvent"),
    pytest.param(MANIFEST, IndexManifest.from_json, id="IndexManifest"),
]

OUTCOMES = {
    "pending": ReviewOutcome(
        review_id="r1",
        decision_id="d1",
        status="pending",
        decided_at=None,
        approved=False,
        sla_deadline=1_700_003_600.0,
    ),
    "approved": ReviewOutcome(
        review_id="r1",
        decision_id="d1",
        status="approved",
        decided_at=1_700_000_100.0,
        approved=True,
        edited=True,
        response={"choices": [{"message": {"content": "edited"}}]},
        texts={"0": "edited"},
    ),
    "approved-private": ReviewOutcome(
        review_id="r1",
        decision_id="d1",
        status="approved",
        decided_at=1_700_000_100.0,
        approved=True,
    ),
    "rejected": ReviewOutcome(
        review_id="r1",
        decision_id="d1",
        status="rejected",
        decided_at=1_700_000_100.0,
        approved=False,
        reason="leaks the recipe",
    ),
    "expired": ReviewOutcome(
        review_id="r1",
        decision_id="d1",
        status="expired",
        decided_at=1_700_000_100.0,
        approved=False,
        outcome="rejected",
        reason="nobody decided in time",
    ),
}

SUMMARY = ReviewSummary(**{name: getattr(ITEM, name) for name in SUMMARY_FIELDS})

# every record with a to_json, for the serialisation checks
EVERY_RECORD = [
    *(p.values[0] for p in ROUND_TRIPS),
    CONTAINMENT,
    SUMMARY,
    *OUTCOMES.values(),
]


def record_id(record: object) -> str:
    return type(record).__name__


# -- JSON ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("record", "read"), ROUND_TRIPS)
def test_json_round_trip(record, read):
    assert read(record.to_json()) == record
    # and through the wire: tuples become lists, and must come back as tuples
    wire = orjson.loads(orjson.dumps(record.to_json()))
    assert read(wire) == record


@pytest.mark.parametrize("record", EVERY_RECORD, ids=record_id)
def test_orjson_serialises_every_json_form_as_is(record):
    # no ``default=``: a value orjson cannot write natively is a bug in to_json
    data = orjson.dumps(record.to_json())
    assert orjson.loads(data) == orjson.loads(orjson.dumps(record.to_json()))
    assert isinstance(orjson.loads(data), dict)


@pytest.mark.parametrize(
    ("record", "schema"),
    [
        pytest.param(DECISION, DECISION_SCHEMA, id="DecisionRecord"),
        pytest.param(MINIMAL_DECISION, DECISION_SCHEMA, id="DecisionRecord-minimal"),
        pytest.param(ITEM, REVIEW_SCHEMA, id="ReviewItem"),
        pytest.param(MANIFEST, 1, id="IndexManifest"),
    ],
)
def test_versioned_records_carry_their_schema_in_json(record, schema):
    data = record.to_json()
    assert data["schema"] == schema
    assert isinstance(schema, int) and schema >= 1


@pytest.mark.parametrize(
    ("record", "module"),
    [
        pytest.param(SWITCH, containment_records, id="Switch"),
        pytest.param(MONITOR_EVENT, monitor_records, id="MonitorEvent"),
    ],
)
def test_a_schema_in_json_is_the_modules(record, module):
    # not every record writes its version (docs/records.md); one that does writes its own
    data = record.to_json()
    if "schema" in data:
        assert data["schema"] == module.SCHEMA
    assert type(record).from_json(data) == record


def test_an_index_manifest_from_a_newer_layout_with_unknown_fields_is_refused():
    data = MANIFEST.to_json() | {"surprise": 1}
    with pytest.raises(ValidationError):
        IndexManifest.from_json(data)


def test_decision_record_json_leaves_out_what_did_not_happen():
    data = MINIMAL_DECISION.to_json()
    assert "error" not in data and "containment" not in data and "review_id" not in data
    assert data["policies"] == [] and data["attempts"] == [] and data["breached"] == []
    full = DECISION.to_json()
    assert full["containment"] == {"mode": "fallback", "route": "primary", "incident_id": "INC-7"}
    assert full["review_id"] == "r" * 32
    assert full["error"]["code"] == "upstream-timeout"
    assert full["policies"][0]["findings"][0]["span"] == [12, 24]
    assert full["policies"][0]["finding_count"] == 5
    assert "findings" not in full["policies"][2]


def test_review_summary_lists_no_text():
    data = SUMMARY.to_json()
    assert set(data) - {"schema"} == set(SUMMARY_FIELDS)
    assert data.get("schema", REVIEW_SCHEMA) == REVIEW_SCHEMA
    assert isinstance(data["policies"], list)
    for private in ("segments", "response", "request", "edited", "key_id", "text_hash"):
        assert private not in data
    assert SAUCE not in orjson.dumps(data).decode()
    # the whole item's JSON is the summary's plus the rest
    assert {k: v for k, v in ITEM.to_json().items() if k in data} == data


@pytest.mark.parametrize(
    ("which", "keys"),
    [
        ("pending", {"id", "decision_id", "status", "sla_deadline"}),
        ("approved", {"id", "decision_id", "status", "decided_at", "edited", "response"}),
        (
            "approved-private",
            {"id", "decision_id", "status", "decided_at", "edited", "response", "note"},
        ),
        ("rejected", {"id", "decision_id", "status", "decided_at", "reason"}),
        ("expired", {"id", "decision_id", "status", "decided_at", "outcome", "reason"}),
    ],
)
def test_review_outcome_json_is_what_the_client_poll_answers(which, keys):
    data = OUTCOMES[which].to_json()
    assert set(data) == keys
    assert data["id"] == "r1" and data["status"] == OUTCOMES[which].status
    # the texts by segment are for the gateway, never sent as such
    assert "texts" not in data


# -- frozen ------------------------------------------------------------------------------------
FROZEN = [
    *EVERY_RECORD,
    Ticket("r1", "/governance/v1/reviews/r1/result"),
    HeldRequest("POST", CHAT, "", {}, {}),
    HeldAnswer(
        decision=HELD,
        policy="hold-sauce",
        options=ReviewOptions(),
        severity=Severity.HIGH,
        policies=("hold-sauce",),
        request=HeldRequest("POST", CHAT, "", {}, {}),
        key_id=None,
        tenant=None,
        texts={"0": SAUCE},
        response=None,
    ),
    ReviewEvent(type="held", item={"id": "r1"}),
    MANIFEST.counts,
    MANIFEST.corpus,
    MANIFEST.updates[0],
]


@pytest.mark.parametrize("record", FROZEN, ids=record_id)
def test_records_are_frozen(record):
    if dataclasses.is_dataclass(record):
        name = dataclasses.fields(record)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, name, "changed")
        # slots: nobody can add a key later either
        with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError)):
            record.extra_key = 1
    else:
        name = next(iter(type(record).model_fields))
        with pytest.raises(ValidationError):
            setattr(record, name, "changed")
    assert getattr(record, name) != "changed"


def test_containment_modes_are_the_switch_modes():
    for mode in MODES:
        switch = dataclasses.replace(SWITCH, mode=mode)
        assert Switch.from_json(switch.to_json()).mode == mode


# -- through the gateway ---------------------------------------------------------------------------
@pytest.fixture
def policy_dir(tmp_path):
    directory = tmp_path / "policies"
    write_policies(directory, REVIEW_POLICIES)
    return directory


ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


class Published:
    """Every ``DecisionRecord`` a running gateway publishes from now on."""

    def __init__(self, gw) -> None:
        self.records: list[DecisionRecord] = []
        gw.events.subscribe(DecisionRecord, self.records.append)

    async def wait(self, count: int) -> list[DecisionRecord]:
        for _ in range(200):
            if len(self.records) >= count:
                break
            await asyncio.sleep(0.01)
        # a little longer, to catch a record published twice
        await asyncio.sleep(0.05)
        return list(self.records)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_held_answer_publishes_one_record_naming_its_review(make_gateway, fake, stream):
    fake.script.text = SAUCE
    proxy, _, gw = await make_gateway(upstream=fake)
    published = Published(gw)
    resp = await proxy.post(CHAT, json=chat(stream), headers=auth(CLIENT_KEY))
    assert resp.status == 200
    await resp.read()
    review_id = resp.headers["x-governance-review-id"]

    records = await published.wait(1)
    assert len(records) == 1
    record = records[0]
    assert record.review_id == review_id
    assert record.decision_id == resp.headers["x-governance-decision-id"]
    assert record.action == "review"
    assert record.breached == ("hold-sauce",)
    assert record.stream is stream
    assert record.containment is None
    verdict = next(p for p in record.policies if p.id == "hold-sauce")
    assert verdict.status == "breach" and verdict.kind == "phrases"
    assert verdict.findings[0].start == SAUCE.index("secret sauce")


@pytest.mark.parametrize("mode", ["block", "review_all"])
async def test_a_contained_route_publishes_records_naming_the_switch(make_gateway, fake, mode):
    proxy, admin, gw = await make_gateway(upstream=fake)
    published = Published(gw)
    resp = await admin.post(
        "/governance/v1/routes/default/contain",
        headers=ADMIN,
        json={"mode": mode, "reason": "records test"},
    )
    assert resp.status == 200, await resp.text()
    resp = await proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY))
    await resp.read()
    assert resp.headers["x-governance-decision"] == ("block" if mode == "block" else "review")

    records = await published.wait(1)
    assert len(records) == 1
    record = records[0]
    assert record.containment == Containment(mode=mode, route="default", incident_id=None)
    assert record.to_json()["containment"]["mode"] == mode
    if mode == "review_all":
        assert record.review_id == resp.headers["x-governance-review-id"]
        assert record.action == "review"
    else:
        assert resp.headers["x-governance-containment"] == "block"
        assert record.action == "block"
        assert fake.requests == []

    # lifted: the next record names no switch
    assert (await admin.post("/governance/v1/routes/default/restore", headers=ADMIN)).status == 200
    await (await proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY))).read()
    records = await published.wait(2)
    assert len(records) == 2
    assert records[1].containment is None


@pytest.mark.parametrize("text", [SAUCE, "A plain answer about tomatoes."], ids=["held", "clean"])
async def test_the_stored_record_is_the_published_one(make_gateway, fake, text):
    fake.script.text = text
    proxy, admin, gw = await make_gateway(upstream=fake)
    published = Published(gw)
    resp = await proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY))
    await resp.read()
    decision_id = resp.headers["x-governance-decision-id"]
    (record,) = await published.wait(1)

    stored = await admin.get(f"/governance/v1/decisions/{decision_id}", headers=ADMIN)
    assert stored.status == 200
    assert await stored.json() == record.to_json()


async def test_a_published_record_is_its_own_json_form(make_gateway, fake):
    """What the bus carries is what the store keeps: reading the JSON back gives the record."""
    fake.script.text = SAUCE
    proxy, _, gw = await make_gateway(upstream=fake)
    published = Published(gw)
    await (await proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY))).read()
    (record,) = await published.wait(1)
    back = DecisionRecord.from_json(orjson.loads(orjson.dumps(record.to_json())))
    lost = [
        f"{mine.id}: elapsed_ms {mine.elapsed_ms!r} -> {read.elapsed_ms!r}"
        for mine, read in zip(record.policies, back.policies, strict=True)
        if mine.elapsed_ms != read.elapsed_ms
    ]
    assert not lost, "the JSON form loses what the published record holds: " + "; ".join(lost)
    assert back == record
