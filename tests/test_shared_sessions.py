"""Admin UI logins shared by every gateway process on one store, and kept across restarts.

Each gateway is a real ``gateway serve`` with its own ports; requests go
over loopback with plain aiohttp, cookies carried by hand, as a load
balancer would pass them to whichever process it picks.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg

from gateway.config import Route, Settings
from gateway.web.auth import TokenBook
from gateway.web.sessions import COOKIE, LOGIN_COOKIE
from tests.conftest import ADMIN_TOKEN, PG_DSN, REVIEWER_TOKEN, write_policies
from tests.gateway_process import GatewayProcess, free_port, start_gateway, write_config
from tests.test_review_ui import login

POLICY = "policies:\n  - {id: no-secret, kind: phrases, phrases: [internal use only]}\n"
OPS = f"- {{name: ops, token: {ADMIN_TOKEN}, roles: [admin]}}\n"
RITA = f"- {{name: rita, token: {REVIEWER_TOKEN}, roles: [reviewer]}}\n"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def config_for(home: Path, upstream: str, tokens: str = OPS + RITA) -> tuple[Path, int, int]:
    write_policies(home / "policies", POLICY)
    proxy_port, admin_port = free_port(), free_port()
    config = write_config(home, upstream, proxy_port, admin_port, tokens=tokens)
    return config, admin_port, proxy_port


async def start_pair(tmp_path: Path, upstream: str, pg_url: str) -> list[GatewayProcess]:
    """Gateways A and B: their own ports and data, one store."""
    pair = []
    for name in ("a", "b"):
        config, admin_port, proxy_port = config_for(tmp_path / name, upstream)
        pair.append(
            await start_gateway(config, admin_port, proxy_port, env={"GATEWAY_STORE_URL": pg_url})
        )
    return pair


def client() -> aiohttp.ClientSession:
    # cookies travel only where a test sends them, whatever the port
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


def with_cookie(name: str, value: str) -> dict[str, str]:
    return {"cookie": f"{name}={value}"}


async def login_form(http: aiohttp.ClientSession, gw: GatewayProcess) -> tuple[str, str]:
    """The login page's nonce cookie and the CSRF token of its form."""
    async with http.get(f"{gw.admin}/login") as resp:
        assert resp.status == 200
        nonce = resp.cookies[LOGIN_COOKIE].value
        match = _CSRF.search(await resp.text())
        assert match is not None
        return nonce, match.group(1)


async def log_in(
    http: aiohttp.ClientSession, form_from: GatewayProcess, post_to: GatewayProcess, token: str
) -> str:
    """Log in with the form of one process posted to another; the session cookie."""
    nonce, csrf = await login_form(http, form_from)
    async with http.post(
        f"{post_to.admin}/login",
        data={"csrf": csrf, "token": token, "next": "/review/"},
        headers=with_cookie(LOGIN_COOKIE, nonce),
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303, await resp.text()
        assert resp.headers["location"] == "/review/"
        return resp.cookies[COOKIE].value


async def queue_page(
    http: aiohttp.ClientSession, gw: GatewayProcess, session: str
) -> tuple[int, str]:
    """The review queue as the session sees it: the status and the page's form token.

    A session the process does not know is sent to the login page.
    """
    async with http.get(
        f"{gw.admin}/review/", headers=with_cookie(COOKIE, session), allow_redirects=False
    ) as resp:
        if resp.status == 303:
            assert urlsplit(resp.headers["location"]).path == "/login"
            return 303, ""
        assert resp.status == 200, await resp.text()
        match = _CSRF.search(await resp.text())
        assert match is not None
        return 200, match.group(1)


async def test_a_login_made_on_one_process_serves_every_process(fake, tmp_path: Path, pg_url: str):
    a, b = await start_pair(tmp_path, fake.url, pg_url)
    try:
        async with client() as http:
            # the form comes from A; the load balancer sends its post to B
            session = await log_in(http, a, b, ADMIN_TOKEN)

            status, csrf = await queue_page(http, a, session)
            assert status == 200
            assert (await queue_page(http, b, session)) == (200, csrf)

            # a form posted to A with the session's own token is accepted there
            bulk = f"{a.admin}/review/bulk"
            async with http.post(
                bulk,
                data={"csrf": csrf, "action": "approve"},
                headers=with_cookie(COOKIE, session),
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303, await resp.text()
                assert urlsplit(resp.headers["location"]).path == "/review/"
                assert "msg" in parse_qs(urlsplit(resp.headers["location"]).query)
            async with http.post(
                bulk,
                data={"csrf": "x" * 43, "action": "approve"},
                headers=with_cookie(COOKIE, session),
                allow_redirects=False,
            ) as resp:
                assert resp.status == 403

            # logging out on A ends the session on B too
            async with http.post(
                f"{a.admin}/logout",
                data={"csrf": csrf},
                headers=with_cookie(COOKIE, session),
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303
                assert resp.headers["location"] == "/login"
            assert (await queue_page(http, b, session))[0] == 303
            assert (await queue_page(http, a, session))[0] == 303
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_the_store_holds_no_usable_session_cookie(fake, tmp_path: Path, pg_url: str):
    a, b = await start_pair(tmp_path, fake.url, pg_url)
    try:
        async with client() as http:
            session = await log_in(http, a, b, REVIEWER_TOKEN)
            assert (await queue_page(http, a, session))[0] == 200
        schema = parse_qs(urlsplit(pg_url).query)["schema"][0]
        conn = await asyncpg.connect(PG_DSN)
        try:
            rows = await conn.fetch(f'SELECT * FROM "{schema}".ui_sessions')
        finally:
            await conn.close()
        assert len(rows) == 1
        row = dict(rows[0])
        assert row["id_hash"] == hashlib.sha256(session.encode()).hexdigest()
        assert row["principal"] == "rita"
        assert all(session not in str(value) for value in row.values())
        assert all(REVIEWER_TOKEN not in str(value) for value in row.values())
        # what the store holds is not a cookie that logs anyone in
        async with client() as http:
            assert (await queue_page(http, a, row["id_hash"]))[0] == 303
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_a_session_outlives_a_restart_but_not_the_removal_of_its_token(fake, tmp_path: Path):
    home = tmp_path / "gw"
    config, admin_port, proxy_port = config_for(home, fake.url)
    gw = await start_gateway(config, admin_port, proxy_port)
    try:
        async with client() as http:
            ops = await log_in(http, gw, gw, ADMIN_TOKEN)
            rita = await log_in(http, gw, gw, REVIEWER_TOKEN)
            nonce, csrf = await login_form(http, gw)
    finally:
        await gw.stop()

    gw = await start_gateway(config, admin_port, proxy_port)
    try:
        async with client() as http:
            assert (await queue_page(http, gw, ops))[0] == 200
            assert (await queue_page(http, gw, rita))[0] == 200
            # the login form's key is kept too: a form served before the restart still posts
            async with http.post(
                f"{gw.admin}/login",
                data={"csrf": csrf, "token": REVIEWER_TOKEN, "next": "/review/"},
                headers=with_cookie(LOGIN_COOKIE, nonce),
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303, await resp.text()
    finally:
        await gw.stop()

    # rita's token leaves the config
    write_config(home, fake.url, proxy_port, admin_port, tokens=OPS)
    gw = await start_gateway(config, admin_port, proxy_port)
    try:
        async with client() as http:
            assert (await queue_page(http, gw, rita))[0] == 303
            assert (await queue_page(http, gw, ops))[0] == 200
    finally:
        await gw.stop()


def shared_data_dir(config: Path, data_dir: Path) -> None:
    text = config.read_text()
    text, count = re.subn(r"(?m)^data_dir: .*$", f"data_dir: {data_dir}", text)
    assert count == 1
    config.write_text(text)


async def test_processes_starting_together_on_one_data_dir_make_one_admin_token(
    fake, tmp_path: Path
):
    data_dir = tmp_path / "shared"
    starts = []
    for name in ("a", "b"):
        config, admin_port, proxy_port = config_for(tmp_path / name, fake.url, tokens="")
        shared_data_dir(config, data_dir)
        starts.append(start_gateway(config, admin_port, proxy_port))
    pair = await asyncio.gather(*starts, return_exceptions=True)
    started = [gw for gw in pair if isinstance(gw, GatewayProcess)]
    try:
        assert len(started) == 2, pair
        token = (data_dir / "admin-token").read_text().strip()
        assert token
        async with client() as http:
            for gw in started:
                async with http.get(
                    f"{gw.admin}/governance/v1/policies",
                    headers={"authorization": f"Bearer {token}"},
                ) as resp:
                    assert resp.status == 200, await resp.text()
                # and a login with it works on each
                assert (await queue_page(http, gw, await log_in(http, gw, gw, token)))[0] == 200
    finally:
        await asyncio.gather(*(gw.stop() for gw in started))


def _tokens_at(data_dirs: list[str], start_at: float) -> list[str]:
    """In a separate process: the admin token each data folder gives, each at its own moment.

    Every process of the pool reaches folder ``i`` at ``start_at + i / 20``,
    so they race on each folder's first start.
    """
    found = []
    for i, data_dir in enumerate(data_dirs):
        delay = start_at + i / 20 - time.time()
        if delay > 0:
            time.sleep(delay)
        settings = Settings(
            routes=[Route(name="default", upstream="http://127.0.0.1:9")], data_dir=data_dir
        )
        book = TokenBook(settings)
        assert book.generated_path is not None
        found.append(book.generated_path.read_text().strip())
        # the book serves what the file holds at the end, not a secret of its own
        assert book.lookup(found[-1]) is not None
    return found


def test_simultaneous_first_starts_agree_on_the_generated_token(tmp_path: Path):
    data_dirs = [str(tmp_path / f"d{i}") for i in range(30)]
    racers = 6
    with ProcessPoolExecutor(racers, mp_context=get_context("spawn")) as pool:
        # the pool's processes start (and import the gateway) before the first moment
        start_at = time.time() + 8
        futures = [pool.submit(_tokens_at, data_dirs, start_at) for _ in range(racers)]
        results = [f.result() for f in futures]
    for i, data_dir in enumerate(data_dirs):
        on_disk = (Path(data_dir) / "admin-token").read_text().strip()
        assert {r[i] for r in results} == {on_disk}


async def test_a_store_outage_while_checking_a_session_is_the_503_page(make_gateway, fake, caplog):
    _, admin, gw = await make_gateway(upstream=fake)
    await login(admin)
    assert (await admin.get("/review/", allow_redirects=False)).status == 200
    await gw.store.close()
    # not a login page: the session may well be alive, the store cannot tell
    resp = await admin.get("/review/", allow_redirects=False)
    assert resp.status == 503
    assert resp.content_type == "text/html"
    assert "store" in await resp.text()
    ours = [r for r in caplog.records if r.name == "gateway.admin"]
    assert any(r.levelname == "WARNING" and "/review/" in r.getMessage() for r in ours)
    assert not [r for r in ours if r.levelname == "ERROR"]
