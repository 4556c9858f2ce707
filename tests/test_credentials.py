"""Client credentials: malformed ones are no credential, and a held request stores none.

The malformed values are sent as raw bytes over a socket, as a broken or
hostile client would send them: no HTTP client library lets a test put
``\\xff`` in a header.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

import pytest

from gateway.config import Route
from gateway.proxy.credentials import (
    SAFE_HEADERS,
    api_key_id,
    clean_text,
    query_names,
    safe_headers,
    tenant_of,
)
from gateway.web.auth import TokenBook
from gateway.web.sessions import LOGIN_COOKIE
from tests.conftest import ADMIN_TOKEN, review_of, settings_for, write_policies
from tests.test_review_api import CHAT, SAUCE

HOLD_POLICY = """\
policies:
  - id: hold-sauce
    kind: phrases
    phrases: ["secret sauce"]
    action: review
    severity: high
"""
BAD_KEY = b"sk-\xff\xfe-not-utf8"
QUERY_SECRET = "qs-value-Zq81mVx0Lr"
HEADER_SECRET = "hdr-pass-Kd92nWy7Tq"


@pytest.fixture
def policy_dir(tmp_path):
    directory = tmp_path / "policies"
    write_policies(directory, HOLD_POLICY)
    return directory


# -- raw HTTP over loopback ----------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


async def raw_http(
    client, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> RawResponse:
    """Send one request with header bytes exactly as given; read the whole answer."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = [
        f"{method} {target} HTTP/1.1".encode(),
        b"host: gateway.test",
        b"connection: close",
        b"content-length: " + str(len(body)).encode(),
        *(name + b": " + value for name, value in headers),
    ]
    writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    raw_head, _, payload = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    found: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    if found.get("transfer-encoding") == "chunked":
        payload = _dechunk(payload)
    return RawResponse(status, found, payload)


def chat_body(stream: bool = False) -> bytes:
    return json.dumps(
        {
            "model": "gpt-test",
            "messages": [{"role": "user", "content": "recipe?"}],
            "stream": stream,
        }
    ).encode()


# -- admin listener: a malformed credential is no credential ---------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer \xff\xfe",
        b"Bearer " + ADMIN_TOKEN.encode() + b"\xff",
        b"Bearer \xc3\x28" + ADMIN_TOKEN.encode(),
        b"\xff\xfe " + ADMIN_TOKEN.encode(),
    ],
    ids=["garbage", "valid-token-plus-byte", "bad-utf8-sequence", "bad-scheme"],
)
async def test_admin_api_answers_401_json_to_undecodable_bearer(make_gateway, fake, value):
    _, admin, _ = await make_gateway(upstream=fake)
    resp = await raw_http(admin, "GET", "/governance/v1/policies", [(b"authorization", value)])
    assert resp.status == 401
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"]["code"] == "unauthorized"
    # the same listener still serves the good token
    ok = await raw_http(
        admin,
        "GET",
        "/governance/v1/policies",
        [(b"authorization", b"Bearer " + ADMIN_TOKEN.encode())],
    )
    assert ok.status == 200


async def test_ui_page_sends_undecodable_bearer_to_login(make_gateway, fake):
    _, admin, _ = await make_gateway(upstream=fake)
    resp = await raw_http(admin, "GET", "/review/", [(b"authorization", b"Bearer \xff\xfe")])
    assert resp.status == 303
    assert resp.headers["location"] == "/login?next=/review/"


async def test_login_with_undecodable_nonce_cookie_is_refused_not_crashed(make_gateway, fake):
    _, admin, _ = await make_gateway(upstream=fake)
    form = await (await admin.get("/login")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    body = f"csrf={csrf}&token={ADMIN_TOKEN}&next=/review/".encode()
    resp = await raw_http(
        admin,
        "POST",
        "/login",
        [
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"cookie", LOGIN_COOKIE.encode() + b"=\xff\xfenonce"),
        ],
        body,
    )
    assert resp.status == 403
    assert b"login form expired" in resp.body


@pytest.mark.parametrize(
    "secret",
    ["", "tok\x00en", "tok\nen", "tok\x7fen", "\udcff\udcfe", ADMIN_TOKEN + "\udcff"],
    ids=["empty", "nul", "newline", "del", "surrogates", "token-plus-surrogate"],
)
def test_token_book_treats_malformed_secrets_as_unknown(tmp_path, secret):
    book = TokenBook(settings_for(tmp_path, [Route(name="r", upstream="http://127.0.0.1:9")], []))
    assert book.lookup(secret) is None
    assert book.lookup(ADMIN_TOKEN) is not None


# -- proxy: a held answer is never lost to a header ------------------------------------


async def test_hold_with_undecodable_headers_is_stored_and_answered(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, admin, gw = await make_gateway(upstream=fake)
    resp = await raw_http(
        proxy,
        "POST",
        f"{CHAT}?api-key={QUERY_SECRET}&api-version=2024-06-01",
        [
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer " + BAD_KEY),
            (b"user-agent", b"probe/1.0 \xff\xfe"),
            (b"x-governance-tenant", b"team-\xe9\xff"),
            (b"x-client-pass", HEADER_SECRET.encode()),
            (b"x-forwarded-for", b"10.1.2.3"),
        ],
        chat_body(),
    )
    # the request went the normal way: the upstream was called with the client's bytes
    assert len(fake.requests) == 1
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["choices"][0]["message"]["content"] == "This response is held for review."
    review_id = resp.headers["x-governance-review-id"]
    assert body["x_governance"]["review_id"] == review_id

    item = await review_of(gw).db.get(review_id)
    assert item is not None and item.state == "pending"
    assert item.segments == {"0": SAUCE}
    assert item.key_id == api_key_id(
        {"authorization": "Bearer " + BAD_KEY.decode(errors="surrogateescape")}
    )
    assert item.tenant == "team-\ufffd\ufffd"
    headers = item.request["headers"]
    assert set(headers) <= SAFE_HEADERS
    assert headers["user-agent"] == "probe/1.0 \ufffd\ufffd"
    assert "x-client-pass" not in headers and "x-forwarded-for" not in headers
    assert item.request["query"] == "api-key=<redacted>&api-version=<redacted>"
    assert item.request["path"] == CHAT and item.path == CHAT
    stored = json.dumps(item.to_json())
    for secret in (QUERY_SECRET, HEADER_SECRET, "2024-06-01"):
        assert secret not in stored

    # the decision record names the path without its query
    decision_id = resp.headers["x-governance-decision-id"]
    rec = await admin.get(
        f"/governance/v1/decisions/{decision_id}",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    record = await rec.json()
    assert record["path"] == CHAT and record["review_id"] == review_id
    assert QUERY_SECRET not in json.dumps(record)

    # the client polls its result with the same bytes; another key may not
    poll = await raw_http(
        admin,
        "GET",
        f"/governance/v1/reviews/{review_id}/result",
        [(b"authorization", b"Bearer " + BAD_KEY)],
    )
    assert poll.status == 200, poll.body
    assert poll.json()["status"] == "pending"
    other = await raw_http(
        admin,
        "GET",
        f"/governance/v1/reviews/{review_id}/result",
        [(b"authorization", b"Bearer sk-\xff\xfd-not-utf8")],
    )
    assert other.status == 403


async def test_streamed_hold_with_undecodable_key_is_stored(make_gateway, fake):
    fake.script.text = SAUCE
    proxy, _, gw = await make_gateway(upstream=fake)
    resp = await raw_http(
        proxy,
        "POST",
        CHAT,
        [(b"content-type", b"application/json"), (b"x-api-key", BAD_KEY)],
        chat_body(stream=True),
    )
    assert resp.status == 200
    review_id = resp.headers["x-governance-review-id"]
    text = resp.body.decode()
    assert "held for review" in text and "secret sauce" not in text
    assert text.rstrip().endswith("data: [DONE]")
    item = await review_of(gw).db.get(review_id)
    assert item is not None and item.segments == {"0": SAUCE}
    assert item.key_id is not None


# -- what a stored request keeps ------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        (
            {"Content-Type": "application/json", "User-Agent": "sdk/1"},
            {"content-type", "user-agent"},
        ),
        ({"Authorization": "Bearer k", "Cookie": "a=b", "X-Api-Key": "k"}, set()),
        ({"X-Client-Pass": "p", "X-Upstream-Sig": "s", "X-Forwarded-For": "1.2.3.4"}, set()),
        (
            {
                "Anthropic-Version": "2023-06-01",
                "OpenAI-Organization": "org-1",
                "X-Request-Id": "r",
            },
            {"anthropic-version", "openai-organization", "x-request-id"},
        ),
    ],
    ids=["plain", "credentials", "unknown-names", "protocol"],
)
def test_safe_headers_keep_only_the_allowlist(headers, kept):
    assert set(safe_headers(headers)) == kept


def test_safe_headers_mask_a_secret_and_cut_long_values():
    key = "sk-proj-" + "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8"
    out = safe_headers({"user-agent": f"tool/1 key={key}", "accept": "x" * 5000})
    assert key not in out["user-agent"]
    assert out["user-agent"].startswith("tool/1 key=sk-proj-…[openai-key sha256:")
    assert len(out["accept"]) == 256


def test_a_control_character_inside_a_secret_does_not_hide_it():
    key = "sk-proj-abcdefghij" + "KLMNOPQRSTUVWXYZ0123"
    out = safe_headers({"user-agent": f"x {key[:18]}\t{key[18:]}"})
    assert key not in out["user-agent"]
    assert "KLMNOPQRSTUVWXYZ" not in out["user-agent"]


@pytest.mark.parametrize(
    ("query", "stored"),
    [
        ("", ""),
        ("api-key=abc", "api-key=<redacted>"),
        ("a=1&b=&flag", "a=<redacted>&b&flag"),
        ("key%20name=%FF", "key name=<redacted>"),
        ("x=1&x=2", "x=<redacted>&x=<redacted>"),
    ],
)
def test_query_keeps_names_never_values(query, stored):
    assert query_names(query) == stored


def test_query_name_that_is_a_secret_is_masked():
    token = "sk-live-" + "Q1w2E3r4T5y6U7i8O9p0A1s2"
    out = query_names(token)
    assert token not in out and out.startswith("sk-live-…[openai-key")


@pytest.mark.parametrize(
    "value",
    ["sk-\udcff\udcfe", "\ud800", "plain-key", "k\u00e9y"],
    ids=["escaped-bytes", "lone-surrogate", "ascii", "latin"],
)
def test_api_key_id_never_raises_and_tells_keys_apart(value):
    key = api_key_id({"authorization": f"Bearer {value}"})
    assert key is not None and re.fullmatch(r"key_[0-9a-f]{32}", key)
    assert key == api_key_id({"x-api-key": value})
    assert key != api_key_id({"x-api-key": value + "x"})


def test_clean_text_and_tenant():
    assert clean_text("a\udcffb\x00c\x1bd") == "a\ufffdbcd"
    assert tenant_of({"x-governance-tenant": "\x01\x02"}) is None
    assert tenant_of({"openai-organization": "org-\udce9"}) == "org-\ufffd"
