"""The post-mortem draft: its sections and figures, checked against the recorded events."""

from __future__ import annotations

import asyncio
import re
import time

from gateway.cli import main as cli_main
from gateway.config import Route
from tests.conftest import ADMIN_TOKEN, write_policies

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = "/v1/chat/completions"

POLICIES = """\
policies:
  - id: no-forbidden
    kind: phrases
    phrases: ["launch codes"]
    action: block
    severity: high
  - id: no-secret
    kind: phrases
    phrases: ["secret sauce"]
    action: block
    severity: critical
incident_rules:
  - id: leaks
    source: policy
    severity: SEV2
    dedup_key: [route, upstream]
"""

PREAMBLE = (
    "Here is a long and careful preamble about gardening, soil, water, light and "
    "patience, long enough to be released before anything bad shows up: "
)


def chat(stream: bool) -> dict:
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "x"}]}


def section(md: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", md, re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


async def test_postmortem_figures_match_the_events(make_gateway, fake, policy_dir):
    write_policies(policy_dir, POLICIES)
    proxy, admin, gw = await make_gateway([Route(name="chat", upstream=fake.url)])
    decision_ids = []
    fake.script.chunk = 5
    fake.script.text = PREAMBLE + "the launch codes are 0000."
    resp = await proxy.post(CHAT, json=chat(True))
    await resp.read()
    decision_ids.append(resp.headers["x-governance-decision-id"])
    fake.script.text = "Both the launch codes and the secret sauce, here."
    resp = await proxy.post(CHAT, json=chat(False))
    decision_ids.append(resp.headers["x-governance-decision-id"])
    fake.script.text = PREAMBLE + "and now the secret sauce recipe."
    resp = await proxy.post(CHAT, json=chat(True))
    await resp.read()
    decision_ids.append(resp.headers["x-governance-decision-id"])

    records = []
    for did in decision_ids:
        r = await admin.get(f"/governance/v1/decisions/{did}", headers=ADMIN)
        records.append(await r.json())
    released = sum(r["chars_released"] for r in records)
    assert released > 0 and sum(r["cut"] for r in records) == 2

    [inc] = (await (await admin.get("/governance/v1/incidents", headers=ADMIN)).json())["incidents"]
    base = f"/governance/v1/incidents/{inc['id']}"
    assert (
        await admin.post(
            "/governance/v1/routes/chat/contain",
            headers=ADMIN,
            json={"mode": "block", "incident_id": inc["id"]},
        )
    ).status == 200
    assert (
        await admin.post(
            "/governance/v1/routes/chat/restore", headers=ADMIN, json={"reason": "model fixed"}
        )
    ).status == 200
    assert (await admin.post(f"{base}/resolved", headers=ADMIN, json={})).status == 200
    timeline = (await (await admin.get(base, headers=ADMIN)).json())["timeline"]

    resp = await admin.get(f"{base}/postmortem", headers=ADMIN)
    assert resp.status == 200
    assert resp.content_type == "text/markdown"
    md = await resp.text()

    assert md.startswith(f"# Post-mortem (draft): {inc['title']}")
    headings = re.findall(r"^## (.+)$", md, re.M)
    assert headings == [
        "Summary",
        "Impact",
        "Detection",
        "Containment",
        "Timeline",
        "Evidence samples",
        "Root cause",
        "Contributing factors",
        "What went well, what went poorly",
        "Action items",
    ]

    impact = section(md, "Impact")
    assert "- Requests affected: 3\n" in impact
    assert "- Breaches recorded: 4\n" in impact
    assert f"- Characters released before a cut: {released} (in 2 cut stream(s))" in impact
    rows = dict(re.findall(r"^\| (no-[a-z]+) \| (\d+) \|$", impact, re.M))
    assert rows == {"no-forbidden": "2", "no-secret": "2"}

    detection = section(md, "Detection")
    assert "policy breach rule `leaks`" in detection
    assert "first breach of no-forbidden" in detection

    containment = section(md, "Containment")
    switches = [e for e in timeline if e["kind"] in ("contained", "restored")]
    assert [e["kind"] for e in switches] == ["contained", "restored"]
    lines = [line for line in containment.splitlines() if line.startswith("| 20")]
    assert lines == [
        f"| {utc(switches[0]['ts'])} | contain | block | chat | root |",
        f"| {utc(switches[1]['ts'])} | restore | block | chat | root |",
    ]

    events = [line for line in section(md, "Timeline").splitlines() if line.startswith("| 20")]
    assert [line.split(" | ")[1] for line in events] == [e["kind"] for e in timeline]
    assert [line.split(" | ")[1] for line in events] == [
        "opened",
        "contained",
        "restored",
        "resolved",
    ]

    evidence = section(md, "Evidence samples")
    for did in decision_ids:
        assert f"[{did}](/governance/v1/decisions/{did})" in evidence
    assert "_To be written" in section(md, "Root cause")
    assert "| Action | Owner | Priority | Ticket |" in section(md, "Action items")

    # the CLI exports the same draft through the admin API
    out = policy_dir.parent / "pm.md"
    code = await asyncio.to_thread(
        cli_main,
        [
            "incident",
            "postmortem",
            inc["id"],
            "-o",
            str(out),
            "--admin-url",
            str(admin.make_url("")).rstrip("/"),
            "--token",
            ADMIN_TOKEN,
        ],
    )
    assert code == 0
    exported = out.read_text()
    # only the generation time may differ
    strip = re.compile(r"^_Blameless draft generated .*$", re.M)
    assert strip.sub("", exported) == strip.sub("", md)
