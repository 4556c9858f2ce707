from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.admin import create_admin_app
from gateway.app import GATEWAY, build_gateway, create_app
from gateway.config import Route, Settings, Store
from tests.fakes import FakeUpstream

POLICIES = """\
policies:
  - id: no-forbidden
    kind: phrases
    phrases: ["forbidden phrase", "launch codes"]
    action: block
    severity: high
    message: "Blocked by policy."
  - id: mask-ids
    kind: phrases
    patterns: ['ACCT-[0-9]{6}']
    action: redact
    redact_with: "[ACCOUNT]"
  - id: watch-competitor
    kind: phrases
    phrases: ["competitor"]
    mode: monitor
    action: block
"""

# one breaching policy and one incident rule for it, shared by the incident tests
LEAK_POLICY = """\
policies:
  - id: no-forbidden
    kind: phrases
    phrases: ["launch codes"]
    action: block
    severity: high
"""


def leak_policy_with_rule(extra: str = "") -> str:
    """``LEAK_POLICY`` plus an incident rule ``leaks``; ``extra`` adds lines to the rule."""
    return LEAK_POLICY + "incident_rules:\n  - id: leaks\n    source: policy\n" + extra


ADMIN_TOKEN = "test-admin-token"
REVIEWER_TOKEN = "test-reviewer-token"


def write_policies(directory: Path, text: str = POLICIES, name: str = "main.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
async def fake(aiohttp_server):
    upstream = FakeUpstream()
    server = await aiohttp_server(upstream.app)
    upstream.url = str(server.make_url("")).rstrip("/")
    return upstream


@pytest.fixture
async def fallback_fake(aiohttp_server):
    upstream = FakeUpstream()
    upstream.name = "fallback"
    upstream.script.text = "A safe answer from the fallback model."
    server = await aiohttp_server(upstream.app)
    upstream.url = str(server.make_url("")).rstrip("/")
    return upstream


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    write_policies(directory)
    return directory


def settings_for(tmp_path: Path, routes: list[Route], policies: list[str], **extra) -> Settings:
    return Settings(
        routes=routes,
        policies=policies,
        store=Store(url=f"sqlite:///{tmp_path / 'gateway.db'}"),
        data_dir=str(tmp_path / "data"),
        reload_interval=0.1,
        auth={
            "tokens": [
                {"name": "root", "token": ADMIN_TOKEN, "roles": ["admin"]},
                {"name": "rita", "token": REVIEWER_TOKEN, "roles": ["reviewer"]},
            ]
        },
        **extra,
    )


@pytest.fixture
def make_gateway(aiohttp_client, tmp_path, policy_dir):
    """Start the real gateway (proxy + admin) in front of the given upstreams."""

    async def start(routes: list[Route] | None = None, *, upstream=None, subsystems=None, **extra):
        """``subsystems`` (a list of classes) replaces the installed ones."""
        if routes is None:
            routes = [Route(name="default", upstream=upstream.url)]
        settings = settings_for(tmp_path, routes, [str(policy_dir)], **extra)
        app = create_app(build_gateway(settings, subsystems))
        proxy = await aiohttp_client(app)
        admin = await aiohttp_client(create_admin_app(app[GATEWAY]))
        return proxy, admin, app[GATEWAY]

    return start


def review_of(gw):
    """The review queue's service of a running gateway."""
    from gateway.review.subsystem import Review

    return gw.subsystem(Review).service


def incidents_of(gw):
    """The incident service of a running gateway."""
    from gateway.incidents.subsystem import Incidents

    return gw.subsystem(Incidents).service


PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


async def drop_schemas(*names: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        for name in names:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pg_schema():
    """A PostgreSQL schema name of this test's own, dropped afterwards."""
    import uuid

    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_schemas(name)


@pytest.fixture
def pg_url(pg_schema) -> str:
    """The local PostgreSQL, in a schema of this test's own."""
    return f"{PG_DSN}?schema={pg_schema}"


@pytest.fixture
async def pg_relay(pg_schema):
    """A relay in front of the local PostgreSQL, and a store URL through it (its own schema).

    Cutting or stalling the relay is an outage of PostgreSQL as the gateway sees it.
    """
    from tests.gateway_process import free_port
    from tests.tcp_relay import TcpRelay

    relay = TcpRelay(free_port(), ("127.0.0.1", 5432))
    await relay.restore()
    yield relay, f"postgresql://postgres@127.0.0.1:{relay.port}/test?schema={pg_schema}"
    await relay.cut()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty store of each backend; PostgreSQL gets its own schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def store(store_url):
    from gateway.store import open_store

    s = open_store(store_url)
    await s.open()
    yield s
    await s.close()
