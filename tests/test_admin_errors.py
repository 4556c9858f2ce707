"""Every error the admin listener gives is ours: JSON with a stable code, or an HTML page.

Never aiohttp's plain-text 404, 405 or 500: not for an unknown path, a wrong
method, a store that is down (SQLite closed or locked, PostgreSQL gone), nor
a policy file that cannot be read on reload.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest

from gateway.app import build_gateway, create_admin_app, create_app
from gateway.config import Route, Store
from gateway.proxy.state import GATEWAY
from tests.conftest import ADMIN_TOKEN, REVIEWER_TOKEN, settings_for
from tests.test_proxy_basic import CHAT, chat_body

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
REVIEWER = {"authorization": f"Bearer {REVIEWER_TOKEN}"}


async def error_of(resp, status: int, code: str) -> dict:
    """The JSON error body of ``resp``, once its status and code are checked."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json", await resp.text()
    body = await resp.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


async def page_of(resp, status: int) -> str:
    assert resp.status == status
    assert resp.content_type == "text/html"
    return await resp.text()


async def test_unknown_paths_are_json_not_found(make_gateway, fake):
    _, admin, _ = await make_gateway(upstream=fake)
    err = await error_of(await admin.get("/nothing-here"), 404, "not-found")
    assert "/nothing-here" in err["message"]
    await error_of(await admin.get("/governance/v1/nothing", headers=REVIEWER), 404, "not-found")
    # without a token the API says so first, and shows nothing of its paths
    await error_of(await admin.get("/governance/v1/nothing"), 401, "unauthorized")


async def test_wrong_method_is_json_with_allow(make_gateway, fake):
    _, admin, _ = await make_gateway(upstream=fake)
    resp = await admin.get("/governance/v1/check", headers=REVIEWER)
    err = await error_of(resp, 405, "method-not-allowed")
    assert "POST" in resp.headers["allow"]
    assert "GET" in err["message"]
    await error_of(await admin.delete("/healthz"), 405, "method-not-allowed")
    await error_of(
        await admin.put("/governance/v1/policies/reload", headers=ADMIN), 405, "method-not-allowed"
    )


async def test_a_body_over_the_admin_limit_is_json(make_gateway, fake):
    _, admin, _ = await make_gateway(upstream=fake)
    resp = await admin.post(
        "/governance/v1/check",
        headers={**REVIEWER, "content-type": "application/json"},
        data=io.BytesIO(b'{"text": "' + b"a" * (3 * 1024 * 1024) + b'"}'),
    )
    await error_of(resp, 413, "request-too-large")


async def test_pages_answer_errors_with_pages(make_gateway, fake):
    _, admin, _ = await make_gateway(upstream=fake)
    html = await page_of(await admin.get("/review/nothing-here", headers=REVIEWER), 404)
    assert "Not Found" in html
    assert (await page_of(await admin.get("/ui/static/nothing.css"), 404)).startswith("<!")
    resp = await admin.put("/login")
    await page_of(resp, 405)
    assert "POST" in resp.headers["allow"]


async def test_closed_sqlite_store_is_503_store_unavailable(make_gateway, fake, caplog):
    proxy, admin, gw = await make_gateway(upstream=fake)
    await (await proxy.post(CHAT, json=chat_body())).read()
    await gw.decisions.flush()
    await gw.store.close()
    for path in (
        "/governance/v1/decisions",
        "/governance/v1/reviews",
        "/governance/v1/incidents",
        "/governance/v1/reviews/0123456789abcdef0123456789abcdef",
    ):
        await error_of(await admin.get(path, headers=ADMIN), 503, "store-unavailable")
    # the reviewer's page says the same as a page
    html = await page_of(await admin.get("/review/", headers=REVIEWER), 503)
    assert "store" in html
    # and readiness says why
    resp = await admin.get("/readyz")
    body = await resp.json()
    assert resp.status == 503 and body["checks"]["store"] == "down: StoreUnavailable"
    assert body["missing"] == ["store"]
    # an outage is a warning naming the request, not a bug's traceback
    ours = [r for r in caplog.records if r.name == "gateway.admin"]
    assert any(
        r.levelname == "WARNING" and "/governance/v1/decisions" in r.getMessage() for r in ours
    )
    assert not [r for r in ours if r.levelname == "ERROR"]


@pytest.mark.slow
async def test_locked_sqlite_store_is_503_store_unavailable(make_gateway, fake, tmp_path):
    """Another process holds the write lock past the busy timeout (a stuck backup, a CLI)."""
    _, admin, gw = await make_gateway(upstream=fake)
    other = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        resp = await admin.post(
            "/governance/v1/routes/default/contain",
            headers=ADMIN,
            json={"mode": "block", "reason": "drill"},
        )
        err = await error_of(resp, 503, "store-unavailable")
        assert "locked" in err["message"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    # once the lock is gone the store serves again
    resp = await admin.get("/governance/v1/decisions", headers=ADMIN)
    assert resp.status == 200


async def test_postgres_going_down_is_503_store_unavailable(
    aiohttp_client, fake, tmp_path, pg_relay
):
    relay, url = pg_relay
    settings = settings_for(
        tmp_path, [Route(name="default", upstream=fake.url)], [str(tmp_path / "policies")]
    ).model_copy(update={"store": Store(url=url)})
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "main.yaml").write_text(
        "policies:\n  - {id: p, kind: phrases, phrases: [launch codes]}\n", encoding="utf-8"
    )
    app = create_app(build_gateway(settings))
    admin = await aiohttp_client(create_admin_app(app[GATEWAY]))
    proxy = await aiohttp_client(app)
    await (await proxy.post(CHAT, json=chat_body())).read()
    resp = await admin.get("/governance/v1/decisions", headers=ADMIN)
    assert resp.status == 200 and len((await resp.json())["decisions"]) == 1
    await relay.cut()
    # the pooled connection is cut, and no new one can be made
    for path in ("/governance/v1/decisions", "/governance/v1/incidents"):
        err = await error_of(await admin.get(path, headers=ADMIN), 503, "store-unavailable")
        assert "PostgreSQL" in err["message"]


def make_unreadable(path: Path) -> str:
    """Make ``path`` fail to read for this process, the way it would in production.

    chmod 000 where it stops reads; as root it does not, so a directory takes
    the file's place (a botched deploy that unpacked a folder over it).
    """
    path.chmod(0)
    try:
        path.read_bytes()
    except PermissionError:
        return "Permission denied"
    path.chmod(0o644)
    path.unlink()
    path.mkdir()
    return "Is a directory"


async def test_reload_with_an_unreadable_policy_file(make_gateway, fake, policy_dir):
    _, admin, gw = await make_gateway(upstream=fake)
    before = gw.policies.serving.revision
    reason = make_unreadable(policy_dir / "main.yaml")
    resp = await admin.post("/governance/v1/policies/reload", headers=ADMIN)
    assert resp.status == 422
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["reloaded"] is False
    assert body["error"]["code"] == "invalid-config"
    assert any("unreadable" in e and reason in e for e in body["errors"]), body["errors"]
    # the old policies keep serving
    assert body["revision"] == before == gw.policies.serving.revision


async def test_a_bug_is_a_json_internal_error_with_its_traceback_logged(make_gateway, fake, caplog):
    _, admin, gw = await make_gateway(upstream=fake)
    # a policy set that is gone from under the check endpoint: an invariant broken by a bug
    gw.policies.current = None
    resp = await admin.post("/governance/v1/check", headers=REVIEWER, json={"text": "hello"})
    err = await error_of(resp, 500, "internal-error")
    assert "no policies are loaded" not in err["message"]
    assert "Traceback" in caplog.text and "no policies are loaded" in caplog.text


@pytest.mark.parametrize("path", ["/review/", "/incidents/"])
async def test_pages_still_redirect_to_login(make_gateway, fake, path):
    _, admin, _ = await make_gateway(upstream=fake)
    resp = await admin.get(path, allow_redirects=False)
    assert resp.status == 303 and resp.headers["location"].startswith("/login")
