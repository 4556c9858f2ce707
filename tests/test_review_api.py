"""Review queue through the real gateway: holding, the client's poll, the reviewer API."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.config import Route
from gateway.records.review import ReviewEvent
from tests.conftest import ADMIN_TOKEN, REVIEWER_TOKEN, review_of, write_policies
from tests.test_proxy_basic import read_sse

CHAT = "/v1/chat/completions"
CLIENT_KEY = "sk-client-one"
OTHER_KEY = "sk-client-two"
LEAD_TOKEN = "test-lead-token"

REVIEW_POLICIES = """\
policies:
  - id: hold-sauce
    kind: phrases
    phrases: ["secret sauce"]
    action: review
    severity: high
  - id: hold-and-wait
    kind: phrases
    phrases: ["wait for me"]
    action: review
    severity: low
    review: {mode: wait, wait_seconds: 20}
  - id: no-forbidden
    kind: phrases
    phrases: ["launch codes"]
    action: block
"""

SAUCE = "Our recipe uses the secret sauce from grandma, mixed well."


@pytest.fixture
def policy_dir(tmp_path):
    directory = tmp_path / "policies"
    write_policies(directory, REVIEW_POLICIES)
    return directory


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def chat(stream: bool = False) -> dict:
    return {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "recipe?"}],
        "stream": stream,
    }


async def start(make_gateway, fake, **extra):
    proxy, admin, gw = await make_gateway(upstream=fake, **extra)
    return proxy, admin, gw


async def hold_one(proxy, key: str = CLIENT_KEY, stream: bool = False):
    resp = await proxy.post(CHAT, json=chat(stream), headers=auth(key))
    return resp


async def test_held_response_is_a_placeholder_with_review_id(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, gw = await start(make_gateway, fake)
    resp = await hold_one(proxy)
    assert resp.status == 200
    body = await resp.json()
    review_id = resp.headers["x-governance-review-id"]
    assert resp.headers["x-governance-decision"] == "review"
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["choices"][0]["message"]["content"] == "This response is held for review."
    assert "secret sauce" not in json.dumps(body)
    assert body["x_governance"]["review_id"] == review_id
    # stored before the answer: it is there without waiting on anything
    item = await review_of(gw).db.get(review_id)
    assert item.state == "pending"
    assert item.segments == {"0": SAUCE}
    assert item.response["choices"][0]["message"]["content"] == SAUCE
    assert item.policy == "hold-sauce" and item.severity == "high"
    assert "authorization" not in item.request["headers"]
    assert CLIENT_KEY not in json.dumps(item.request)
    assert item.key_id and CLIENT_KEY not in item.key_id
    at = SAUCE.index("secret sauce")
    finding = item.record.policies[0].findings[0]
    assert (finding.start, finding.end) == (at, at + 12)
    assert item.sla_deadline > item.created_at
    # the decision record links to the item
    rec = await admin.get(
        f"/governance/v1/decisions/{resp.headers['x-governance-decision-id']}",
        headers=auth(ADMIN_TOKEN),
    )
    assert (await rec.json())["review_id"] == review_id


async def test_client_polls_pending_then_approved_original(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, _ = await start(make_gateway, fake)
    review_id = (await hold_one(proxy)).headers["x-governance-review-id"]
    url = f"/governance/v1/reviews/{review_id}/result"
    poll = await admin.get(url, headers=auth(CLIENT_KEY))
    assert poll.status == 200
    assert (await poll.json())["status"] == "pending"
    detail = await (
        await admin.get(f"/governance/v1/reviews/{review_id}", headers=auth(REVIEWER_TOKEN))
    ).json()
    version = detail["item"]["version"]
    ok = await admin.post(
        f"/governance/v1/reviews/{review_id}/approve",
        json={"version": version},
        headers=auth(REVIEWER_TOKEN),
    )
    assert ok.status == 200, await ok.text()
    result = await (await admin.get(url, headers=auth(CLIENT_KEY))).json()
    assert result["status"] == "approved" and result["edited"] is False
    assert result["response"]["choices"][0]["message"]["content"] == SAUCE
    assert result["response"]["object"] == "chat.completion"


async def test_poll_needs_the_same_api_key(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, _ = await start(make_gateway, fake)
    review_id = (await hold_one(proxy)).headers["x-governance-review-id"]
    url = f"/governance/v1/reviews/{review_id}/result"
    assert (await admin.get(url)).status == 401
    assert (await admin.get(url, headers=auth(OTHER_KEY))).status == 403
    assert (await admin.get(url, headers={"x-api-key": CLIENT_KEY})).status == 200
    missing = "0" * 32
    assert (
        await admin.get(f"/governance/v1/reviews/{missing}/result", headers=auth(CLIENT_KEY))
    ).status == 404
    # a client key opens nothing else
    assert (
        await admin.get(f"/governance/v1/reviews/{review_id}", headers=auth(CLIENT_KEY))
    ).status == 401


async def test_poll_on_the_proxy_listener(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, _ = await start(make_gateway, fake)
    review_id = (await hold_one(proxy)).headers["x-governance-review-id"]
    url = f"/governance/v1/reviews/{review_id}/result"
    poll = await proxy.get(url, headers=auth(CLIENT_KEY))
    assert poll.status == 200 and (await poll.json())["status"] == "pending"
    assert (await proxy.get(url, headers=auth(OTHER_KEY))).status == 403
    assert (await proxy.get(url)).status == 401
    # nothing else of the governance API is reachable from the proxy side
    listed = await proxy.get("/governance/v1/reviews", headers=auth(REVIEWER_TOKEN))
    assert listed.status == 404
    assert fake.requests[-1]["path"] != "/governance/v1/reviews"


async def test_edit_and_reject_reach_the_client(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, _ = await start(make_gateway, fake)
    first = (await hold_one(proxy)).headers["x-governance-review-id"]
    second = (await hold_one(proxy)).headers["x-governance-review-id"]
    edited = await admin.post(
        f"/governance/v1/reviews/{first}/approve",
        json={"version": 1, "edited": {"0": "Our recipe is private."}},
        headers=auth(REVIEWER_TOKEN),
    )
    assert edited.status == 200, await edited.text()
    result = await (
        await admin.get(f"/governance/v1/reviews/{first}/result", headers=auth(CLIENT_KEY))
    ).json()
    assert result["edited"] is True
    assert result["response"]["choices"][0]["message"]["content"] == "Our recipe is private."
    no_reason = await admin.post(
        f"/governance/v1/reviews/{second}/reject", json={"version": 1}, headers=auth(REVIEWER_TOKEN)
    )
    assert no_reason.status == 400
    rejected = await admin.post(
        f"/governance/v1/reviews/{second}/reject",
        json={"version": 1, "reason": "Trade secret."},
        headers=auth(REVIEWER_TOKEN),
    )
    assert rejected.status == 200
    result = await (
        await admin.get(f"/governance/v1/reviews/{second}/result", headers=auth(CLIENT_KEY))
    ).json()
    assert result == {
        "id": second,
        "decision_id": result["decision_id"],
        "status": "rejected",
        "decided_at": result["decided_at"],
        "reason": "Trade secret.",
    }
    audit = await (
        await admin.get(f"/governance/v1/reviews/{first}/audit", headers=auth(REVIEWER_TOKEN))
    ).json()
    steps = [(a["actor"], a["action"]) for a in audit["audit"]]
    assert steps == [("gateway", "held"), ("rita", "approve-edited")]
    last = audit["audit"][-1]
    assert last["before_state"]["state"] == "pending" and last["after_state"]["state"] == "approved"
    assert last["before_state"]["version"] == 1 and last["after_state"]["version"] == 2


async def test_stream_hold_keeps_the_whole_answer(make_gateway, fake):
    tail = " And then the rest of a long answer that keeps going after the match. " * 3
    fake.script.text = "Intro words first. " * 4 + "Then the secret sauce appears." + tail
    fake.script.chunk = 7
    proxy, admin, gw = await start(make_gateway, fake)
    resp = await hold_one(proxy, stream=True)
    raw_bytes, parsed = await read_sse(resp)
    raw = raw_bytes.decode()
    events = [e for e in parsed if isinstance(e, dict)]
    finishes = [
        c["finish_reason"] for e in events for c in e.get("choices", []) if c.get("finish_reason")
    ]
    assert finishes == ["content_filter"]
    assert raw.rstrip().endswith("data: [DONE]")
    markers = [e["x_governance"] for e in events if "x_governance" in e]
    assert len(markers) == 1
    review_id = markers[0]["review_id"]
    sent = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))
    assert "secret sauce" not in sent
    item = await review_of(gw).db.get(review_id)
    assert item.segments["0"] == fake.script.text
    assert item.record.complete is True
    assert item.stream is True
    approve = await admin.post(
        f"/governance/v1/reviews/{review_id}/approve",
        json={"version": 1},
        headers=auth(REVIEWER_TOKEN),
    )
    assert approve.status == 200
    body = await (
        await admin.get(f"/governance/v1/reviews/{review_id}/result", headers=auth(CLIENT_KEY))
    ).json()
    choice = body["response"]["choices"][0]
    assert choice["message"]["content"] == fake.script.text
    assert choice["finish_reason"] == "stop"


async def test_stream_hold_before_any_text_says_held(make_gateway, fake):
    fake.script.text = "secret sauce first."
    proxy, _, gw = await start(make_gateway, fake)
    resp = await hold_one(proxy, stream=True)
    _, parsed = await read_sse(resp)
    events = [e for e in parsed if isinstance(e, dict)]
    sent = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))
    assert sent == "This response is held for review."
    review_id = next(e["x_governance"]["review_id"] for e in events if "x_governance" in e)
    assert (await review_of(gw).db.get(review_id)).segments["0"] == fake.script.text


async def test_anthropic_hold_and_approved_result(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, _ = await start(make_gateway, fake)
    resp = await proxy.post(
        "/v1/messages",
        json={
            "model": "claude-test",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "recipe?"}],
        },
        headers={"x-api-key": CLIENT_KEY},
    )
    body = await resp.json()
    review_id = resp.headers["x-governance-review-id"]
    assert body["content"][0]["text"] == "This response is held for review."
    await admin.post(
        f"/governance/v1/reviews/{review_id}/approve",
        json={"version": 1, "edited": {"0": "Edited."}},
        headers=auth(REVIEWER_TOKEN),
    )
    result = await (
        await admin.get(
            f"/governance/v1/reviews/{review_id}/result", headers={"x-api-key": CLIENT_KEY}
        )
    ).json()
    assert result["response"]["type"] == "message"
    assert result["response"]["content"][0]["text"] == "Edited."


async def test_wait_mode_returns_the_decision_in_the_same_call(make_gateway, fake):
    fake.script.text = "Please wait for me while I check."
    proxy, admin, gw = await start(make_gateway, fake)
    svc = review_of(gw)
    call = asyncio.create_task(proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY)))
    for _ in range(200):
        items, _ = await svc.db.list_items({"state": "pending"})
        if items:
            break
        await asyncio.sleep(0.02)
    assert len(items) == 1
    approve = await admin.post(
        f"/governance/v1/reviews/{items[0].id}/approve",
        json={"version": 1, "edited": {"0": "Checked: all fine."}},
        headers=auth(REVIEWER_TOKEN),
    )
    assert approve.status == 200
    resp = await call
    body = await resp.json()
    assert resp.headers["x-governance-review-status"] == "approved"
    assert body["choices"][0]["message"]["content"] == "Checked: all fine."


async def test_two_reviewers_at_once_one_gets_409(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, _ = await start(make_gateway, fake)
    review_id = (await hold_one(proxy)).headers["x-governance-review-id"]
    approve = admin.post(
        f"/governance/v1/reviews/{review_id}/approve",
        json={"version": 1},
        headers=auth(REVIEWER_TOKEN),
    )
    reject = admin.post(
        f"/governance/v1/reviews/{review_id}/reject",
        json={"version": 1, "reason": "no"},
        headers=auth(ADMIN_TOKEN),
    )
    results = await asyncio.gather(approve, reject)
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 409]
    loser = next(r for r in results if r.status == 409)
    message = (await loser.json())["error"]["message"]
    assert review_id in message and "not applied" in message
    audit = await (
        await admin.get(f"/governance/v1/reviews/{review_id}/audit", headers=auth(REVIEWER_TOKEN))
    ).json()
    decisions = [a for a in audit["audit"] if a["action"] in ("approve", "reject")]
    assert len(decisions) == 1


async def test_stale_version_is_409_and_claim_blocks_others(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, _ = await start(make_gateway, fake)
    review_id = (await hold_one(proxy)).headers["x-governance-review-id"]
    base = f"/governance/v1/reviews/{review_id}"
    claim = await admin.post(f"{base}/claim", json={"version": 1}, headers=auth(REVIEWER_TOKEN))
    assert claim.status == 200
    assert (await claim.json())["item"]["assignee"] == "rita"
    stale = await admin.post(f"{base}/escalate", json={"version": 1}, headers=auth(REVIEWER_TOKEN))
    assert stale.status == 409
    assert "changed since you loaded it" in (await stale.json())["error"]["message"]
    no_version = await admin.post(f"{base}/approve", json={}, headers=auth(REVIEWER_TOKEN))
    assert no_version.status == 400
    esc = await admin.post(
        f"{base}/escalate", json={"version": 2, "note": "legal"}, headers=auth(REVIEWER_TOKEN)
    )
    item = (await esc.json())["item"]
    assert item["escalations"] == 1 and item["priority"] == 30


async def test_no_token_and_wrong_role(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, _ = await start(make_gateway, fake)
    review_id = (await hold_one(proxy)).headers["x-governance-review-id"]
    assert (await admin.get("/governance/v1/reviews")).status == 401
    assert (await admin.get("/governance/v1/reviews", headers=auth("nope"))).status == 401
    listing = await admin.get("/governance/v1/reviews", headers=auth(REVIEWER_TOKEN))
    assert listing.status == 200
    bulk = await admin.post(
        "/governance/v1/reviews/bulk",
        headers=auth(REVIEWER_TOKEN),
        json={"action": "approve", "items": [{"id": review_id, "version": 1}]},
    )
    assert bulk.status == 403
    allow = await admin.post(
        f"/governance/v1/reviews/{review_id}/allowlist",
        headers=auth(REVIEWER_TOKEN),
        json={"policy": "hold-sauce", "finding": 0},
    )
    assert allow.status == 403
    page = await admin.get("/review/", allow_redirects=False)
    assert page.status == 303 and page.headers["location"].startswith("/login?next=")


async def test_list_filters_counts_and_bulk(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, gw = await start(make_gateway, fake)
    ids = [(await hold_one(proxy)).headers["x-governance-review-id"] for _ in range(3)]
    fake.script.text = "Please wait for me."
    svc = review_of(gw)
    listing = await (
        await admin.get("/governance/v1/reviews?severity=high", headers=auth(REVIEWER_TOKEN))
    ).json()
    assert sorted(i["id"] for i in listing["items"]) == sorted(ids)
    assert listing["counts"]["by_state"]["pending"] == 3
    none = await (
        await admin.get("/governance/v1/reviews?policy=hold-and-wait", headers=auth(REVIEWER_TOKEN))
    ).json()
    assert none["items"] == []
    bad = await admin.get("/governance/v1/reviews?severity=huge", headers=auth(REVIEWER_TOKEN))
    assert bad.status == 400
    bulk = await admin.post(
        "/governance/v1/reviews/bulk",
        headers=auth(ADMIN_TOKEN),
        json={
            "action": "reject",
            "reason": "batch",
            "items": [{"id": ids[0], "version": 1}, {"id": ids[1], "version": 7}],
        },
    )
    assert bulk.status == 207
    results = {r["id"]: r for r in (await bulk.json())["results"]}
    assert results[ids[0]]["ok"] and not results[ids[1]]["ok"]
    assert results[ids[1]]["status"] == 409
    mine = await (
        await admin.get("/governance/v1/reviews?state=rejected", headers=auth(REVIEWER_TOKEN))
    ).json()
    assert [i["id"] for i in mine["items"]] == [ids[0]]
    stats = await (
        await admin.get("/governance/v1/reviews/stats", headers=auth(REVIEWER_TOKEN))
    ).json()
    assert stats["approval_rates"]["hold-sauce"] == {
        "approved": 0,
        "rejected": 1,
        "decided": 1,
        "approval_rate": 0.0,
    }
    metrics = await (await admin.get("/metrics")).text()
    assert 'gateway_review_queue_depth{severity="high",state="pending"} 2.0' in metrics
    assert 'gateway_review_approval_rate{policy="hold-sauce"} 0.0' in metrics
    assert svc.metrics.decisions.labels("hold-sauce", "rejected")._value.get() == 1


async def test_comments_are_audited(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, _ = await start(make_gateway, fake)
    review_id = (await hold_one(proxy)).headers["x-governance-review-id"]
    made = await admin.post(
        f"/governance/v1/reviews/{review_id}/comments",
        json={"body": "Looks like a recipe quote."},
        headers=auth(REVIEWER_TOKEN),
    )
    assert made.status == 201
    detail = await (
        await admin.get(f"/governance/v1/reviews/{review_id}", headers=auth(REVIEWER_TOKEN))
    ).json()
    assert [c["body"] for c in detail["comments"]] == ["Looks like a recipe quote."]
    assert [a["action"] for a in detail["audit"]] == ["held", "comment"]


async def test_privacy_mode_keeps_hash_and_evidence_only(make_gateway, fake, tmp_path):
    fake.script.text = SAUCE
    route = Route(name="private", upstream=fake.url, review={"privacy": "hash-and-evidence"})
    proxy, admin, gw = await make_gateway([route], upstream=fake)
    review_id = (await hold_one(proxy)).headers["x-governance-review-id"]
    item = await review_of(gw).db.get(review_id)
    assert item.segments is None and item.response is None
    assert item.text_stored is False and len(item.text_hash) == 64
    assert item.preview == ""
    assert "body" not in item.request and "headers" not in item.request
    assert item.record.policies[0].findings[0].evidence["match"] == "secret sauce"
    raw = (tmp_path / "gateway.db").read_bytes()
    assert b"grandma" not in raw
    await admin.post(
        f"/governance/v1/reviews/{review_id}/approve",
        json={"version": 1},
        headers=auth(REVIEWER_TOKEN),
    )
    result = await (
        await admin.get(f"/governance/v1/reviews/{review_id}/result", headers=auth(CLIENT_KEY))
    ).json()
    assert result["status"] == "approved" and result["response"] is None
    assert "privacy" in result["note"]


async def test_sla_sweep_escalates_and_expires(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, gw = await start(make_gateway, fake)
    svc = review_of(gw)
    events: list[ReviewEvent] = []
    gw.events.subscribe(ReviewEvent, events.append)
    review_id = (await hold_one(proxy)).headers["x-governance-review-id"]
    item = await svc.db.get(review_id)
    swept = await svc.sweeper.sweep(now=item.sla_deadline + 1)
    assert swept["overdue"] == 1
    item = await svc.db.get(review_id)
    assert item.overdue is True and item.priority == 30 and item.escalations == 1
    assert [e.type for e in events] == ["review.held", "review.escalated"]
    assert events[-1].reason == "overdue"
    # overdue is marked once, not on every sweep
    assert (await svc.sweeper.sweep(now=item.sla_deadline + 2))["overdue"] == 0
    swept = await svc.sweeper.sweep(now=item.expires_at + 1)
    assert swept["expired"] == 1
    result = await (
        await admin.get(f"/governance/v1/reviews/{review_id}/result", headers=auth(CLIENT_KEY))
    ).json()
    assert result["status"] == "expired" and result["outcome"] == "rejected"
    audit = [a["action"] for a in await svc.db.audit(review_id)]
    assert audit == ["held", "overdue", "expire"]


async def test_callback_is_signed_and_retried(make_gateway, fake, aiohttp_server, monkeypatch):
    from aiohttp import web

    from gateway.review.callbacks import sign

    got: list = []
    fail_first = {"left": 1}

    async def hook(request: web.Request) -> web.Response:
        got.append((request.headers.copy(), await request.read()))
        if fail_first["left"]:
            fail_first["left"] -= 1
            return web.Response(status=500)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    monkeypatch.setenv("REVIEW_HOOK_SECRET", "s3cret")
    fake.script.text = SAUCE
    route = Route(
        name="default",
        upstream=fake.url,
        review={
            "callback_url": str(server.make_url("/hook")),
            "callback_secret_env": "REVIEW_HOOK_SECRET",
        },
    )
    proxy, admin, gw = await make_gateway([route], upstream=fake)
    svc = review_of(gw)
    review_id = (await hold_one(proxy)).headers["x-governance-review-id"]
    await admin.post(
        f"/governance/v1/reviews/{review_id}/approve",
        json={"version": 1},
        headers=auth(REVIEWER_TOKEN),
    )
    for _ in range(300):
        if got:
            break
        await asyncio.sleep(0.02)
    assert len(got) == 1
    # the retry is scheduled later; make it due now instead of waiting
    await gw.store.execute("UPDATE review_callbacks SET next_at = 0")
    assert await svc.callbacks.deliver_due() == 1
    headers, body = got[-1]
    assert len(got) == 2
    payload = json.loads(body)
    assert payload["id"] == review_id and payload["status"] == "approved"
    expected = sign("s3cret", headers["X-Governance-Timestamp"], body)
    assert headers["X-Governance-Signature"] == expected
    rows = await svc.db.callbacks_for(review_id)
    assert rows[0]["state"] == "sent" and rows[0]["attempts"] == 2


async def test_allowlist_from_a_finding_is_refused_for_phrases(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, gw = await start(make_gateway, fake)
    review_id = (await hold_one(proxy)).headers["x-governance-review-id"]
    resp = await admin.post(
        f"/governance/v1/reviews/{review_id}/allowlist",
        headers=auth(ADMIN_TOKEN),
        json={"policy": "hold-sauce", "finding": 0},
    )
    assert resp.status == 422
    assert "no allowlist" in (await resp.json())["reason"]


async def test_blocking_policies_are_untouched(make_gateway, fake):
    fake.script.text = "the launch codes are 1234"
    proxy, _, gw = await start(make_gateway, fake)
    resp = await proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY))
    assert resp.headers["x-governance-decision"] == "block"
    assert "x-governance-review-id" not in resp.headers
    assert (await review_of(gw).db.counts())["by_state"]["pending"] == 0


async def test_a_hold_that_cannot_be_stored_is_not_acknowledged(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, _, gw = await start(make_gateway, fake)

    async def broken(item, actor="gateway"):
        raise OSError("disk full")

    review_of(gw).db.insert = broken
    resp = await hold_one(proxy)
    assert resp.status == 503
    assert "x-governance-review-id" not in resp.headers
    body = await resp.json()
    assert body["error"]["code"] == "review-unavailable"
    assert "secret sauce" not in json.dumps(body)


EXPIRING = """\
policies:
  - id: hold-lenient
    kind: phrases
    phrases: ["secret sauce"]
    action: review
    review: {expire_action: approve, expire_after: 60, sla: 10}
"""


async def test_expire_action_approve_releases_the_original(make_gateway, fake, policy_dir):
    write_policies(policy_dir, EXPIRING)
    fake.script.text = SAUCE
    proxy, admin, gw = await start(make_gateway, fake)
    svc = review_of(gw)
    review_id = (await hold_one(proxy)).headers["x-governance-review-id"]
    item = await svc.db.get(review_id)
    assert round(item.sla_deadline - item.created_at) == 10
    assert round(item.expires_at - item.created_at) == 60
    await svc.sweeper.sweep(now=item.expires_at + 1)
    result = await (
        await admin.get(f"/governance/v1/reviews/{review_id}/result", headers=auth(CLIENT_KEY))
    ).json()
    assert result["status"] == "expired" and result["outcome"] == "approved"
    assert result["response"]["choices"][0]["message"]["content"] == SAUCE
    # an expiry is not a person's judgement: it stays out of the approval rate
    assert await svc.db.approval_rates() == {}


@pytest.mark.parametrize(
    ("pieces", "seen", "expected"),
    [
        # the guard took the first run of a read and stopped: the rest is unfed
        ([("0", "abc"), None, ("0", "def")], "xxabc", [("0", "def")]),
        # neighbouring pieces of one segment are taken as one run
        ([("0", "ab"), ("0", "cd"), None, ("0", "ef")], "ab" + "cd", [("0", "ef")]),
        # two segments interleaved; it stopped inside segment 1's first run
        ([("0", "a"), ("1", "b"), ("0", "c"), ("1", "d")], "a|b", [("0", "c"), ("1", "d")]),
        # everything taken (the stop came at the end of the stream)
        ([("0", "abc")], "abc", []),
    ],
)
def test_unfed_text_of_the_stopping_read(pieces, seen, expected):
    from gateway.proxy.adapters.base import Raw, Text
    from gateway.proxy.streaming import unfed_text

    items = [Text(*p) if p else Raw(None, {"x": 1}) for p in pieces]
    texts = dict(zip(("0", "1"), seen.split("|"), strict=False))
    assert unfed_text(items, texts) == expected


async def test_responses_stream_names_the_review_in_metadata(make_gateway, fake):
    fake.script.text = "Intro words first. " * 6 + "Then the secret sauce appears. More text."
    proxy, _, gw = await start(make_gateway, fake)
    resp = await proxy.post(
        "/v1/responses",
        json={"model": "gpt-test", "input": "recipe?", "stream": True},
        headers=auth(CLIENT_KEY),
    )
    raw = (await resp.read()).decode()
    events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "content_filter"}
    review_id = final["response"]["metadata"]["governance_review_id"]
    item = await review_of(gw).db.get(review_id)
    assert item.segments == {"0.0": fake.script.text}
    assert "secret sauce" not in raw


async def test_a_client_gone_while_waiting_leaves_the_item_named_in_the_record(
    aiohttp_client, fake, tmp_path, policy_dir
):
    """The record names the stored item even when the client leaves during the wait."""
    from gateway.app import build_gateway, create_app
    from gateway.records.decision import DecisionRecord
    from tests.conftest import settings_for

    fake.script.text = "Please wait for me while I check."
    settings = settings_for(tmp_path, [Route(name="default", upstream=fake.url)], [str(policy_dir)])
    gw = build_gateway(settings)
    # as the real server runs: a client that hangs up cancels its handler
    proxy = await aiohttp_client(create_app(gw), server_kwargs={"handler_cancellation": True})
    records: list[DecisionRecord] = []
    gw.events.subscribe(DecisionRecord, records.append)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY)), 1.0)
    for _ in range(200):
        if records:
            break
        await asyncio.sleep(0.02)
    [record] = records
    items, _ = await review_of(gw).db.list_items({"state": "pending"})
    assert [i.id for i in items] == [record.review_id]
    assert record.action == "cancelled" and record.client_disconnected


def test_an_edited_private_responses_answer_keeps_its_model():
    from gateway.proxy.adapters import RequestInfo
    from gateway.proxy.adapters.openai_responses import ResponsesAdapter

    # privacy mode kept no body: the approved answer is built from the edit alone
    body = ResponsesAdapter().with_texts(RequestInfo({}, model="gpt-x"), None, {"0.0": "Edited."})
    assert body["model"] == "gpt-x" and body["status"] == "completed"
    assert body["output"][0]["content"][0]["text"] == "Edited."
