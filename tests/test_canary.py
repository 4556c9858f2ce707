"""Routes that split their traffic: sticky choice, automatic rollback, promote and roll back."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import pytest
from aiohttp import web

from gateway.cli import main as cli_main
from gateway.config import Route, load_settings
from gateway.errors import ConfigError
from gateway.proxy.variants import choose, point
from tests.conftest import ADMIN_TOKEN, REVIEWER_TOKEN, incidents_of, write_policies
from tests.fakes import FakeUpstream

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = "/v1/chat/completions"
POLICY = (
    "policies:\n  - {id: no-secret, kind: phrases, phrases: [internal use only], action: block}\n"
)
CLEAN = "Here is a plain answer to your question."
LEAK = "This is for internal use only, do not share."


def split(weights: dict[str, float], **rollback) -> Route:
    body: dict = {
        "name": "chat",
        "variants": [
            {"name": name, "upstream": f"http://{name}.test", "weight": w}
            for name, w in weights.items()
        ],
    }
    if rollback:
        body["rollback_on"] = rollback
    return Route.model_validate(body)


def placed(route: Route, weights: dict[str, float], keys: list[str]) -> dict[str, str]:
    return {k: choose(route, weights, point(route, k)).name for k in keys}


def test_a_key_keeps_its_variant_and_only_the_moved_share_changes():
    route = split({"stable": 95, "candidate": 5})
    keys = [f"key_{n}" for n in range(4000)]
    first = placed(route, {"stable": 95, "candidate": 5}, keys)
    # sticky: the same key lands on the same variant every time
    assert placed(route, {"stable": 95, "candidate": 5}, keys) == first
    share = sum(v == "candidate" for v in first.values()) / len(keys)
    assert 0.04 < share < 0.06
    # ramping the candidate up moves clients from stable to it, never back
    ramped = placed(route, {"stable": 80, "candidate": 20}, keys)
    assert all(ramped[k] == "candidate" for k, v in first.items() if v == "candidate")
    assert 0.18 < sum(v == "candidate" for v in ramped.values()) / len(keys) < 0.22
    # rolled back: everyone on stable
    assert set(placed(route, {"stable": 95, "candidate": 0}, keys).values()) == {"stable"}
    # every weight at 0 cannot serve anyone: the configured split does
    assert set(placed(route, {"stable": 0, "candidate": 0}, keys).values()) == {
        "stable",
        "candidate",
    }


def test_variants_default_the_upstream_to_the_baseline_and_bad_ones_point_into_the_file(
    tmp_path: Path,
):
    route = split({"stable": 90, "candidate": 10}, breach_rate={"max_ratio": 2})
    assert route.upstream == "http://stable.test"
    assert route.baseline_variant().name == "stable"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "routes:\n"
        "  - name: chat\n"
        "    variants:\n"
        "      - {name: stable, upstream: 'http://a.test', weight: 90}\n"
        "      - {name: candidate, upstream: 'ftp://b.test', weight: 10}\n"
        "    rollback_on: {baseline: nope, breach_rate: {max_ratio: 0.5}}\n"
        "  - name: other\n"
        "    upstream: 'http://c.test'\n"
        "    rollback_on: {error_rate: {}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    text = "\n".join(err.value.errors)
    assert f"{config}:5:37: invalid-value: routes.0.variants.1.upstream" in text
    assert "http(s) URL" in text
    assert f"{config}:6:60: invalid-value: routes.0.rollback_on.breach_rate.max_ratio" in text
    assert f"{config}:7:5: invalid-value: routes.1: Value error, rollback_on needs variants" in text
    config.write_text(
        "routes:\n"
        "  - name: chat\n"
        "    variants:\n"
        "      - {name: stable, upstream: 'http://a.test', weight: 90}\n"
        "      - {name: stable, upstream: 'http://b.test', weight: 10}\n"
        "    rollback_on: {baseline: nope, breach_rate: {}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert err.value.errors == [
        f"{config}:2:5: invalid-value: routes.0: Value error, variant names must be unique: stable"
    ]


async def upstream(aiohttp_server, name: str, every: int) -> FakeUpstream:
    """A fake model whose every ``every``-th answer leaks the phrase the policy blocks."""
    fake = FakeUpstream()
    fake.name = name
    count = itertools.count(1)
    fake.script.reply = lambda body: LEAK if next(count) % every == 0 else CLEAN
    server = await aiohttp_server(fake.app)
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


async def ask(proxy, key: str) -> tuple[int, str]:
    resp = await proxy.post(
        CHAT,
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}"},
    )
    await resp.read()
    return resp.status, resp.headers["x-governance-variant"]


async def until(check, what: str, seconds: float = 15.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_candidate_breaching_five_times_as_often_is_rolled_back_with_one_incident(
    aiohttp_server, make_gateway, tmp_path, policy_dir, monkeypatch, capsys
):
    write_policies(policy_dir, POLICY)
    stable = await upstream(aiohttp_server, "stable", every=50)  # 2 %
    candidate = await upstream(aiohttp_server, "candidate", every=10)  # 10 %
    route = Route.model_validate(
        {
            "name": "chat",
            "variants": [
                {"name": "stable", "upstream": stable.url, "weight": 50},
                {"name": "candidate", "upstream": candidate.url, "weight": 50},
            ],
            "rollback_on": {
                "window": 600,
                "check_interval": 0.2,
                "breach_rate": {"max_ratio": 2.0, "min_samples": 200},
            },
        }
    )
    proxy, admin, gw = await make_gateway([route])
    seen: dict[str, str] = {}
    for n in range(60):
        seen[f"client-{n}"] = (await ask(proxy, f"client-{n}"))[1]
    assert set(seen.values()) == {"stable", "candidate"}
    # the same clients again: every one lands where it did
    for key, variant in seen.items():
        assert (await ask(proxy, key))[1] == variant

    async def rolled_back():
        status = await admin.get("/governance/v1/routes/chat/variants", headers=ADMIN)
        body = await status.json()
        return body if body["weights"]["candidate"] == 0 else None

    # more clients until the watcher sees 200 answers of each and rolls the candidate back
    for n in range(60, 3000):
        status_code, variant = await ask(proxy, f"client-{n}")
        assert status_code == 200
        seen[f"client-{n}"] = variant
        if n % 50 == 0 and await rolled_back():
            break
    assert min(len(stable.requests), len(candidate.requests)) >= 200
    status = await until(rolled_back, "the automatic rollback")
    assert status["override"]["actor"] == "auto"
    assert "variant candidate: breach_rate" in status["override"]["reason"]
    # from now on the candidate gets nothing, whoever asks
    before = len(candidate.requests)
    for key in list(seen)[:100]:
        assert (await ask(proxy, key))[1] == "stable"
    assert len(candidate.requests) == before

    service = incidents_of(gw)

    async def incident():
        await service.settle()
        rows = await service.list(route="chat", active=True, limit=10)
        return rows or None

    rows = await until(incident, "the rollback incident")
    assert len(rows) == 1
    inc = rows[0]
    assert inc["title"] == "Route chat: a variant was rolled back"
    shown = await (await admin.get(f"/governance/v1/incidents/{inc['id']}", headers=ADMIN)).json()
    reason = json.dumps(shown)
    # both variants' rates are named, with their counts
    assert "variant candidate: breach_rate" in reason
    assert "against stable's" in reason
    sample = shown["samples"][0]["details"]["breaches"][0]
    assert set(sample["variants"]) == {"stable", "candidate"}
    c, s = sample["variants"]["candidate"], sample["variants"]["stable"]
    assert c["breach_rate"] > 4 * s["breach_rate"] > 0
    assert c["answers"] >= 200 and s["answers"] >= 200
    # a second check finds nothing more to roll back: still one incident
    await asyncio.sleep(0.5)
    await service.settle()
    assert len(await service.list(route="chat", limit=10)) == 1

    # people promote and roll back from the command line
    url = str(admin.make_url("")).rstrip("/")
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    code = await asyncio.to_thread(
        cli_main, ["route", "promote", "chat", "--reason", "fixed", "--admin-url", url]
    )
    assert code == 0
    assert "route chat: stable 0, candidate 100 (by root)" in capsys.readouterr().out
    for key in list(seen)[:20]:
        assert (await ask(proxy, key))[1] == "candidate"
    code = await asyncio.to_thread(cli_main, ["route", "rollback", "chat", "--admin-url", url])
    assert code == 0
    assert "route chat: stable 50, candidate 0 (by root)" in capsys.readouterr().out
    for key in list(seen)[:20]:
        assert (await ask(proxy, key))[1] == "stable"
    code = await asyncio.to_thread(cli_main, ["route", "reset", "chat", "--admin-url", url])
    assert code == 0
    assert "stable 50, candidate 50" in capsys.readouterr().out
    code = await asyncio.to_thread(cli_main, ["route", "variants", "chat", "--admin-url", url])
    assert code == 0
    out = capsys.readouterr().out
    assert "chat: stable 50, candidate 50" in out and "set by root" in out

    # the incident's page offers the way back, and its forms change the weights
    page = await (await admin.get(f"/incidents/{inc['id']}", headers=ADMIN)).text()
    assert 'action="/variants/chat"' in page and "Promote the candidate" in page
    resp = await admin.post(
        "/variants/chat",
        data={"action": "promote", "next": f"/incidents/{inc['id']}"},
        headers=ADMIN,
        allow_redirects=False,
    )
    assert resp.status == 303
    assert resp.headers["location"].startswith(f"/incidents/{inc['id']}?msg=route+chat")
    for key in list(seen)[:10]:
        assert (await ask(proxy, key))[1] == "candidate"
    resp = await admin.post(
        "/variants/chat",
        data={"action": "reset", "next": "https://evil.example/"},
        headers=ADMIN,
        allow_redirects=False,
    )
    assert resp.headers["location"].startswith("/variants/?msg=")
    page = await (await admin.get("/variants/", headers=ADMIN)).text()
    assert '<section class="route" id="route-chat">' in page
    assert "Weights set by root" in page and "<td>candidate</td><td>50 (50)</td>" in page

    # a reviewer may look but not change the weights
    reviewer = {"authorization": f"Bearer {REVIEWER_TOKEN}"}
    resp = await admin.post("/governance/v1/routes/chat/promote", json={}, headers=reviewer)
    assert resp.status == 403
    resp = await admin.post(
        "/governance/v1/routes/chat/promote", json={"variant": "nope"}, headers=ADMIN
    )
    assert resp.status == 400
    assert "variant must be one of stable, candidate" in (await resp.json())["error"]["message"]
    resp = await admin.get("/governance/v1/routes/other/variants", headers=ADMIN)
    assert resp.status == 404


async def test_records_and_metrics_name_the_variant(aiohttp_server, make_gateway, policy_dir):
    write_policies(policy_dir, POLICY)
    a = await upstream(aiohttp_server, "a", every=1000)
    b = await upstream(aiohttp_server, "b", every=1000)
    route = Route.model_validate(
        {
            "name": "chat",
            "sticky": {"by": "header", "header": "x-user"},
            "variants": [
                {"name": "a", "upstream": a.url, "weight": 1},
                {"name": "b", "upstream": b.url, "weight": 1},
            ],
        }
    )
    proxy, admin, gw = await make_gateway([route])
    got = {}
    for user in ("ann", "bob", "cid", "dee", "eve", "fay"):
        resp = await proxy.post(
            CHAT,
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-user": user},
        )
        assert resp.status == 200
        got[user] = resp.headers["x-governance-variant"]
        decision = resp.headers["x-governance-decision-id"]
    assert set(got.values()) == {"a", "b"}
    served = {"a": len(a.requests), "b": len(b.requests)}
    assert served == {v: sum(1 for x in got.values() if x == v) for v in ("a", "b")}
    await gw.decisions.flush()
    record = await gw.store.get_decision(decision)
    assert record["variant"] == got["fay"]
    metrics = (await (await admin.get("/metrics")).text()).splitlines()
    counted = [line for line in metrics if line.startswith("gateway_variant_requests_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 6


def mlflow_at(server, **extra) -> dict:
    """``model_registry`` for the fake registry, serving only loopback upstreams."""
    url = str(server.make_url("")).rstrip("/")
    return {"mlflow": {"url": url, "allowed_upstreams": ["http://127.0.0.1:"], **extra}}


class FakeMlflow:
    """MLflow's model registry REST API (2.0), only the alias endpoints, in memory."""

    def __init__(self) -> None:
        # version -> tags; alias -> version
        self.versions: dict[str, dict[str, str]] = {}
        self.aliases: dict[str, str] = {}
        self.moves: list[tuple[str, str]] = []
        self.app = web.Application()
        self.app.router.add_get("/api/2.0/mlflow/registered-models/alias", self.get_alias)
        self.app.router.add_post("/api/2.0/mlflow/registered-models/alias", self.set_alias)

    async def get_alias(self, request: web.Request) -> web.Response:
        name, alias = request.query.get("name"), request.query.get("alias")
        version = self.aliases.get(alias or "") if name == "chat" else None
        if version is None:
            return web.json_response(
                {
                    "error_code": "INVALID_PARAMETER_VALUE",
                    "message": f"Registered model alias {alias} not found.",
                },
                status=400,
            )
        tags = [{"key": k, "value": v} for k, v in self.versions[version].items()]
        return web.json_response(
            {
                "model_version": {
                    "name": name,
                    "version": version,
                    "current_stage": "None",
                    "status": "READY",
                    "tags": tags,
                    "aliases": [a for a, v in self.aliases.items() if v == version],
                }
            }
        )

    async def set_alias(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("version") not in self.versions:
            return web.json_response({"error_code": "RESOURCE_DOES_NOT_EXIST"}, status=404)
        self.aliases[body["alias"]] = body["version"]
        self.moves.append((body["alias"], body["version"]))
        return web.json_response({})


async def test_variants_named_by_registry_aliases_follow_them_and_roll_back_by_moving_them(
    aiohttp_server, make_gateway, policy_dir
):
    write_policies(policy_dir, POLICY)
    v1, v2, v3 = [await upstream(aiohttp_server, name, every=1000) for name in ("v1", "v2", "v3")]
    mlflow = FakeMlflow()
    mlflow.versions = {
        "1": {"gateway.upstream": v1.url},
        "2": {"gateway.upstream": v2.url, "note": "candidate"},
        "3": {"gateway.upstream": v3.url},
        "4": {},  # registered but not deployed: no URL
    }
    mlflow.aliases = {"champion": "1", "challenger": "2"}
    registry = await aiohttp_server(mlflow.app)
    route = Route.model_validate(
        {
            "name": "chat",
            "variants": [
                {"name": "stable", "model": "chat@champion", "weight": 50},
                {"name": "candidate", "model": "chat@challenger", "weight": 50},
            ],
        }
    )
    proxy, admin, gw = await make_gateway(
        [route],
        model_registry=mlflow_at(registry, refresh_interval=0.1),
    )

    async def served(clients: int = 40) -> dict[str, int]:
        before = {u.name: len(u.requests) for u in (v1, v2, v3)}
        for n in range(clients):
            assert (await ask(proxy, f"c{n}"))[0] == 200
        return {u.name: len(u.requests) - before[u.name] for u in (v1, v2, v3)}

    got = await served()
    assert got["v1"] > 0 and got["v2"] > 0 and got["v3"] == 0
    status = await (await admin.get("/governance/v1/routes/chat/variants", headers=ADMIN)).json()
    assert status["models"]["stable"] == {"model": "chat@champion", "version": "1", "url": v1.url}

    # promote: the champion alias moves to the challenger's version, and takes the traffic
    resp = await admin.post("/governance/v1/routes/chat/promote", json={}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    changed = (await resp.json())["weights"]
    assert changed["registry"] == {"model": "chat@champion", "from": "1", "to": "2"}
    assert mlflow.aliases["champion"] == "2"
    assert (await served())["v2"] == 40

    # roll back: the alias goes back to the version it left
    resp = await admin.post("/governance/v1/routes/chat/rollback", json={}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    assert mlflow.moves == [("champion", "2"), ("champion", "1")]
    assert (await served())["v1"] == 40
    # a second rollback moves nothing more
    await admin.post("/governance/v1/routes/chat/rollback", json={}, headers=ADMIN)
    assert len(mlflow.moves) == 2

    # an alias moved elsewhere (the MLflow UI, a CI job) is followed within the interval
    await admin.post("/governance/v1/routes/chat/reset", json={}, headers=ADMIN)
    mlflow.aliases["challenger"] = "3"

    async def followed():
        status = await admin.get("/governance/v1/routes/chat/variants", headers=ADMIN)
        return (await status.json())["models"]["candidate"]["version"] == "3"

    await until(followed, "the moved alias")
    got = await served()
    assert got["v3"] > 0 and got["v2"] == 0
    # a version with no serving URL gets no traffic rather than an error
    mlflow.aliases["challenger"] = "4"

    async def undeployed():
        status = await admin.get("/governance/v1/routes/chat/variants", headers=ADMIN)
        return (await status.json())["models"]["candidate"]["url"] is None

    await until(undeployed, "the undeployed version")
    assert (await served())["v1"] == 40


async def test_nothing_resolvable_is_a_clear_503(aiohttp_server, make_gateway, policy_dir):
    write_policies(policy_dir, POLICY)
    mlflow = FakeMlflow()  # knows no alias
    registry = await aiohttp_server(mlflow.app)
    route = Route.model_validate(
        {
            "name": "chat",
            "variants": [
                {"name": "stable", "model": "chat@champion", "weight": 1},
                {"name": "candidate", "model": "chat@challenger", "weight": 1},
            ],
        }
    )
    proxy, _, _ = await make_gateway(
        [route],
        model_registry=mlflow_at(registry),
    )
    resp = await proxy.post(
        CHAT, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert resp.status == 503
    error = (await resp.json())["error"]
    assert error["code"] == "variant-unavailable"
    assert "chat@champion, chat@challenger" in error["message"]


async def test_a_change_made_elsewhere_is_never_overwritten_by_an_automatic_rollback(
    aiohttp_server, make_gateway, policy_dir
):
    from gateway.canary.subsystem import Canary
    from gateway.canary.weights import Override

    write_policies(policy_dir, POLICY)
    stable = await upstream(aiohttp_server, "stable", every=50)
    candidate = await upstream(aiohttp_server, "candidate", every=5)
    route = Route.model_validate(
        {
            "name": "chat",
            "variants": [
                {"name": "stable", "upstream": stable.url, "weight": 50},
                {"name": "candidate", "upstream": candidate.url, "weight": 50},
            ],
            # checked by hand below, not by the watcher
            "rollback_on": {"check_interval": 300, "breach_rate": {"min_samples": 50}},
        }
    )
    proxy, admin, gw = await make_gateway([route])
    service = gw.subsystem(Canary).service
    for n in range(200):
        await ask(proxy, f"k{n}")
    await gw.decisions.flush()
    # another process set the weights after this one last read them
    elsewhere = Override("chat", {"stable": 20, "candidate": 80}, "lee", "ramp up", time.time())
    sql, params = elsewhere.upsert()
    await gw.store.execute(sql, *params)
    assert await service.check(route, time.time()) == []
    # theirs stand, and this process now serves them
    assert service.table.weights_for("chat") == {"stable": 20, "candidate": 80}
    row = await gw.store.fetchone("SELECT actor FROM route_variants WHERE route = ?", "chat")
    assert row["actor"] == "lee"
    # judged again under the weights in force (a window from their change on): nothing yet
    assert await service.check(route, time.time()) == []


async def test_a_rolled_back_candidate_does_not_take_over_when_the_baseline_cannot_serve(
    aiohttp_server, make_gateway, policy_dir
):
    write_policies(policy_dir, POLICY)
    mlflow = FakeMlflow()
    candidate = await upstream(aiohttp_server, "candidate", every=1000)
    mlflow.versions = {"2": {"gateway.upstream": candidate.url}}
    mlflow.aliases = {"challenger": "2"}  # the champion alias cannot be read
    registry = await aiohttp_server(mlflow.app)
    route = Route.model_validate(
        {
            "name": "chat",
            "variants": [
                {"name": "stable", "model": "chat@champion", "weight": 90},
                {"name": "candidate", "model": "chat@challenger", "weight": 10},
            ],
        }
    )
    proxy, admin, gw = await make_gateway(
        [route],
        model_registry=mlflow_at(registry),
    )
    # the candidate serves while the stable alias cannot be read...
    assert (await ask(proxy, "k1"))[1] == "candidate"
    resp = await admin.post(
        "/governance/v1/routes/chat/rollback", json={"variant": "candidate"}, headers=ADMIN
    )
    assert resp.status == 200
    # ...but once rolled back, nobody can serve rather than the candidate coming back
    resp = await proxy.post(
        CHAT, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "variant-unavailable"
    assert len(candidate.requests) == 1


async def test_a_tag_outside_the_allowed_prefixes_gets_no_traffic(
    aiohttp_server, make_gateway, policy_dir
):
    write_policies(policy_dir, POLICY)
    mlflow = FakeMlflow()
    good = await upstream(aiohttp_server, "good", every=1000)
    mlflow.versions = {
        "1": {"gateway.upstream": good.url},
        "2": {"gateway.upstream": "http://evil.example"},
    }
    mlflow.aliases = {"champion": "1", "challenger": "2"}
    registry = await aiohttp_server(mlflow.app)
    route = Route.model_validate(
        {
            "name": "chat",
            "variants": [
                {"name": "stable", "model": "chat@champion", "weight": 50},
                {"name": "candidate", "model": "chat@challenger", "weight": 50},
            ],
        }
    )
    proxy, admin, _ = await make_gateway(
        [route],
        model_registry=mlflow_at(registry),
    )
    assert {(await ask(proxy, f"k{n}"))[1] for n in range(20)} == {"stable"}
    status = await (await admin.get("/governance/v1/routes/chat/variants", headers=ADMIN)).json()
    assert status["models"]["candidate"] == {
        "model": "chat@challenger",
        "version": "2",
        "url": None,
    }
