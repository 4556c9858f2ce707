"""The governance API's OpenAPI document: valid, complete, and true to what the gateway answers."""

from __future__ import annotations

import orjson
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.config import Route
from gateway.web.openapi import SPEC_PATH, api_routes, build_document
from tests.conftest import ADMIN_TOKEN, REVIEWER_TOKEN, write_policies

# the admin listener's HTML pages and their assets: for browsers, left out of the document
UI_PREFIXES = ("/review", "/incidents/", "/variants/", "/login", "/logout", "/ui/static/")
# JSON API routes the document does not cover yet, each with the reason; empty means all
UNDOCUMENTED: dict[tuple[str, str], str] = {}

POLICIES = """\
policies:
  - id: hold-sauce
    kind: phrases
    phrases: ["secret sauce"]
    action: review
    severity: high
  - id: no-forbidden
    kind: phrases
    phrases: ["launch codes"]
    action: block
    severity: high
incident_rules:
  - id: leaks
    source: policy
"""

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
REVIEWER = {"authorization": f"Bearer {REVIEWER_TOKEN}"}
CLIENT = {"authorization": "Bearer sk-client-one"}


@pytest.fixture
def policy_dir(tmp_path):
    directory = tmp_path / "policies"
    write_policies(directory, POLICIES)
    return directory


class Checker:
    """Calls the admin API and validates each answer against the document."""

    def __init__(self, admin, doc: dict):
        self.admin = admin
        self.doc = doc
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource("urn:openapi", resource)
        self.seen: set[tuple[str, str, int]] = set()

    async def call(
        self,
        method: str,
        template: str,
        expect: int,
        headers: dict | None = None,
        json=None,
        params=None,
        **path: str,
    ):
        resp = await self.admin.request(
            method,
            template.format(**path),
            headers=ADMIN if headers is None else headers,
            json=json,
            params=params,
        )
        body = await resp.read()
        assert resp.status == expect, body
        op = self.doc["paths"][template][method.lower()]
        documented = op["responses"].get(str(expect))
        assert documented is not None, f"{method} {template} answered {expect}, not documented"
        media = resp.content_type
        assert media in documented["content"], (media, documented)
        schema = documented["content"][media]["schema"]
        if media == "application/json":
            data = orjson.loads(body)
            validator = Draft202012Validator(
                {"$ref": "urn:openapi" + schema["$ref"]}, registry=self.registry
            )
            errors = [e.message for e in validator.iter_errors(data)]
            assert not errors, (method, template, expect, errors, data)
        else:
            data = body.decode()
        self.seen.add((method.lower(), template, expect))
        return data


async def started(make_gateway, fake):
    routes = [
        Route(name="default", path_prefix="/v1/", upstream=fake.url),
        # a route that splits its traffic, for the variants API
        Route.model_validate(
            {
                "name": "split",
                "path_prefix": "/split/",
                "variants": [
                    {"name": "stable", "upstream": fake.url, "weight": 9},
                    {"name": "candidate", "upstream": fake.url, "weight": 1},
                ],
            }
        ),
    ]
    proxy, admin, gw = await make_gateway(routes)
    return proxy, admin, gw


async def test_document_is_valid_openapi_31_and_covers_every_api_route(make_gateway, fake):
    _, admin, _ = await started(make_gateway, fake)
    doc = build_document(admin.app)
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    routed = {(m.lower(), p) for m, p, _ in api_routes(admin.app)}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    missing = routed - documented - {(m.lower(), p) for m, p in UNDOCUMENTED}
    assert not missing, f"routes without a description: {sorted(missing)}"
    assert documented <= routed, "the document names a route the app does not serve"
    # everything else on the admin listener is a page or its assets
    for route in admin.app.router.routes():
        path = route.resource.canonical
        if (route.method.lower(), path) not in routed and route.method != "HEAD":
            assert path.startswith(UI_PREFIXES), f"{route.method} {path} is neither API nor UI"
    # the core of the API is there, with the subsystems' parts
    for path in (
        "/healthz",
        "/readyz",
        "/governance/v1/policies",
        "/governance/v1/decisions/{decision_id}",
        "/governance/v1/reviews/{id}/{action}",
        "/governance/v1/incidents/{id}",
        "/governance/v1/routes/{route}/contain",
        SPEC_PATH,
    ):
        assert path in doc["paths"], path
    act = doc["paths"]["/governance/v1/reviews/{id}/{action}"]["post"]
    [action] = [p for p in act["parameters"] if p["name"] == "action"]
    assert action["schema"]["enum"] == ["claim", "release", "approve", "reject", "escalate"]
    assert doc["paths"]["/governance/v1/policies/reload"]["post"]["x-required-role"] == "admin"
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert "/review/" in doc["info"]["description"]


async def test_served_document_is_the_generated_one_and_needs_a_token(make_gateway, fake):
    _, admin, _ = await started(make_gateway, fake)
    resp = await admin.get(SPEC_PATH, headers=REVIEWER)
    assert resp.status == 200
    served = await resp.json()
    assert served == orjson.loads(orjson.dumps(build_document(admin.app)))
    anonymous = await admin.get(SPEC_PATH)
    assert anonymous.status == 401
    assert (await anonymous.json())["error"]["code"] == "unauthorized"


async def test_real_answers_match_the_document(make_gateway, fake, policy_dir):
    proxy, admin, gw = await started(make_gateway, fake)
    doc = build_document(admin.app)
    c = Checker(admin, doc)
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    # health and the document itself
    await c.call("GET", "/healthz", 200, headers={})
    ready = await c.call("GET", "/readyz", 200, headers={})
    assert ready["ready"] is True
    assert "gateway_" in await c.call("GET", "/metrics", 200, headers={})
    await c.call("GET", SPEC_PATH, 200)
    await c.call("GET", "/governance/v1/policies", 401, headers={})

    # policies and decisions
    policies = await c.call("GET", "/governance/v1/policies", 200)
    assert {p["id"] for p in policies["policies"]} == {"hold-sauce", "no-forbidden"}
    checked = await c.call("POST", "/governance/v1/check", 200, json={"text": "hello there"})
    assert checked["action"] == "allow"
    await c.call("POST", "/governance/v1/check", 200, json={"text": "the launch codes"})
    await c.call("POST", "/governance/v1/check", 400, json={"text": "a", "response": {}})
    await c.call("POST", "/governance/v1/check", 404, json={"text": "a", "route": "nope"})
    await c.call("POST", "/governance/v1/policies/reload", 200)
    await c.call("POST", "/governance/v1/policies/reload", 403, headers=REVIEWER)

    fake.script.text = "Here are the launch codes: 1234."
    blocked = await proxy.post("/v1/chat/completions", json=chat, headers=CLIENT)
    decision_id = blocked.headers["x-governance-decision-id"]
    listed = await c.call("GET", "/governance/v1/decisions", 200)
    assert decision_id in {d["decision_id"] for d in listed["decisions"]}
    one = await c.call(
        "GET", "/governance/v1/decisions/{decision_id}", 200, decision_id=decision_id
    )
    assert one["action"] == "block"
    await c.call("GET", "/governance/v1/decisions/{decision_id}", 404, decision_id="nope")
    await c.call("GET", "/governance/v1/decisions", 400, params={"limit": "many"})

    # the review queue
    fake.script.text = "Our recipe uses the secret sauce from grandma."
    held = []
    for _ in range(2):
        resp = await proxy.post("/v1/chat/completions", json=chat, headers=CLIENT)
        held.append(resp.headers["x-governance-review-id"])
    rid, other = held
    queue = await c.call("GET", "/governance/v1/reviews", 200)
    assert {i["id"] for i in queue["items"]} == set(held)
    await c.call("GET", "/governance/v1/reviews", 400, params={"state": "odd"})
    await c.call("GET", "/governance/v1/reviews/stats", 200)
    item = (await c.call("GET", "/governance/v1/reviews/{id}", 200, id=rid))["item"]
    await c.call("GET", "/governance/v1/reviews/{id}", 404, id="f" * 32)
    await c.call("GET", "/governance/v1/reviews/{id}/audit", 200, id=rid)
    pending = await c.call("GET", "/governance/v1/reviews/{id}/result", 200, id=rid)
    assert pending["status"] == "pending"
    await c.call(
        "POST", "/governance/v1/reviews/{id}/comments", 201, json={"body": "looks ok"}, id=rid
    )
    path = "/governance/v1/reviews/{id}/{action}"
    claimed = await c.call(
        "POST", path, 200, json={"version": item["version"]}, id=rid, action="claim"
    )
    await c.call("POST", path, 409, json={"version": item["version"]}, id=rid, action="release")
    await c.call(
        "POST",
        path,
        200,
        json={"version": claimed["item"]["version"], "note": "fine"},
        id=rid,
        action="approve",
    )
    decided = await c.call("GET", "/governance/v1/reviews/{id}/result", 200, id=rid)
    assert decided["status"] == "approved"
    await c.call(
        "POST",
        "/governance/v1/reviews/{id}/allowlist",
        422,
        json={"policy": "hold-sauce", "finding": 0},
        id=other,
    )
    other_version = (await c.call("GET", "/governance/v1/reviews/{id}", 200, id=other))["item"][
        "version"
    ]
    bulk = await c.call(
        "POST",
        "/governance/v1/reviews/bulk",
        200,
        json={
            "action": "reject",
            "reason": "not ours",
            "items": [{"id": other, "version": other_version}],
        },
    )
    assert bulk["results"][0]["ok"] is True
    partly = await c.call(
        "POST",
        "/governance/v1/reviews/bulk",
        207,
        json={"action": "reject", "reason": "again", "items": [{"id": other, "version": 1}]},
    )
    assert partly["results"][0]["ok"] is False
    await c.call("POST", "/governance/v1/reviews/bulk", 403, headers=REVIEWER, json={})

    # incidents and containment
    incidents = await c.call("GET", "/governance/v1/incidents", 200)
    incident = incidents["incidents"][0]
    iid = incident["id"]
    await c.call("GET", "/governance/v1/incidents", 400, params={"state": "odd"})
    await c.call("GET", "/governance/v1/incidents/{id}", 200, id=iid)
    await c.call("GET", "/governance/v1/incidents/{id}", 404, id="nope")
    acted = await c.call(
        "POST",
        "/governance/v1/incidents/{id}/{action}",
        200,
        json={"note": "looking"},
        id=iid,
        action="acknowledge",
    )
    assert acted["state"] != incident["state"] or acted["timeline"]
    markdown = await c.call("GET", "/governance/v1/incidents/{id}/postmortem", 200, id=iid)
    assert iid in markdown
    contained = await c.call(
        "POST",
        "/governance/v1/routes/{route}/contain",
        200,
        json={"mode": "block", "reason": "testing"},
        route="default",
    )
    assert contained["containment"]["mode"] == "block"
    switches = await c.call("GET", "/governance/v1/routes/containment", 200)
    assert [s["route"] for s in switches["containment"]] == ["default"]
    await c.call(
        "POST",
        "/governance/v1/routes/{route}/restore",
        200,
        json={"reason": "done"},
        route="default",
    )

    # route variants
    split = await c.call("GET", "/governance/v1/routes/variants", 200)
    assert [r["route"] for r in split["routes"]] == ["split"]
    await c.call("GET", "/governance/v1/routes/{route}/variants", 200, route="split")
    await c.call("GET", "/governance/v1/routes/{route}/variants", 404, route="default")
    promoted = await c.call(
        "POST",
        "/governance/v1/routes/{route}/{action}",
        200,
        json={"variant": "candidate", "reason": "testing"},
        route="split",
        action="promote",
    )
    assert promoted["weights"]["weights"] == {"stable": 0.0, "candidate": 100.0}
    await c.call(
        "POST",
        "/governance/v1/routes/{route}/{action}",
        400,
        json={"variant": "nope"},
        route="split",
        action="rollback",
    )
    await c.call(
        "POST",
        "/governance/v1/routes/{route}/{action}",
        403,
        json={},
        route="split",
        action="reset",
        headers=REVIEWER,
    )

    # the smaller subsystems
    await c.call("GET", "/governance/v1/indexes", 200)
    await c.call("POST", "/governance/v1/indexes/{name}/reload", 404, name="nope")
    await c.call("GET", "/governance/v1/monitors", 200)
    click = {"event_id": "e1", "decision_id": "d1", "type": "click"}
    await c.call("POST", "/governance/v1/feedback", 200, json=click)
    await c.call("POST", "/governance/v1/feedback", 400, json={"type": "click"})
    await c.call("POST", "/governance/v1/feedback/batch", 200, json={"events": [click]})
    await c.call("GET", "/governance/v1/feedback/labels", 200)

    # a reload that fails keeps the old set and says why
    write_policies(policy_dir, "policies:\n  - id: broken\n    kind: nope\n")
    failed = await c.call("POST", "/governance/v1/policies/reload", 422)
    assert failed["reloaded"] is False and failed["error"]["code"]

    # every documented GET was answered with a success at least once
    gets = {p for p, ops in doc["paths"].items() if "get" in ops}
    answered = {p for m, p, s in c.seen if m == "get" and s < 300}
    assert gets <= answered, sorted(gets - answered)
    statuses = {s for *_, s in c.seen}
    assert {200, 201, 400, 401, 403, 404, 409, 422} <= statuses
