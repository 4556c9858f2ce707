"""The engine: hold-back release, strictest action, monitor mode, errors never pass."""

from __future__ import annotations

import re
import time
from typing import Literal

import pytest

from gateway.contract.detector import Finding, WholeTextScan
from gateway.contract.kind import PolicyKind
from gateway.contract.policy import Action, PolicyBase, Status
from gateway.policy.check import context_for, evaluate
from gateway.policy.engine import ResponseGuard, new_decision_id
from gateway.policy.kinds import Registry, default_registry
from gateway.policy.loader import load_policies
from tests.conftest import write_policies


class FlakyPolicy(PolicyBase):
    kind: Literal["flaky"]
    behaviour: Literal["raise", "sleep", "find"] = "raise"


class FlakyDetector:
    hold_back = 0

    def __init__(self, cfg: FlakyPolicy):
        self.cfg = cfg
        self.blocking = cfg.behaviour == "sleep"

    def start(self, ctx):
        def find(text: str):
            if self.cfg.behaviour == "raise":
                raise RuntimeError("detector exploded")
            if self.cfg.behaviour == "sleep":
                time.sleep(0.5)
            return [Finding(0, min(4, len(text)), 0.9, "found")]

        return WholeTextScan(find)


def registry_with_flaky() -> Registry:
    reg = Registry()
    for name in default_registry().names():
        reg.register(default_registry().get(name))
    reg.register(PolicyKind("flaky", FlakyPolicy, lambda cfg, ctx: FlakyDetector(cfg)))
    return reg


def load(tmp_path, text, registry=None):
    write_policies(tmp_path, text)
    return load_policies([tmp_path], registry=registry)


async def run(policy_set, text, chunk=None, route="default", runner=None):
    return await evaluate(
        policy_set.for_route(route),
        [("0", text)],
        context_for(route),
        chunk=chunk,
        thread_runner=runner,
    )


async def thread_runner(fn, *args):
    import asyncio

    return await asyncio.to_thread(fn, *args)


@pytest.mark.parametrize("on_error, action", [("allow", Action.ALLOW), ("block", Action.BLOCK)])
async def test_detector_error_is_error_never_pass(tmp_path, on_error, action):
    ps = load(
        tmp_path,
        f"""
policies:
  - id: flaky
    kind: flaky
    on_error: {on_error}
""",
        registry_with_flaky(),
    )
    guard = await run(ps, "some text")
    result = guard.results[0]
    assert result.status is Status.ERROR
    assert "detector exploded" in result.error
    assert guard.action() is action


async def test_blocking_detector_timeout_is_error(tmp_path):
    ps = load(
        tmp_path,
        """
policies:
  - id: slow
    kind: flaky
    behaviour: sleep
    timeout_ms: 50
""",
        registry_with_flaky(),
    )
    guard = await run(ps, "text", runner=thread_runner)
    assert guard.results[0].status is Status.ERROR
    assert "50 ms" in guard.results[0].error
    assert guard.action() is Action.BLOCK


async def test_strictest_action_wins_and_monitor_never_acts(tmp_path):
    ps = load(
        tmp_path,
        """
policies:
  - id: redactor
    kind: phrases
    phrases: [alpha]
    action: redact
  - id: annotator
    kind: phrases
    phrases: [beta]
    action: annotate
  - id: watcher
    kind: phrases
    phrases: [gamma]
    action: block
    mode: monitor
  - id: sleeper
    kind: phrases
    phrases: [alpha]
    action: block
    mode: "off"
""",
    )
    guard = await run(ps, "alpha beta gamma")
    statuses = {r.config.id: r.status for r in guard.results}
    assert statuses == {
        "redactor": Status.BREACH,
        "annotator": Status.BREACH,
        "watcher": Status.BREACH,
        "sleeper": Status.SKIPPED,
    }
    assert guard.action() is Action.REDACT
    assert guard.segments["0"].released_text == "[REDACTED] beta gamma"


async def test_routes_select_policies(tmp_path):
    ps = load(
        tmp_path,
        """
policies:
  - id: only-support
    kind: phrases
    phrases: [refund]
    routes: [support]
""",
    )
    assert (await run(ps, "a refund", route="sales")).action() is Action.ALLOW
    assert (await run(ps, "a refund", route="support")).action() is Action.BLOCK


async def test_stream_releases_only_cleared_text(tmp_path):
    ps = load(
        tmp_path,
        """
policies:
  - id: p
    kind: phrases
    phrases: [secret plan]
""",
    )
    ctx = context_for("default")
    guard = ResponseGuard(ps.for_route("default"), ctx)
    text = "x" * 100 + " the secret plan is here"
    released = ""
    for ch in text:
        released += await guard.feed("0", ch)
        assert "secret plan" not in released
        if guard.stopped:
            break
    if not guard.stopped:
        released += await guard.finish("0")
    assert guard.stopped and released.startswith("x" * 60)
    assert "secret" not in released
    guard.close()
    assert guard.action() is Action.BLOCK


async def test_policies_cut_short_are_not_scanned(tmp_path):
    ps = load(
        tmp_path,
        """
policies:
  - id: first
    kind: phrases
    phrases: [stop]
  - id: second
    kind: phrases
    phrases: [never]
""",
    )
    guard = await run(ps, "please stop " + "word " * 50, chunk=3)
    statuses = {r.config.id: r.status for r in guard.results}
    assert statuses == {"first": Status.BREACH, "second": Status.NOT_SCANNED}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Ping ACCT-123456 now", "Ping [X] now"),
        ("ACCT-123456ACCT-654321", "[X][X]"),
        ("no ids at all", "no ids at all"),
    ],
)
@pytest.mark.parametrize("chunk", [None, 1, 4, 7])
async def test_redaction_is_exact_whole_or_streamed(tmp_path, text, expected, chunk):
    ps = load(
        tmp_path,
        """
policies:
  - id: ids
    kind: phrases
    patterns: ['ACCT-[0-9]{6}']
    action: redact
    redact_with: "[X]"
""",
    )
    guard = await run(ps, text, chunk=chunk)
    assert guard.segments["0"].released_text == expected


def test_decision_ids_are_unique_hex_and_follow_the_clock():
    first = [new_decision_id() for _ in range(2000)]
    time.sleep(0.002)
    later = new_decision_id()
    assert len(set(first)) == len(first)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in first)
    # a later millisecond sorts after every earlier one: inserts append to the index
    assert later > max(first)
    assert abs(int(later[:12], 16) - time.time() * 1000) < 5000
