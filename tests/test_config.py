"""``gateway.yaml``: validation with positions, path resolution, the quick start."""

from __future__ import annotations

import pytest

from gateway.config import load_settings, quickstart
from gateway.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_full_config_loads_and_resolves_paths(tmp_path):
    path = write(
        tmp_path,
        """\
listeners:
  proxy: {port: 9080}
  admin: {host: 0.0.0.0, port: 9081}
routes:
  - name: chat
    path_prefix: /v1/
    models: ["gpt-4*"]
    upstream: https://api.example.com/
    fallback: backup
    api_key: {mode: inject, env: OPENAI_API_KEY}
    timeouts: {first_byte: 20}
  - name: backup
    upstream: http://127.0.0.1:9000
  - name: rag
    path_prefix: /rag/
    protocol: rag-json
    upstream: http://127.0.0.1:9001
    rag: {text_path: result.answer, sources_path: result.documents}
policies: [policies]
store: {url: "sqlite:///data/g.db"}
indexes: {books: indexes/books}
""",
    )
    s = load_settings(path)
    assert s.listeners.proxy.port == 9080 and s.listeners.admin.host == "0.0.0.0"
    chat = s.route("chat")
    assert chat.upstream == "https://api.example.com" and chat.timeouts.first_byte == 20
    assert chat.timeouts.idle == 60
    assert s.policies == [str(tmp_path / "policies")]
    assert s.store.url == f"sqlite:///{tmp_path / 'data/g.db'}"
    assert s.indexes == {"books": str(tmp_path / "indexes/books")}
    assert s.route("rag").rag.text_path == "result.answer"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "routes:\n  - name: a\n    upstream: ftp://x\n",
            ":3:15: invalid-value: routes.0.upstream",
        ),
        (
            "routes:\n  - name: a\n    upstream: http://x\n    fallback: a\n",
            "fallback cannot be the route itself",
        ),
        (
            "routes:\n  - name: a\n    upstream: http://x\n    upstrem: http://y\n",
            ":4:5: unknown-field: routes.0.upstrem (did you mean upstream?)",
        ),
        (
            "routes:\n  - name: a\n    upstream: http://x\n    api_key: {mode: inject}\n",
            "needs api_key.env",
        ),
        ("routes: []\n", "routes: List should have at least 1 item"),
        (
            "routes:\n  - name: a\n    upstream: http://x\nstore: {url: mysql://x}\n",
            ":4:14: invalid-value: store.url",
        ),
    ],
)
def test_config_errors_point_into_the_file(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert any(expected in e for e in info.value.errors), info.value.errors
    assert all(e.startswith(str(path)) for e in info.value.errors)


def test_store_url_from_environment(tmp_path, monkeypatch):
    s = load_settings(write(tmp_path, "routes:\n  - name: a\n    upstream: http://x\n"))
    monkeypatch.setenv("GATEWAY_STORE_URL", "postgresql://db/gw")
    assert s.store_url() == "postgresql://db/gw"


def test_quickstart_one_route_for_both_protocols():
    s = quickstart("https://api.example.com/v1/", ["p"], port=1, admin_port=2)
    (route,) = s.routes
    assert route.upstream == "https://api.example.com" and route.protocol == "auto"
    assert (s.listeners.proxy.port, s.listeners.admin.port) == (1, 2)


def test_fallback_errors_point_at_the_fallback_key(tmp_path):
    path = write(
        tmp_path,
        """\
listeners:
  proxy: {port: 9080}
routes:
  - name: a
    upstream: http://x
    fallback: b
  - name: b
    upstream: http://x/
  - name: c
    upstream: http://y
    fallback: nowhere
  - name: d
    upstream: http://z
    containment: {fallback_on: SEV1}
""",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    # every problem at once, each on its own line of the file, not at the first key
    assert info.value.errors == [
        f"{path}:6:15: invalid-value: routes.0.fallback: route a: fallback 'b' has the same "
        "upstream; a fallback must go somewhere else",
        f"{path}:11:15: invalid-value: routes.2.fallback: route c: fallback 'nowhere' is no route",
        f"{path}:14:32: invalid-value: routes.3.containment.fallback_on: route d: "
        "containment.fallback_on needs a fallback route",
    ]


def test_the_shipped_example_config_validates():
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "gateway.example.yaml"
    settings = load_settings(example)
    primary = settings.route("openai")
    assert primary.fallback and settings.route(primary.fallback).upstream != primary.upstream


def test_a_duplicate_key_is_reported_with_every_other_error_sorted(tmp_path):
    path = write(
        tmp_path,
        "routes:\n"
        "  - name: a\n"
        "    upstream: http://x\n"
        "    upstream: http://y\n"
        "log_level: loud\n"
        "listeners: {proxy: {port: 99999}}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    lines = err.value.errors
    assert [line.split(": ")[1] for line in lines] == [
        "duplicate-key",
        "invalid-value",
        "invalid-value",
    ]
    assert lines[0].startswith(f"{path}:4:5: duplicate-key: ")
    assert "already defined at" in lines[0] and f"{path}:3:5" in lines[0]
    assert lines[1].startswith(f"{path}:5:") and lines[2].startswith(f"{path}:6:")
