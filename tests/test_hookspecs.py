"""The subsystem contract: every hook of ``hookspecs.Subsystem``, exercised as a plugin would.

One test per hook, named ``test_hook_<name>``; ``test_every_hook_has_a_test``
fails when a hook is added without one (Datasette's
``test_plugin_hooks_have_tests``). The plugin loader is tested with a real
distribution on ``sys.path``, entry points and all.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.admin import create_admin_app
from gateway.app import build_gateway, create_app, installed_subsystems
from gateway.config import Route
from gateway.errors import ConfigError, Diag, PluginLoadError
from gateway.plugins import POLICY_KINDS, SUBSYSTEMS, load_group
from gateway.policy.loader import check_files, default_sections, load_policies
from gateway.proxy import hookspecs
from gateway.proxy.hookspecs import HOOKS, Subsystem
from gateway.records.decision import DecisionRecord
from tests.conftest import ADMIN_TOKEN, REVIEWER_TOKEN, settings_for, write_policies

CHAT = "/v1/chat/completions"
PING = "/probe/v1/ping"
PROBE_API = "/governance/v1/probe"
PROBE_PAGE = "/probe/"


def chat_body() -> dict:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class Probe(Subsystem):
    """A third-party subsystem that uses every hook and writes down each call."""

    name = "probe"
    # replaced per test by the ``probe`` fixture, so tests share nothing
    journal: ClassVar[list[str]] = []
    sections_seen: ClassVar[list[list[tuple[str, Any]]]] = []
    started_with_session: ClassVar[list[bool]] = []

    @classmethod
    def policy_sections(cls):
        return {"probe_rules": cls.parse_rules}

    @classmethod
    def parse_rules(cls, pairs: list[tuple[str, Any]]) -> list[Any]:
        cls.sections_seen.append(list(pairs))
        errors = [
            f"{file}:1:1: {Diag.INVALID_VALUE}: probe_rules: expected a list, got {raw!r}"
            for file, raw in pairs
            if not isinstance(raw, list)
        ]
        if errors:
            raise ConfigError("bad probe rules", errors)
        return [rule for _, raw in pairs for rule in raw]

    @classmethod
    def cli_commands(cls, commands: argparse._SubParsersAction) -> None:
        probe = commands.add_parser("probe", help="say hello from the probe")
        probe.add_argument("--times", type=int, default=1)
        probe.set_defaults(func=lambda args: "hello " * args.times)

    def install(self) -> None:
        self.journal.append("install")
        self.records: list[DecisionRecord] = []
        self.gw.events.subscribe(DecisionRecord, self.records.append)

    def proxy_routes(self, app: web.Application) -> None:
        self.journal.append("proxy_routes")
        app.router.add_get(PING, self.ping)

    def admin_routes(self, app: web.Application) -> None:
        self.journal.append("admin_routes")
        app.router.add_get(PROBE_API, self.api)
        app.router.add_get(PROBE_PAGE, self.page)

    async def start(self) -> None:
        self.journal.append("start")
        self.started_with_session.append(self.gw.session is not None and not self.gw.session.closed)

    async def stop(self) -> None:
        self.journal.append("stop")

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({"probe": "pong", "records": len(self.records)})

    async def api(self, request: web.Request) -> web.Response:
        return web.json_response({"probe": "api"})

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text="probe page")


@pytest.fixture
def probe() -> type[Probe]:
    """A fresh ``Probe`` class, with its own journal."""
    return type("Probe", (Probe,), {"journal": [], "sections_seen": [], "started_with_session": []})


def settings(tmp_path: Path, fake, policy_dir: Path):
    return settings_for(tmp_path, [Route(name="default", upstream=fake.url)], [str(policy_dir)])


# -- the hooks ------------------------------------------------------------------------------
def test_hook_policy_sections(probe, tmp_path):
    first = write_policies(
        tmp_path / "p",
        "policies: []\nprobe_rules: [{id: a}]\n",
        name="a.yaml",
    )
    second = write_policies(tmp_path / "p", "probe_rules: [{id: b}, {id: c}]\n", name="b.yaml")
    write_policies(tmp_path / "p", "policies: []\n", name="c.yaml")

    loaded = load_policies([tmp_path / "p"], sections=probe.policy_sections())
    # one call, with every file's raw value in file order (files without it left out)
    assert probe.sections_seen == [
        [(str(first), [{"id": "a"}]), (str(second), [{"id": "b"}, {"id": "c"}])]
    ]
    assert loaded.sections["probe_rules"] == probe.sections_seen[0]

    # the parser's ConfigError lines are reported with every other error, at once
    write_policies(tmp_path / "p", "probe_rules: oops\n", name="b.yaml")
    write_policies(tmp_path / "p", "policies: [{id: x, kind: nope}]\n", name="c.yaml")
    with pytest.raises(ConfigError) as caught:
        load_policies([tmp_path / "p"], sections=probe.policy_sections())
    errors = caught.value.errors
    assert any(
        line.startswith(f"{tmp_path / 'p' / 'b.yaml'}:1:1: {Diag.INVALID_VALUE}: probe_rules")
        for line in errors
    ), errors
    assert any(f": {Diag.UNKNOWN_KIND}: " in line for line in errors), errors

    # without the subsystem, the section is an unknown top-level key
    with pytest.raises(ConfigError) as caught:
        load_policies([tmp_path / "p" / "a.yaml"], sections={})
    assert any(f": {Diag.UNKNOWN_FIELD}: probe_rules" in line for line in caught.value.errors)


async def test_policy_sections_of_the_subsystems_given_to_the_gateway_are_accepted(
    make_gateway, fake, policy_dir, probe
):
    """A subsystem handed to ``build_gateway`` has its sections validated with the policies."""
    write_policies(policy_dir, "probe_rules: [{id: from-the-gateway}]\n", name="probe.yaml")
    _, _, gw = await make_gateway(upstream=fake, subsystems=[probe])
    assert gw.policies.serving.sections["probe_rules"] == [
        (str(policy_dir / "probe.yaml"), [{"id": "from-the-gateway"}])
    ]
    assert probe.sections_seen, "the probe's section parser was never called"


def test_hook_cli_commands(probe):
    parser = argparse.ArgumentParser(prog="gateway")
    commands = parser.add_subparsers(dest="command")
    probe.cli_commands(commands)
    args = parser.parse_args(["probe", "--times", "2"])
    assert args.command == "probe"
    assert args.func(args) == "hello hello "
    with pytest.raises(SystemExit):
        parser.parse_args(["probe", "--times", "many"])
    # the default adds nothing
    bare = argparse.ArgumentParser()
    bare_commands = bare.add_subparsers(dest="command")
    Subsystem.cli_commands(bare_commands)
    assert bare_commands.choices == {}


async def test_hook_install(make_gateway, fake, probe):
    proxy, _, gw = await make_gateway(upstream=fake, subsystems=[probe])
    assert probe.journal.count("install") == 1
    sub = gw.subsystem(probe)
    assert sub.gw is gw
    assert gw.subsystems == [sub], "the given subsystems replace the installed ones"

    resp = await proxy.post(CHAT, json=chat_body())
    assert resp.status == 200
    await resp.read()
    assert [r.decision_id for r in sub.records] == [resp.headers["x-governance-decision-id"]]
    record = sub.records[0]
    assert isinstance(record, DecisionRecord)
    assert record.route == "default"
    assert record.action == resp.headers["x-governance-decision"]
    assert record.path == CHAT


async def test_hook_proxy_routes(make_gateway, fake, probe):
    proxy, admin, _ = await make_gateway(upstream=fake, subsystems=[probe])
    resp = await proxy.get(PING)
    assert resp.status == 200
    assert await resp.json() == {"probe": "pong", "records": 0}
    # served by the subsystem, not proxied by the catch-all
    assert fake.requests == []
    # the proxy listener only: the admin listener does not serve it
    assert (await admin.get(PING)).status == 404
    # other paths still reach the upstream through the catch-all
    resp = await proxy.post(CHAT, json=chat_body())
    assert resp.status == 200
    await resp.read()
    assert [r["path"] for r in fake.requests] == [CHAT]
    assert (await (await proxy.get(PING)).json())["records"] == 1


async def test_hook_admin_routes(make_gateway, fake, probe):
    proxy, admin, _ = await make_gateway(upstream=fake, subsystems=[probe])
    # under /governance/, behind the bearer-token middleware like the core API
    assert (await admin.get(PROBE_API)).status == 401
    assert (await admin.get(PROBE_API, headers=bearer("not-a-token"))).status == 401
    for token in (REVIEWER_TOKEN, ADMIN_TOKEN):
        resp = await admin.get(PROBE_API, headers=bearer(token))
        assert resp.status == 200
        assert await resp.json() == {"probe": "api"}
    # elsewhere it is the subsystem's own business, as for the UIs' pages
    resp = await admin.get(PROBE_PAGE)
    assert resp.status == 200
    assert await resp.text() == "probe page"
    assert probe.journal.count("admin_routes") == 1
    # the proxy listener does not serve admin paths
    resp = await proxy.get(PROBE_PAGE)
    assert await resp.text() != "probe page"


async def test_hook_start(tmp_path, fake, policy_dir, probe):
    gw = build_gateway(settings(tmp_path, fake, policy_dir), [probe])
    proxy = TestClient(TestServer(create_app(gw)))
    admin = TestClient(TestServer(create_admin_app(gw)))
    assert "start" not in probe.journal, "building the apps must not start anything"
    try:
        await proxy.start_server()
        assert probe.journal == ["install", "proxy_routes", "admin_routes", "start"]
        # the store and the upstream client are open when start runs
        assert probe.started_with_session == [True]
        await admin.start_server()
        # the two apps share one gateway: it starts once
        assert probe.journal.count("start") == 1
        assert (await proxy.get(PING)).status == 200
    finally:
        await admin.close()
        await proxy.close()


async def test_hook_stop(tmp_path, fake, policy_dir, probe, caplog):
    class Second(Subsystem):
        name = "second"

        async def stop(self) -> None:
            probe.journal.append("stop second")
            raise RuntimeError("second failed to stop")

    gw = build_gateway(settings(tmp_path, fake, policy_dir), [probe, Second])
    proxy = TestClient(TestServer(create_app(gw)))
    admin = TestClient(TestServer(create_admin_app(gw)))
    await proxy.start_server()
    await admin.start_server()
    resp = await proxy.post(CHAT, json=chat_body())
    assert resp.status == 200
    await resp.read()
    assert "stop" not in probe.journal

    await admin.close()
    # the proxy still serves: nothing stops while one app is up
    assert not any(entry.startswith("stop") for entry in probe.journal)
    assert (await proxy.get(PING)).status == 200

    with caplog.at_level(logging.ERROR, logger="gateway.proxy.state"):
        await proxy.close()
    # once each, in reverse install order; a failing stop does not keep the next from running
    stops = [entry for entry in probe.journal if entry.startswith("stop")]
    assert stops == ["stop second", "stop"]
    assert "subsystem second failed to stop cleanly" in caplog.text
    assert gw.session is not None and gw.session.closed


# -- the contract itself ------------------------------------------------------------------------
def test_every_hook_has_a_test():
    module = sys.modules[__name__]
    missing = [name for name in HOOKS if not callable(getattr(module, f"test_hook_{name}", None))]
    assert not missing, f"hooks without a test_hook_<name> test: {missing}"


def test_hooks_lists_every_hook_subsystem_declares():
    declared = {
        name
        for name, value in vars(Subsystem).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, classmethod))
    }
    assert declared == set(HOOKS)
    # each hook says what it is for
    for name in HOOKS:
        assert getattr(Subsystem, name).__doc__, f"hook {name} has no docstring"


def test_hooks_are_listed_in_the_order_the_gateway_calls_them():
    doc = hookspecs.__doc__ or ""
    positions = [doc.find(f"``{name}(") for name in HOOKS]
    assert -1 not in positions, "the module docstring must describe every hook"
    assert positions == sorted(positions)


async def test_hooks_are_called_in_the_declared_order(tmp_path, fake, policy_dir, probe):
    gw = build_gateway(settings(tmp_path, fake, policy_dir), [probe])
    proxy = TestClient(TestServer(create_app(gw)))
    admin = TestClient(TestServer(create_admin_app(gw)))
    await proxy.start_server()
    await admin.start_server()
    await admin.close()
    await proxy.close()
    assert probe.journal == ["install", "proxy_routes", "admin_routes", "start", "stop"]


async def test_a_subsystem_that_implements_no_hook_changes_nothing(make_gateway, fake):
    class Bare(Subsystem):
        name = "bare"

    proxy, admin, gw = await make_gateway(upstream=fake, subsystems=[Bare])
    assert Bare.policy_sections() == {}
    resp = await proxy.post(CHAT, json=chat_body())
    assert resp.status == 200
    assert (await resp.json())["choices"][0]["message"]["content"] == fake.script.text
    assert (await admin.get("/healthz")).status == 200
    assert gw.hold is None and gw.containment is None


# -- entry points: how plugins are found -----------------------------------------------------------
def write_distribution(root: Path, name: str, modules: dict[str, str], entry_points: str) -> None:
    """An installed distribution as pip leaves it: modules plus a ``.dist-info``."""
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points), encoding="utf-8")


PLUGIN_MODULES = ("demo_plugin", "broken_plugin")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on ``sys.path`` for fake distributions; the loader's caches are reset."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    load_group.cache_clear()
    default_sections.cache_clear()
    yield root
    for module in PLUGIN_MODULES:
        sys.modules.pop(module, None)
    load_group.cache_clear()
    default_sections.cache_clear()


def test_load_group_finds_a_plugins_entry_points(site):
    write_distribution(
        site,
        "demo_plugin",
        {"demo_plugin": "ANSWER = {'answer': 42}\n\ndef hello():\n    return 'hi'\n"},
        """\
        [gateway.test_group]
        zeta = demo_plugin:hello
        alpha = demo_plugin:ANSWER
        """,
    )
    found = load_group("gateway.test_group")
    assert [name for name, _ in found] == ["alpha", "zeta"]
    assert found[0][1] == {"answer": 42}
    assert found[1][1]() == "hi"
    # another group sees none of it
    assert load_group("gateway.test_group_empty") == ()


def test_load_group_names_the_entry_point_that_fails_to_import(site):
    write_distribution(
        site,
        "broken_plugin",
        {"broken_plugin": "raise RuntimeError('the backend library is missing')\n"},
        """\
        [gateway.test_group]
        shaky = broken_plugin:KIND
        """,
    )
    with pytest.raises(PluginLoadError) as caught:
        load_group("gateway.test_group")
    err = caught.value
    assert "shaky" in str(err)
    assert "broken_plugin:KIND" in str(err)
    assert "gateway.test_group" in str(err)
    assert "the backend library is missing" in str(err)
    assert err.code == "plugin-load-failed"
    assert isinstance(err, ConfigError)
    assert isinstance(err.__cause__, RuntimeError)


def test_a_missing_attribute_is_a_plugin_load_error_too(site):
    write_distribution(
        site,
        "demo_plugin",
        {"demo_plugin": "PRESENT = 1\n"},
        """\
        [gateway.test_group]
        absent = demo_plugin:ABSENT
        """,
    )
    with pytest.raises(PluginLoadError, match="absent"):
        load_group("gateway.test_group")


THIRD_PARTY_SUBSYSTEM = """\
from gateway.errors import ConfigError
from gateway.proxy.hookspecs import Subsystem


def parse_demo(pairs):
    bad = [f"{file}:1:1: invalid-value: demo_rules: not a list" for file, raw in pairs
           if not isinstance(raw, list)]
    if bad:
        raise ConfigError("bad demo rules", bad)
    return pairs


class DemoSubsystem(Subsystem):
    name = "demo"

    @classmethod
    def policy_sections(cls):
        return {"demo_rules": parse_demo}

    @classmethod
    def cli_commands(cls, commands):
        hello = commands.add_parser("demo-hello")
        hello.set_defaults(func=lambda args: print("hello from demo") or 3)
"""


def test_a_third_party_subsystem_plugs_into_sections_and_the_cli(site, tmp_path, capsys):
    from gateway import cli

    write_distribution(
        site,
        "demo_plugin",
        {"demo_plugin": THIRD_PARTY_SUBSYSTEM},
        """\
        [gateway.subsystems]
        demo = demo_plugin:DemoSubsystem
        """,
    )
    names = [cls.name for cls in installed_subsystems()]
    assert "demo" in names and "review" in names
    assert {"demo_rules", "incident_rules", "monitors"} <= set(default_sections())

    write_policies(tmp_path / "p", "demo_rules: [{id: a}]\n", name="ok.yaml")
    assert check_files([tmp_path / "p"]) == []
    write_policies(tmp_path / "p", "demo_rules: nope\n", name="bad.yaml")
    assert check_files([tmp_path / "p"]) == [
        f"{tmp_path / 'p' / 'bad.yaml'}:1:1: invalid-value: demo_rules: not a list"
    ]

    assert cli.main(["demo-hello"]) == 3
    assert "hello from demo" in capsys.readouterr().out


def test_two_subsystems_may_not_claim_one_section(site):
    write_distribution(
        site,
        "demo_plugin",
        {
            "demo_plugin": """\
            from gateway.proxy.hookspecs import Subsystem

            class Greedy(Subsystem):
                name = "greedy"

                @classmethod
                def policy_sections(cls):
                    return {"monitors": lambda pairs: pairs}
            """
        },
        """\
        [gateway.subsystems]
        greedy = demo_plugin:Greedy
        """,
    )
    with pytest.raises(ConfigError, match="'monitors' again"):
        default_sections()


def test_builtin_kinds_are_registered_as_entry_points():
    from gateway.contract.kind import PolicyKind

    found = dict(load_group(POLICY_KINDS))
    assert sorted(found) == [
        "bias",
        "copyright",
        "image_copyright",
        "length",
        "phrases",
        "retrieval_quality",
        "stale_retrieval",
    ]
    for name, obj in found.items():
        kind = obj if isinstance(obj, PolicyKind) else obj.KIND
        assert isinstance(kind, PolicyKind)
        assert kind.name == name
        assert type(kind).__module__.startswith("gateway.")
        assert kind.config.__module__ == f"gateway.detectors.{name}"


def test_builtin_subsystems_are_registered_as_entry_points():
    from gateway.canary.subsystem import Canary
    from gateway.incidents.subsystem import Incidents
    from gateway.index_service.subsystem import IndexService
    from gateway.monitors.subsystem import Monitors
    from gateway.review.subsystem import Review

    found = dict(load_group(SUBSYSTEMS))
    assert found == {
        "canary": Canary,
        "incidents": Incidents,
        "indexes": IndexService,
        "monitors": Monitors,
        "review": Review,
    }
    for name, cls in found.items():
        assert issubclass(cls, Subsystem)
        assert cls.name == name
    assert installed_subsystems() == [Canary, Incidents, IndexService, Monitors, Review]


def test_two_subsystems_cannot_plug_one_port(tmp_path, policy_dir):
    from gateway.review.subsystem import Review

    class RivalQueue(Subsystem):
        name = "rival-queue"

        def install(self) -> None:
            self.gw.hold = object()  # type: ignore[assignment]

    routes = [Route(name="default", upstream="http://upstream.test")]
    settings = settings_for(tmp_path, routes, [str(policy_dir)])
    with pytest.raises(ConfigError, match="rival-queue plugs the hold port"):
        build_gateway(settings, [Review, RivalQueue])
    # either one alone is fine
    assert build_gateway(settings, [RivalQueue]).hold is not None


def test_a_subsystem_failing_on_the_first_policies_stops_the_gateway(tmp_path, policy_dir):
    from gateway.policy.reload import PolicySwap

    class Fussy(Subsystem):
        name = "fussy"

        def install(self) -> None:
            self.gw.events.subscribe(PolicySwap, self.take)

        def take(self, swap: PolicySwap) -> None:
            raise ValueError("cannot use these policies")

    routes = [Route(name="default", upstream="http://upstream.test")]
    settings = settings_for(tmp_path, routes, [str(policy_dir)])
    with pytest.raises(ValueError, match="cannot use these policies"):
        build_gateway(settings, [Fussy])


def test_a_tree_with_no_kinds_installed_says_how_to_fix_it(monkeypatch):
    from gateway.policy import kinds

    # as a source tree that was never pip-installed: the entry-point group is empty
    monkeypatch.setattr(kinds, "load_group", lambda group: ())
    monkeypatch.setattr(kinds, "_default", None)
    with pytest.raises(ConfigError, match=r"no policy kinds are installed.*pip install"):
        kinds.default_registry()
