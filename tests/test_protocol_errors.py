"""Every error a client gets is in its own protocol, even when its body was never read.

The adapter is chosen from the path (and, for paths no adapter governs, the
Anthropic SDK's version header) before the body is read, so a malformed,
oversized or non-object body on ``/v1/messages`` gets Anthropic's error shape
and on the OpenAI paths OpenAI's.
"""

from __future__ import annotations

import pytest

from gateway.config import Route

LIMIT = 1000

BAD_BODIES = {
    "malformed": (b'{"model": "m", "messages": [', 400, "invalid-request"),
    "oversized": (b'{"model": "m", "x": "' + b"a" * (2 * LIMIT) + b'"}', 413, "request-too-large"),
    "array": (b'[{"model": "m"}]', 400, "invalid-request"),
    "empty": (b"", 400, "invalid-request"),
}

ANTHROPIC_TYPES = {400: "invalid_request_error", 413: "request_too_large"}


def assert_anthropic_error(body: dict, status: int, code: str) -> None:
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert body["error"]["type"] == ANTHROPIC_TYPES[status]
    assert body["error"]["code"] == code and body["error"]["message"]


def assert_openai_error(body: dict, status: int, code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["type"] == "invalid_request_error"


@pytest.fixture
async def proxy(make_gateway, fake):
    routes = [Route(name="default", upstream=fake.url)]
    client, _, _ = await make_gateway(routes, limits={"max_body_bytes": LIMIT})
    return client


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_messages_errors_are_anthropic_shaped(proxy, fake, case):
    data, status, code = BAD_BODIES[case]
    resp = await proxy.post("/v1/messages", data=data, headers={"content-type": "application/json"})
    assert resp.status == status
    assert resp.headers["x-governance-error-code"] == code
    assert_anthropic_error(await resp.json(), status, code)
    assert fake.requests == []


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/responses"])
@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_openai_errors_are_openai_shaped(proxy, fake, path, case):
    data, status, code = BAD_BODIES[case]
    resp = await proxy.post(path, data=data, headers={"content-type": "application/json"})
    assert resp.status == status
    assert resp.headers["x-governance-error-code"] == code
    assert_openai_error(await resp.json(), status, code)
    assert fake.requests == []


async def test_an_ungoverned_path_answers_an_anthropic_client_in_its_shape(make_gateway, fake):
    # no route serves /elsewhere; the Anthropic SDK's version header says who is asking
    routes = [Route(name="default", upstream=fake.url, path_prefix="/v1/")]
    proxy, _, _ = await make_gateway(routes)
    resp = await proxy.get("/elsewhere", headers={"anthropic-version": "2023-06-01"})
    assert resp.status == 404
    body = await resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert body["error"]["code"] == "no-route"
    resp = await proxy.get("/elsewhere")
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["code"] == "no-route" and "param" in error
