"""The ``gateway`` command's edges: flags with --config, ports in use, check's exit codes,
index build progress."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import build_parser, load_config
from gateway.errors import ConfigError
from tests.conftest import write_policies

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = Path(sys.executable).parent / "gateway"

CONFIG = """\
listeners:
  proxy: {host: 127.0.0.1, port: 7100}
  admin: {host: 127.0.0.1, port: 7101}
routes:
  - {name: main, upstream: "http://127.0.0.1:9"}
policies: [pol]
store: {url: "sqlite:///file.db"}
"""


def serve_settings(config: Path, *flags: str):
    return load_config(build_parser().parse_args(["serve", "--config", str(config), *flags]))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


# -- flags with --config ----------------------------------------------------------


def test_without_flags_the_file_decides(config: Path):
    s = serve_settings(config)
    assert (s.listeners.proxy.host, s.listeners.proxy.port) == ("127.0.0.1", 7100)
    assert (s.listeners.admin.host, s.listeners.admin.port) == ("127.0.0.1", 7101)
    assert s.store.url == f"sqlite:///{config.parent / 'file.db'}"
    assert s.policies == [str(config.parent / "pol")]


def test_flags_override_the_file(config: Path, tmp_path: Path):
    s = serve_settings(
        config,
        "--host",
        "0.0.0.0",
        "--port",
        "7200",
        "--admin-host",
        "127.0.0.2",
        "--admin-port",
        "7201",
        "--store",
        f"sqlite:///{tmp_path / 'other.db'}",
        "--policies",
        "elsewhere",
    )
    assert (s.listeners.proxy.host, s.listeners.proxy.port) == ("0.0.0.0", 7200)
    assert (s.listeners.admin.host, s.listeners.admin.port) == ("127.0.0.2", 7201)
    assert s.store.url == f"sqlite:///{tmp_path / 'other.db'}"
    assert s.policies == ["elsewhere"]


def test_one_flag_overrides_only_its_own_key(config: Path):
    s = serve_settings(config, "--admin-port", "7301")
    assert s.listeners.admin.port == 7301
    assert s.listeners.proxy.port == 7100 and s.listeners.admin.host == "127.0.0.1"


def test_upstream_with_config_is_refused_not_ignored(config: Path):
    with pytest.raises(ConfigError, match="--upstream is for the quick start"):
        serve_settings(config, "--upstream", "http://127.0.0.1:1234")


def test_quick_start_defaults_still_apply():
    args = build_parser().parse_args(["serve", "--upstream", "http://127.0.0.1:9"])
    s = load_config(args)
    assert (s.listeners.proxy.port, s.listeners.admin.port) == (8080, 8081)
    s = load_config(
        build_parser().parse_args(["serve", "--upstream", "http://127.0.0.1:9", "--port", "0"])
    )
    assert s.listeners.proxy.port == 0


def test_a_port_out_of_range_is_a_usage_error(config: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", "--config", str(config), "--port", "70000"])
    assert exc.value.code == 2
    assert "a port is 0-65535, not 70000" in capsys.readouterr().err


# -- a port in use -------------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_lines(stderr: str) -> list[str]:
    """stderr without the JSON log lines the gateway writes while it starts."""
    return [line for line in stderr.splitlines() if line and not line.startswith("{")]


def gateway(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(GATEWAY), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def serve_on(tmp_path: Path, port: int, admin_port: int) -> subprocess.CompletedProcess:
    policies = write_policies(tmp_path, "policies:\n  - {id: p, kind: phrases, phrases: [x]}\n")
    return gateway(
        "serve",
        "--upstream",
        "http://127.0.0.1:9",
        "--policies",
        str(policies),
        "--port",
        str(port),
        "--admin-port",
        str(admin_port),
        cwd=tmp_path,
    )


def test_a_busy_proxy_port_is_one_line_naming_the_flag(tmp_path: Path, busy_port: int):
    result = serve_on(tmp_path, busy_port, free_port())
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert error_lines(result.stderr) == [
        f"gateway: cannot start the proxy listener on 127.0.0.1:{busy_port}: port {busy_port} "
        "is already in use; change --port or listeners.proxy.port"
    ]


def test_a_busy_admin_port_is_one_line_naming_the_flag(tmp_path: Path, busy_port: int):
    result = serve_on(tmp_path, free_port(), busy_port)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert error_lines(result.stderr) == [
        f"gateway: cannot start the admin listener on 127.0.0.1:{busy_port}: port {busy_port} "
        "is already in use; change --admin-port or listeners.admin.port"
    ]


@pytest.mark.parametrize(
    ("flag", "what"),
    [
        ("--upstream-port", "demo upstream"),
        ("--port", "proxy listener"),
        ("--admin-port", "admin listener"),
    ],
)
def test_the_demo_says_which_port_is_busy(tmp_path: Path, busy_port: int, flag: str, what: str):
    ports = {"--upstream-port": free_port(), "--port": free_port(), "--admin-port": free_port()}
    ports[flag] = busy_port
    result = gateway(
        "demo", *(x for kv in ports.items() for x in (kv[0], str(kv[1]))), cwd=tmp_path
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert error_lines(result.stderr) == [
        f"gateway: cannot start the {what} on 127.0.0.1:{busy_port}: port {busy_port} "
        f"is already in use; change {flag}"
    ]
    # it says so before building anything
    assert "Building" not in result.stdout


# -- gateway check exit codes --------------------------------------------------------

CHECK_POLICIES = """\
policies:
  - {id: stop-it, kind: phrases, phrases: [launch codes]}
  - {id: mask, kind: phrases, patterns: ['\\d{4}'], action: redact}
  - {id: note, kind: phrases, phrases: [tomato], action: annotate}
  - {id: watch, kind: phrases, phrases: [potato], mode: monitor}
"""


def check(tmp_path: Path, text: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(GATEWAY), "check", *flags],
        input=text,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("text", "action", "code"),
    [
        ("all fine", "allow", 0),
        ("grow a tomato", "annotate", 0),
        ("a potato", "allow", 0),  # monitor mode: recorded, not enforced
        ("the pin is 1234", "redact", 1),
        ("the launch codes", "block", 1),
    ],
)
def test_check_exit_code_follows_the_decision(tmp_path: Path, text, action, code):
    write_policies(tmp_path / "pol", CHECK_POLICIES)
    result = check(tmp_path, text, "--policies", "pol")
    assert json.loads(result.stdout)["action"] == action
    assert result.returncode == code, result.stderr


def test_check_exit_code_for_review_and_fallback(tmp_path: Path):
    write_policies(
        tmp_path / "pol",
        "policies:\n  - {id: hold, kind: phrases, phrases: [hold me], action: review}\n",
    )
    result = check(tmp_path, "please hold me", "--policies", "pol")
    assert json.loads(result.stdout)["action"] == "review" and result.returncode == 1


@pytest.mark.parametrize(
    ("setup", "flags", "message"),
    [
        (
            CHECK_POLICIES.replace("kind: phrases, phrases: [tomato]", "kind: nosuch"),
            [],
            "unknown-kind",
        ),
        (CHECK_POLICIES, ["--sources", "missing.json"], "missing.json: No such file"),
        (CHECK_POLICIES, ["--sources", "pol/main.yaml"], "not JSON"),
    ],
)
def test_check_exits_2_on_bad_input(tmp_path: Path, setup, flags, message):
    write_policies(tmp_path / "pol", setup)
    result = check(tmp_path, "all fine", "--policies", "pol", *flags)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_check_exits_2_on_an_unreadable_body_or_route(tmp_path: Path, config: Path):
    write_policies(tmp_path / "pol", CHECK_POLICIES)
    result = check(tmp_path, '{"choices": 5}', "--policies", "pol")
    assert result.returncode == 2 and "cannot tell the protocol" in result.stderr
    result = check(tmp_path, "x", "--config", str(config), "--route", "nope")
    assert result.returncode == 2 and "no route named 'nope'" in result.stderr


# -- index build progress -------------------------------------------------------------


def small_corpus(tmp_path: Path) -> Path:
    sample = ROOT / "indexes" / "sample" / "corpus.jsonl"
    with open(sample, encoding="utf-8") as fh:
        rows = [next(fh) for _ in range(2)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(rows), encoding="utf-8")
    return path


def test_a_lexical_build_reports_each_stage(tmp_path: Path, capsys):
    from gateway.index import BuildParams, build_index

    out = tmp_path / "idx"
    build_index(small_corpus(tmp_path), out, BuildParams(semantic=False), progress=True)
    err = capsys.readouterr().err
    assert "reading: 2doc" in err
    for stage in ("writing the lexical index", f"writing {out}"):
        assert f"{stage}..." in err and f"{stage}: done in " in err
    assert "encoding" not in err and "screen" not in err


@pytest.mark.slow
def test_a_semantic_build_reports_each_stage(tmp_path: Path, capsys, monkeypatch):
    from gateway.index import BuildParams, build_index
    from gateway.index import build as build_mod

    # distilling is cached per process; start without it so its bar shows
    monkeypatch.setattr(build_mod, "_DISTILLED", {})
    build_index(small_corpus(tmp_path), tmp_path / "idx", BuildParams(), progress=True)
    err = capsys.readouterr().err
    for stage in (
        "loading the model all-MiniLM-L6-v2",
        "writing the lexical index",
        "passage vectors",
        "fitting the screen to",
        f"writing {tmp_path / 'idx'}",
    ):
        assert f"{stage}" in err and ": done in " in err.split(stage, 1)[1], stage
    assert "reading and encoding" in err
    assert "distilling the screen" in err and "piece" in err


def test_ensure_sample_knows_when_it_would_build(tmp_path: Path):
    from gateway.index import ensure_sample, sample_is_current

    sample = tmp_path / "indexes" / "sample"
    sample.mkdir(parents=True)
    small = small_corpus(tmp_path)
    (sample / "corpus.jsonl").write_text(small.read_text(encoding="utf-8"), encoding="utf-8")
    assert not sample_is_current(tmp_path / "indexes", semantic=False)
    ensure_sample(tmp_path / "indexes", semantic=False)
    assert sample_is_current(tmp_path / "indexes", semantic=False)
    # the corpus changed: the next run rebuilds, and says so
    with open(sample / "corpus.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "new", "text": "a new document with some words in it"}) + "\n")
    assert not sample_is_current(tmp_path / "indexes", semantic=False)
