"""Secrets in evidence: told by type, hash, length and ends, never reproduced.

The table tests pin what is recognised and what is left alone; the gateway
tests send an answer that leaks a live key through the shipped
``no-api-keys`` policy and look for the key everywhere it could be kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from gateway.secretmask import find_secrets, fingerprint, identify, mask_evidence, mask_secrets
from tests.conftest import ADMIN_TOKEN, REVIEWER_TOKEN, review_of, write_policies

CHAT = "/v1/chat/completions"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
SHIPPED = Path(__file__).resolve().parent.parent / "policies" / "main.yaml"
# sk-live- and 40 characters, as a leaked key would look
SECRET = "sk-live-" + "9fQ2xR7mK4pL8vN3tB6yH1cJ5wE0zA2sD4gF6hQx"
MASKED = f"sk-live-…[openai-key sha256:{fingerprint(SECRET)}, {len(SECRET)} chars, ends hQx]"
LEAK = f"Here is the production key: {SECRET} — keep it safe."


# -- what is recognised ---------------------------------------------------------------

RANDOM = "Zq8Wm3Rt6Yp1Ks4Xn7Bv2Lc5Hd9Gf0Ja"


@pytest.mark.parametrize(
    ("secret", "kind", "prefix"),
    [
        ("sk-" + RANDOM, "openai-key", "sk-"),
        ("sk-proj-" + RANDOM + "_-x9", "openai-key", "sk-proj-"),
        ("sk-live-" + RANDOM, "openai-key", "sk-live-"),
        ("sk-ant-api03-" + RANDOM, "anthropic-key", "sk-ant-api03-"),
        ("sk_live_" + RANDOM, "stripe-key", "sk_live_"),
        ("AKIAIOSFODNN7EXAMPLE", "aws-access-key-id", "AKIA"),
        ("ghp_" + RANDOM + "abcd", "github-token", "ghp_"),
        ("gho_" + RANDOM + "abcd", "github-token", "gho_"),
        ("github_pat_11ABCDEFG0" + RANDOM, "github-token", "github_pat_"),
        ("xoxb-1234567890-0987654321-" + RANDOM[:24], "slack-token", "xoxb-"),
        ("AIza" + RANDOM + "abc", "google-api-key", "AIza"),
        (
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "jwt",
            "eyJ",
        ),
        ("kR9/xT3mQ7vB1nW5+Lp8Zs2Dy6Hf4Jc0Gq7Ua3Ve", "token", "kR9/"),
        (RANDOM + "Qe", "token", RANDOM[:4]),
    ],
)
def test_secret_is_shown_as_type_hash_length_and_ends(secret, kind, prefix):
    text = f"before {secret} after"
    out = mask_secrets(text)
    assert secret not in out
    expected = (
        f"before {prefix}…[{kind} sha256:{fingerprint(secret)}, {len(secret)} chars, "
        f"ends {secret[-3:]}] after"
    )
    assert out == expected
    # the middle of the secret is gone: no run of 6 of its characters past the prefix survives
    middle = secret[len(prefix) : -3]
    assert not any(middle[i : i + 6] in out for i in range(len(middle) - 5))
    # masking is stable: the identifier is not itself taken for a secret
    assert mask_secrets(out) == out


def test_private_key_block_is_masked_whole_even_cut_short():
    block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1L\n-----END RSA PRIVATE KEY-----"
    out = mask_secrets(f"key:\n{block}\ndone")
    assert out == (
        f"key:\n-----BEGIN RSA PRIVATE KEY-----…[private-key sha256:{fingerprint(block)}, "
        f"{len(block)} chars]\ndone"
    )
    cut = mask_secrets("-----BEGIN PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1L")
    assert "MIIE" not in cut and cut.startswith("-----BEGIN PRIVATE KEY-----…[private-key")


@pytest.mark.parametrize(
    "text",
    [
        "The internal combustion engine was invented in the 19th century.",
        "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        "request 550e8400-e29b-41d4-a716-446655440000 failed",
        "gutenberg-1342-pride-and-prejudice-chapter-one",
        "AbstractSingletonProxyFactoryBean2Impl and getUserAccountBalanceForCustomerId2024",
        "HTTP_X_FORWARDED_FOR_AND_SOME_MORE_STUFF_2",
        "a task-list with sk-ip steps",
        "pattern \\bsk-(?:live-|test-|proj-)?[A-Za-z0-9]{24,}",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert mask_secrets(text) == text
    assert find_secrets(text) == []


def test_short_secret_shows_no_ends():
    assert identify("abcd1234", "token", "") == (
        f"…[token sha256:{fingerprint('abcd1234')}, 8 chars]"
    )


def test_evidence_is_masked_in_every_string_but_source_ids():
    evidence = {
        "match": SECRET,
        "rule": "pattern sk-",
        "source_id": RANDOM + "Qe",
        "signals": {"quote": f"said {SECRET}"},
        "spans": [[1, 2], SECRET],
        "score": 0.5,
    }
    out = mask_evidence(evidence)
    assert out["match"] == MASKED
    assert out["signals"]["quote"] == f"said {MASKED}"
    assert out["spans"] == [[1, 2], MASKED]
    assert out["source_id"] == RANDOM + "Qe"
    assert out["rule"] == "pattern sk-" and out["score"] == 0.5
    assert evidence["match"] == SECRET  # the detector's own finding is untouched


# -- through the gateway: a blocked secret is kept nowhere in full --------------------


@pytest.fixture
def policy_dir(tmp_path):
    directory = tmp_path / "policies"
    directory.mkdir()
    shutil.copy(SHIPPED, directory / "main.yaml")
    write_policies(
        directory,
        "incident_rules:\n  - id: key-leaks\n    source: policy\n    policies: [no-api-keys]\n",
        name="incidents.yaml",
    )
    return directory


def chat(stream: bool) -> dict:
    return {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "key?"}],
        "stream": stream,
    }


async def _wait_for_incident(admin) -> dict:
    for _ in range(200):
        resp = await admin.get("/governance/v1/incidents", headers=ADMIN)
        found = (await resp.json())["incidents"]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no incident was opened")


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [
        str(p)
        for p in root.rglob("*")
        if p.is_file() and "policies" not in p.parts and needle in p.read_bytes()
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_blocked_secret_is_masked_in_record_incident_store_and_logs(
    make_gateway, fake, tmp_path, caplog, stream
):
    caplog.set_level(logging.DEBUG)
    fake.script.text = LEAK
    proxy, admin, gw = await make_gateway(upstream=fake)
    resp = await proxy.post(CHAT, json=chat(stream), headers={"authorization": "Bearer sk-client"})
    assert resp.status == 200
    assert resp.headers["x-governance-decision"] == "block"
    answer = await resp.text()
    assert SECRET not in answer and SECRET[:20] not in answer
    decision_id = resp.headers["x-governance-decision-id"]

    rec = await admin.get(f"/governance/v1/decisions/{decision_id}", headers=ADMIN)
    record = await rec.json()
    assert record["breached"] == ["no-api-keys"]
    [verdict] = [p for p in record["policies"] if p["id"] == "no-api-keys"]
    finding = verdict["findings"][0]
    assert finding["evidence"]["match"] == MASKED
    assert SECRET not in json.dumps(record, ensure_ascii=False)

    incident = await _wait_for_incident(admin)
    detail = await (
        await admin.get(f"/governance/v1/incidents/{incident['id']}", headers=ADMIN)
    ).json()
    dumped = json.dumps(detail, ensure_ascii=False)
    assert SECRET not in dumped
    assert MASKED in dumped
    page = await (await admin.get(f"/incidents/{incident['id']}", headers=ADMIN)).text()
    assert SECRET not in page
    assert f"sha256:{fingerprint(SECRET)}" in page
    postmortem = await admin.get(
        f"/governance/v1/incidents/{incident['id']}/postmortem.md", headers=ADMIN
    )
    if postmortem.status == 200:
        assert SECRET not in await postmortem.text()

    # nothing the gateway wrote keeps the key: store, journal, data directory
    await gw.decisions.flush()
    assert _files_holding(tmp_path, SECRET.encode()) == []
    for entry in caplog.records:
        assert SECRET not in entry.getMessage()
        assert SECRET not in json.dumps(entry.__dict__, default=str, ensure_ascii=False)


REVIEW_SECRETS = """\
policies:
  - id: review-keys
    kind: phrases
    patterns: ['\\bsk-(?:live-|test-|proj-)?[A-Za-z0-9]{24,}']
    max_match_chars: 100
    action: review
    severity: critical
"""


async def test_held_answer_keeps_the_text_but_its_evidence_is_masked(
    make_gateway, fake, policy_dir
):
    for extra in policy_dir.iterdir():
        extra.unlink()
    write_policies(policy_dir, REVIEW_SECRETS)
    fake.script.text = LEAK
    proxy, admin, gw = await make_gateway(upstream=fake)
    resp = await proxy.post(CHAT, json=chat(False), headers={"authorization": "Bearer sk-client"})
    review_id = resp.headers["x-governance-review-id"]
    item = await review_of(gw).db.get(review_id)
    # the reviewer decides on the answer as it is, so the held text keeps the key
    assert item.segments == {"0": LEAK}
    [finding] = item.record.policies[0].findings
    assert finding.evidence["match"] == MASKED

    api = await admin.get(
        f"/governance/v1/reviews/{review_id}", headers={"authorization": f"Bearer {REVIEWER_TOKEN}"}
    )
    shown = await api.json()
    assert SECRET not in json.dumps(shown["item"]["record"], ensure_ascii=False)

    page = await (await admin.get(f"/review/items/{review_id}", headers=ADMIN)).text()
    evidence = re.search(r'<section class="findings".*?</section>', page, re.S).group(0)
    assert SECRET not in evidence
    assert f"sha256:{fingerprint(SECRET)}" in evidence
