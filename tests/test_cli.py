"""The ``gateway`` command as a user runs it: a real process, real files."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import write_policies

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = [sys.executable, "-m", "gateway.cli"]


def run(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*GATEWAY, *args], input=stdin, capture_output=True, text=True, cwd=cwd or ROOT, timeout=120
    )


BROKEN = """\
policies:
  - id: one
    kind: phrases
    phrases: [x]
    severty: high
  - id: two
    kind: nosuchkind
  - id: three
    kind: length
    max_chars: -5
"""


def test_validate_reports_every_error_with_position(tmp_path):
    path = write_policies(tmp_path, BROKEN)
    result = run("policy", "validate", str(path))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines == [
        f"{path}:5:5: unknown-field: one.severty (did you mean severity?)",
        f"{path}:7:11: unknown-kind: two.kind: 'nosuchkind' (known: "
        + ", ".join(sorted(_kinds()))
        + ")",
        f"{path}:10:16: invalid-value: three.max_chars: Input should be greater than or equal to 1",
    ]


def _kinds() -> list[str]:
    from gateway.policy.kinds import default_registry

    return default_registry().names()


def test_validate_yaml_syntax_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("policies:\n  - id: a\n   kind: phrases\n")
    result = run("policy", "validate", str(path))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{path}:3:4: yaml-syntax: ")


def test_validate_ok_and_shipped_policies(tmp_path):
    path = write_policies(tmp_path, "policies:\n  - {id: a, kind: phrases, phrases: [x]}\n")
    result = run("policy", "validate", str(path))
    assert result.returncode == 0 and "1 file(s) valid" in result.stdout
    shipped = run("policy", "validate", "policies/main.yaml")
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr


def test_policy_test_pass_fail_error(tmp_path):
    write_policies(
        tmp_path, "policies:\n  - {id: a, kind: phrases, phrases: [bad word]}\n", "p.yaml"
    )
    (tmp_path / "p_test.yaml").write_text("""\
cases:
  - name: passes
    text: a bad word here
    expect: {action: block, breached: [a]}
  - name: fails
    text: all fine
    expect: {action: block, breached: [a]}
""")
    result = run("policy", "test", str(tmp_path))
    assert result.returncode == 1
    out = result.stdout
    assert "PASS  " in out and "passes" in out
    assert "FAIL  " in out and "action allow, expected block" in out
    assert out.strip().endswith("1 passed, 1 failed, 0 errors")


def test_policy_test_error_for_malformed_cases(tmp_path):
    write_policies(tmp_path, "policies:\n  - {id: a, kind: phrases, phrases: [x]}\n", "p.yaml")
    (tmp_path / "p_test.yaml").write_text("cases:\n  - name: n\n    txt: oops\n")
    result = run("policy", "test", str(tmp_path))
    assert result.returncode == 1 and "ERROR" in result.stdout
    assert "p_test.yaml:3:5" in result.stdout


def test_shipped_policy_tests_pass():
    result = run("policy", "test", "policies/main_test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed, 0 errors" in result.stdout


def test_check_text_and_json(tmp_path):
    write_policies(
        tmp_path,
        """\
policies:
  - {id: block-it, kind: phrases, phrases: [launch codes]}
  - {id: mask, kind: phrases, patterns: ['\\d{4}'], action: redact}
""",
    )
    result = run("check", "--policies", str(tmp_path), stdin="the code is 1234")
    decision = json.loads(result.stdout)
    assert decision["action"] == "redact" and decision["text"] == {"0": "the code is [REDACTED]"}
    body = {
        "id": "x",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "the launch codes"},
                "finish_reason": "stop",
            }
        ],
    }
    result = run("check", "--policies", str(tmp_path), stdin=json.dumps(body))
    decision = json.loads(result.stdout)
    assert decision["action"] == "block" and decision["protocol"] == "openai-chat"
    assert decision["policies"][0]["findings"][0]["span"] == [4, 16]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


@pytest.mark.slow
def test_serve_quickstart_as_a_process(tmp_path):
    """``gateway serve --upstream`` with the demo simulator; SIGTERM drains and exits 0."""
    up_port, port, admin_port = free_port(), free_port(), free_port()
    upstream = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
from aiohttp import web
from gateway.demo.upstream import DemoUpstream
web.run_app(DemoUpstream(1).app, host="127.0.0.1", port={up_port}, print=None)
""",
        ]
    )
    policies = write_policies(
        tmp_path / "pol",
        "policies:\n  - {id: no-secret, kind: phrases, phrases: [internal use only]}\n",
    )
    proc = subprocess.Popen(
        [
            *GATEWAY,
            "serve",
            "--upstream",
            f"http://127.0.0.1:{up_port}/v1",
            "--policies",
            str(policies),
            "--port",
            str(port),
            "--admin-port",
            str(admin_port),
            "--store",
            f"sqlite:///{tmp_path / 'g.db'}",
        ],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{admin_port}/healthz")
        wait_for(f"http://127.0.0.1:{up_port}/v1/models")
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        clean = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "tomatoes?"}]
        )
        assert "Tomatoes" in clean.choices[0].message.content
        blocked = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "the internal deploy note"}]
        )
        assert blocked.choices[0].finish_reason == "content_filter"
        models = client.models.list()
        assert models.data[0].id == "demo-model"
        token = (tmp_path / ".gateway" / "admin-token").read_text().strip()
        req = urllib.request.Request(
            f"http://127.0.0.1:{admin_port}/governance/v1/decisions",
            headers={"authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(req) as resp:
            actions = [d["action"] for d in json.load(resp)["decisions"]]
        assert sorted(actions) == ["allow", "block"]
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics") as resp:
            metrics = resp.read().decode()
        assert 'gateway_requests_total{decision="block",route="default"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log_lines = [
            json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")
        ]
        assert any(line["msg"] == "gateway listening" for line in log_lines)
    finally:
        for p in (proc, upstream):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_host_binds_the_proxy_and_admin_host_the_admin_listener():
    from gateway.cli import build_parser, load_config

    def listeners(*flags: str):
        args = build_parser().parse_args(["serve", "--upstream", "http://127.0.0.1:9", *flags])
        s = load_config(args).listeners
        return s.proxy.host, s.admin.host

    assert listeners() == ("127.0.0.1", "127.0.0.1")
    assert listeners("--host", "0.0.0.0") == ("0.0.0.0", "127.0.0.1")
    assert listeners("--admin-host", "10.1.2.3") == ("127.0.0.1", "10.1.2.3")


def reachable(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect((host, port))
        except OSError:
            return False
        return True


def serve_briefly(tmp_path: Path, *flags: str, check) -> list[dict]:
    """Run ``gateway serve`` with ``flags``, call ``check`` once it is up, stop it; its log."""
    policies = write_policies(
        tmp_path / "pol", "policies:\n  - {id: p, kind: phrases, phrases: [x]}\n"
    )
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [
            *GATEWAY,
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--policies",
            str(policies),
            "--store",
            f"sqlite:///{tmp_path / 'g.db'}",
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            *flags,
        ],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # both listeners are up once the second, the admin one, answers
        wait_for(f"http://127.0.0.1:{admin}/healthz")
        check(port, admin)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        return [
            json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")
        ]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def exposure_warnings(log: list[dict]) -> list[dict]:
    return [r for r in log if r["level"] == "warning" and "admin listener" in r["msg"]]


@pytest.mark.slow
def test_host_all_interfaces_leaves_the_admin_listener_on_loopback(tmp_path):
    # 127.0.0.2 is loopback too, but a socket bound to 127.0.0.1 does not answer there:
    # it stands in for "another address of this machine"
    def check(port: int, admin: int) -> None:
        assert reachable("127.0.0.2", port)
        assert reachable("127.0.0.1", admin)
        assert not reachable("127.0.0.2", admin)

    log = serve_briefly(tmp_path, "--host", "0.0.0.0", check=check)
    assert not exposure_warnings(log)


@pytest.mark.slow
def test_an_admin_listener_beyond_loopback_is_warned_about(tmp_path):
    def check(port: int, admin: int) -> None:
        assert reachable("127.0.0.2", admin)
        assert not reachable("127.0.0.2", port)

    log = serve_briefly(tmp_path, "--admin-host", "0.0.0.0", check=check)
    (warning,) = exposure_warnings(log)
    assert "0.0.0.0" in warning["msg"] and "tls_in_front" in warning["msg"]
