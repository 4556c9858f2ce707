"""The admin listener: health, metrics, auth and the check API."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import ADMIN_TOKEN, REVIEWER_TOKEN
from tests.test_proxy_basic import CHAT, chat_body

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
REVIEWER = {"authorization": f"Bearer {REVIEWER_TOKEN}"}


async def test_health_and_ready(make_gateway, fake):
    _, admin, gw = await make_gateway(upstream=fake)
    assert (await (await admin.get("/healthz")).json()) == {"status": "ok"}
    body = await ready_body(admin)
    assert body["ready"] is True
    assert body["checks"] == {
        "policies": "ok",
        "store": "ok",
        "upstream_client": "ok",
        "models": "ok",
    }


async def ready_body(admin, seconds: float = 60.0) -> dict:
    """/readyz once it says ready (models load in the background), else its last answer."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        resp = await admin.get("/readyz")
        body = await resp.json()
        assert resp.status == (200 if body["ready"] else 503)
        if body["ready"] or asyncio.get_running_loop().time() > deadline:
            return body
        assert body["checks"]["models"] == "loading"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_models_load_before_ready_not_on_the_first_request(make_gateway, fake, policy_dir):
    (policy_dir / "bias.yaml").write_text(
        "policies:\n  - id: bias\n    kind: bias\n    action: block\n", encoding="utf-8"
    )
    _, admin, gw = await make_gateway(upstream=fake)
    body = await ready_body(admin)
    assert body["ready"] is True and body["checks"]["models"] == "ok"
    detector = gw.policies.current.get("bias").detector
    # loaded by the warm-up: no request has reached the gateway yet
    assert detector._classifier._model is not None


async def test_a_model_that_fails_to_load_does_not_block_readiness(
    make_gateway, fake, policy_dir, tmp_path, caplog
):
    # a directory that is not a model: the policy builds, the load fails
    (tmp_path / "not-a-model").mkdir()
    (policy_dir / "bias.yaml").write_text(
        "policies:\n  - id: bias\n    kind: bias\n    action: block\n"
        f"    model: {tmp_path / 'not-a-model'}\n",
        encoding="utf-8",
    )
    _, admin, gw = await make_gateway(upstream=fake)
    body = await ready_body(admin)
    assert body["ready"] is True
    assert "could not load the model of policy bias" in caplog.text


async def test_governance_endpoints_need_a_token(make_gateway, fake):
    _, admin, _ = await make_gateway(upstream=fake)
    resp = await admin.get("/governance/v1/policies")
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"
    resp = await admin.get("/governance/v1/policies", headers={"authorization": "Bearer nope"})
    assert resp.status == 401
    resp = await admin.get("/governance/v1/policies", headers=REVIEWER)
    assert resp.status == 200
    resp = await admin.post("/governance/v1/policies/reload", headers=REVIEWER)
    assert resp.status == 403 and "admin role" in (await resp.json())["error"]["message"]
    resp = await admin.post("/governance/v1/policies/reload", headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["reloaded"] is True


async def test_check_endpoint_matches_proxy_decision(make_gateway, fake):
    _, admin, gw = await make_gateway(upstream=fake)
    resp = await admin.post(
        "/governance/v1/check", headers=REVIEWER, json={"text": "give me the launch codes"}
    )
    body = await resp.json()
    assert resp.status == 200
    assert body["action"] == "block" and body["breached"] == ["no-forbidden"]
    assert body["revision"] == gw.policies.current.revision
    assert "text" not in body
    resp = await admin.post(
        "/governance/v1/check",
        headers=REVIEWER,
        json={
            "response": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": "id ACCT-123456"}],
            }
        },
    )
    body = await resp.json()
    assert body["protocol"] == "anthropic-messages"
    assert body["action"] == "redact" and body["text"] == {"0": "id [ACCOUNT]"}


async def test_check_endpoint_rejects_bad_input(make_gateway, fake):
    _, admin, _ = await make_gateway(upstream=fake)
    for payload in ({}, {"text": "a", "response": {}}, {"text": 5}):
        resp = await admin.post("/governance/v1/check", headers=REVIEWER, json=payload)
        assert resp.status == 400, payload
    resp = await admin.post(
        "/governance/v1/check", headers=REVIEWER, json={"text": "x", "route": "nope"}
    )
    assert resp.status == 404
    resp = await admin.post(
        "/governance/v1/check", headers=REVIEWER, json={"response": {"weird": True}}
    )
    assert resp.status == 400 and "protocol" in (await resp.json())["error"]["message"]


async def test_metrics_count_decisions_and_latency(make_gateway, fake):
    proxy, admin, _ = await make_gateway(upstream=fake)
    await (await proxy.post(CHAT, json=chat_body())).read()
    fake.script.text = "the launch codes"
    await (await proxy.post(CHAT, json=chat_body())).read()
    text = await (await admin.get("/metrics")).text()
    assert 'gateway_requests_total{decision="allow",route="default"} 1.0' in text
    assert 'gateway_requests_total{decision="block",route="default"} 1.0' in text
    assert 'gateway_added_latency_seconds_count{route="default",stream="false"} 2.0' in text
    assert 'gateway_policy_results_total{policy="no-forbidden",status="breach"} 1.0' in text
    assert "gateway_upstream_latency_seconds_bucket" in text
    assert "gateway_policy_revision_info{revision=" in text


async def test_generated_token_when_none_configured(aiohttp_client, tmp_path, policy_dir, fake):
    from gateway.admin import create_admin_app
    from gateway.app import GATEWAY, create_app
    from gateway.config import Route, Settings

    settings = Settings(
        routes=[Route(name="default", upstream=fake.url)],
        policies=[str(policy_dir)],
        data_dir=str(tmp_path / "data"),
        store={"url": f"sqlite:///{tmp_path / 'g.db'}"},
    )
    app = create_app(settings)
    await aiohttp_client(app)
    admin = await aiohttp_client(create_admin_app(app[GATEWAY]))
    token_file = tmp_path / "data" / "admin-token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    token = token_file.read_text().strip()
    assert len(token) >= 32
    resp = await admin.get("/governance/v1/policies", headers={"authorization": f"Bearer {token}"})
    assert resp.status == 200


async def test_a_reload_does_not_take_the_gateway_out_of_rotation(make_gateway, fake):
    _, admin, gw = await make_gateway(upstream=fake)
    assert (await ready_body(admin))["ready"] is True
    assert await gw.policies.reload()
    # models of the new policy set load in the background without holding
    # readiness back: the process keeps serving through a reload
    assert gw.warming == 0
    resp = await admin.get("/readyz")
    assert resp.status == 200
