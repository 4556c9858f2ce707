"""The incidents pages: auth, escaping, CSP, chart, forms; and the route CLI."""

from __future__ import annotations

import asyncio
import re

from gateway.cli import main as cli_main
from gateway.config import Route
from gateway.web.pages import fields
from gateway.web.sessions import COOKIE
from tests.conftest import (
    ADMIN_TOKEN,
    REVIEWER_TOKEN,
    leak_policy_with_rule,
    write_policies,
)

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = "/v1/chat/completions"

POLICIES = leak_policy_with_rule('    title: "<script>alert(1)</script> {policy} on {route}"\n')


async def opened(make_gateway, fake, policy_dir, routes=None):
    write_policies(policy_dir, POLICIES)
    fake.script.text = "the launch codes are 1"
    proxy, admin, gw = await make_gateway(routes, upstream=fake)
    for _ in range(3):
        await proxy.post(CHAT, json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    [inc] = (await (await admin.get("/governance/v1/incidents", headers=ADMIN)).json())["incidents"]
    return proxy, admin, gw, inc


async def test_pages_need_auth_escape_and_send_csp(make_gateway, fake, policy_dir):
    _, admin, _, inc = await opened(make_gateway, fake, policy_dir)
    resp = await admin.get("/incidents/", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["location"] == "/login?next=/incidents/"

    resp = await admin.get("/incidents/", headers=ADMIN)
    assert resp.status == 200
    html = await resp.text()
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "style-src 'self'" in csp
    # the shared layout: one stylesheet and one script, both files, nothing inline
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/ui/static/ui.js" defer>']
    assert "<style" not in html and 'href="/ui/static/ui.css"' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; no-forbidden on default" in html
    assert f'href="/incidents/{inc["id"]}"' in html

    resp = await admin.get(f"/incidents/{inc['id']}", headers=ADMIN)
    html = await resp.text()
    assert "<script>" not in html
    svg = re.search(r"<svg .*?</svg>", html, re.S).group(0)
    bars = re.findall(r'<rect class="bar"[^>]*height="([0-9.]+)"><title>[^<]*: (\d+)</title>', svg)
    assert sum(int(n) for _, n in bars) == 3
    # a burst within a minute is one narrow bar at the end of a 30-minute axis
    assert len(bars) == 30 and [n for _, n in bars[:-1]] == ["0"] * 29
    widths = re.findall(r'<rect class="bar"[^>]*width="([0-9.]+)"', svg)
    assert max(float(w) for w in widths) <= 16
    # evidence reads as labelled fields, not a serialised dictionary
    assert '<dl class="evidence">' in html and "{&#34;" not in html and "{'" not in html
    assert "opened" in html and "postmortem.md" in html

    resp = await admin.get(f"/incidents/{inc['id']}/postmortem.md", headers=ADMIN)
    assert resp.status == 200
    assert (await resp.text()).startswith("# Post-mortem (draft): <script>")
    assert "attachment" in resp.headers["content-disposition"]


async def test_token_login_session_and_csrf(make_gateway, fake, policy_dir):
    _, admin, gw, inc = await opened(make_gateway, fake, policy_dir)
    # the old address of the login page leads to the one login
    form = await (await admin.get("/incidents/login?next=/incidents/")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    assert 'name="next" value="/incidents/"' in form
    bad = await admin.post("/login", data={"csrf": csrf, "token": "nope", "next": "/incidents/"})
    assert bad.status == 401
    form = await bad.text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    resp = await admin.post(
        "/login",
        allow_redirects=False,
        data={"csrf": csrf, "token": REVIEWER_TOKEN, "next": "https://evil.example/"},
    )
    # an off-site destination is never followed: the login lands on the first UI page
    assert resp.status == 303
    assert resp.headers["location"] == "/review/"
    page = await admin.get(f"/incidents/{inc['id']}")
    assert page.status == 200
    html = await page.text()
    session_csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    # a form posted without the session's token is refused
    refused = await admin.post(f"/incidents/{inc['id']}", data={"action": "acknowledge"})
    assert refused.status == 403
    ok = await admin.post(
        f"/incidents/{inc['id']}",
        allow_redirects=False,
        data={"action": "acknowledge", "csrf": session_csrf},
    )
    assert ok.status == 303
    detail = await (await admin.get(f"/governance/v1/incidents/{inc['id']}", headers=ADMIN)).json()
    assert detail["state"] == "acknowledged"
    assert detail["timeline"][-1]["actor"] == "rita"
    # a reviewer may not resolve
    denied = await admin.post(
        f"/incidents/{inc['id']}", data={"action": "resolved", "csrf": session_csrf}
    )
    assert denied.status == 403


async def test_route_cli_contains_and_restores(
    make_gateway, fake, fallback_fake, policy_dir, capsys, monkeypatch
):
    routes = [
        Route(name="primary", upstream=fake.url, fallback="backup"),
        Route(name="backup", upstream=fallback_fake.url, path_prefix="/never/"),
    ]
    proxy, admin, gw, inc = await opened(make_gateway, fake, policy_dir, routes)
    url = str(admin.make_url("")).rstrip("/")
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    code = await asyncio.to_thread(
        cli_main,
        [
            "route",
            "contain",
            "primary",
            "--mode",
            "fallback",
            "--incident",
            inc["id"],
            "--admin-url",
            url,
        ],
    )
    assert code == 0
    assert "route primary contained: fallback (by root)" in capsys.readouterr().out
    resp = await proxy.post(
        CHAT, json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    assert resp.headers["x-governance-route"] == "backup"
    code = await asyncio.to_thread(cli_main, ["route", "restore", "primary", "--admin-url", url])
    assert code == 0
    assert "route primary restored (was fallback)" in capsys.readouterr().out
    code = await asyncio.to_thread(cli_main, ["route", "restore", "primary", "--admin-url", url])
    assert code == 1
    assert "409: route primary is not contained" in capsys.readouterr().err
    kinds = [
        e["kind"]
        for e in (
            await (await admin.get(f"/governance/v1/incidents/{inc['id']}", headers=ADMIN)).json()
        )["timeline"]
    ]
    assert kinds == ["opened", "contained", "restored"]
    code = await asyncio.to_thread(cli_main, ["incident", "list", "--admin-url", url])
    assert code == 0
    assert inc["id"] in capsys.readouterr().out


async def test_one_login_serves_both_uis(make_gateway, fake, policy_dir):
    _, admin, gw, inc = await opened(make_gateway, fake, policy_dir)
    form = await (await admin.get("/review/login")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    done = await admin.post(
        "/login",
        allow_redirects=False,
        data={"csrf": csrf, "token": REVIEWER_TOKEN, "next": "/review/"},
    )
    assert done.status == 303 and done.headers["location"] == "/review/"
    session = done.cookies[COOKIE].value
    # the session made for the review queue opens the incidents pages too
    resp = await admin.get("/incidents/", allow_redirects=False)
    assert resp.status == 200
    assert "signed in as rita" in await resp.text()
    admin.session.cookie_jar.clear()
    resp = await admin.get("/incidents/", allow_redirects=False, cookies={COOKIE: "not-a-session"})
    assert resp.status == 303
    resp = await admin.get("/incidents/", allow_redirects=False, cookies={COOKIE: session})
    assert resp.status == 200


def test_evidence_fields_are_labelled_and_readable():
    shown = fields({"source_id": "doc-7", "score": 0.912345, "spans": [[1, 4]], "empty": ""})
    assert shown == [("source id", "doc-7"), ("score", "0.9123"), ("spans", "[[1, 4]]")]
    assert fields("x" * 400)[0][1].endswith("…") and fields(None) == []
