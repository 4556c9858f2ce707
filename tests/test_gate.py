"""``gateway gate``: the real command, run as a process, against two fake upstreams.

The candidate copies a passage of the sample corpus into one answer in ten;
the baseline never does. The gate must see the difference beyond chance,
name the copying answers with their evidence, and exit 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from gateway.index import BuildParams, build_index
from tests.fakes import FakeUpstream

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "indexes" / "sample" / "corpus.jsonl"
PROMPTS = 200
CLEAN = (
    "Here is a short overview. The topic has several sides worth weighing, and the answer "
    "depends on what you need it for; tell me more and I can go into detail."
)


@pytest.fixture(scope="module")
def policies(tmp_path_factory) -> Path:
    """A copyright policy over a lexical index of the shipped sample corpus."""
    folder = tmp_path_factory.mktemp("gate")
    build_index(SAMPLE, folder / "indexes" / "sample", BuildParams(semantic=False))
    (folder / "policies").mkdir()
    (folder / "policies" / "copyright.yaml").write_text(
        "policies:\n"
        "  - id: copyright-verbatim\n"
        "    kind: copyright\n"
        "    index: sample\n"
        "    match: [verbatim, near_verbatim]\n"
        "    action: block\n"
        "  - id: no-secret\n"
        "    kind: phrases\n"
        "    phrases: [internal use only]\n"
        "    action: block\n"
    )
    return folder / "policies"


def passages() -> list[str]:
    docs = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    return [" ".join(d["text"].split()[200:240]) for d in docs]


def copying_every_tenth(body: dict) -> str:
    number = int(body["messages"][-1]["content"].rsplit(" ", 1)[1])
    if number % 10 == 0:
        texts = passages()
        return f"As requested: {texts[number // 10 % len(texts)]} That is the passage."
    return CLEAN


def write_prompts(path: Path, count: int = PROMPTS) -> Path:
    lines = [
        json.dumps({"id": f"p{n:03d}", "prompt": f"Tell me about topic {n}"}) for n in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def gate(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "gate",
        "--no-progress",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": ""},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def upstreams(aiohttp_server, candidate_reply) -> tuple[FakeUpstream, FakeUpstream, str, str]:
    candidate, baseline = FakeUpstream(), FakeUpstream()
    candidate.script.reply = candidate_reply
    baseline.script.text = CLEAN
    c = await aiohttp_server(candidate.app)
    b = await aiohttp_server(baseline.app)
    return candidate, baseline, str(c.make_url("/v1")), str(b.make_url("/"))


async def test_a_candidate_that_copies_fails_the_gate_with_evidence(
    aiohttp_server, policies, tmp_path
):
    candidate, baseline, c_url, b_url = await upstreams(aiohttp_server, copying_every_tenth)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "report"
    code, stdout, stderr = await gate(
        "--candidate",
        c_url,
        "--baseline",
        b_url,
        "--prompts",
        str(prompts),
        "--policies",
        str(policies),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert code == 1, stderr
    assert len(candidate.requests) == len(baseline.requests) == PROMPTS
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False
    rows = {row["policy"]: row for row in report["policies"]}
    copy = rows["copyright-verbatim"]
    assert copy["candidate"]["hits"] == PROMPTS // 10
    assert copy["baseline"]["hits"] == 0
    # the difference is beyond chance: its interval excludes zero
    assert copy["difference"]["difference"] == pytest.approx(0.1)
    assert 0 < copy["difference"]["low"] < 0.1 < copy["difference"]["high"]
    assert copy["failures"] and "max_increase" in copy["failures"][0]
    assert rows["no-secret"]["failures"] == []
    worst = copy["worst"]
    assert len(worst) == 3
    assert all(int(w["id"][1:]) % 10 == 0 for w in worst)
    assert all(w["findings"][0]["evidence"] for w in worst)
    markdown = (out / "report.md").read_text()
    assert "**failed**" in markdown and "`copyright-verbatim`" in markdown
    assert markdown in stdout
    assert (out / "rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the prompts reached the upstream as the official wire format asks
    assert candidate.requests[0]["path"] == "/v1/chat/completions"
    assert candidate.requests[0]["body"]["messages"][0]["role"] == "user"


async def test_equal_upstreams_pass_and_a_rate_limit_fails_on_its_own(
    aiohttp_server, policies, tmp_path
):
    _, _, c_url, b_url = await upstreams(aiohttp_server, lambda body: CLEAN)
    prompts = write_prompts(tmp_path / "prompts.jsonl", 40)
    code, stdout, stderr = await gate(
        "--candidate",
        c_url,
        "--baseline",
        b_url,
        "--prompts",
        str(prompts),
        "--policies",
        str(policies),
        "--out",
        str(tmp_path / "same"),
        cwd=tmp_path,
    )
    assert code == 0, stderr
    assert "**passed**" in stdout

    # no baseline: only the candidate's own rate can fail it
    candidate, _, c_url, _ = await upstreams(aiohttp_server, copying_every_tenth)
    limits = tmp_path / "limits.yaml"
    limits.write_text("policies:\n  copyright-verbatim: {max_rate: 0.2}\n")
    args = ["--candidate", c_url, "--prompts", str(prompts), "--policies", str(policies)]
    code, _, stderr = await gate(*args, "--thresholds", str(limits), "--out", "loose", cwd=tmp_path)
    assert code == 0, stderr
    limits.write_text("policies:\n  copyright-verbatim: {max_rate: 0.05}\n")
    code, stdout, _ = await gate(
        *args, "--thresholds", str(limits), "--out", "strict", cwd=tmp_path
    )
    assert code == 1
    assert "above max_rate 5.00%" in stdout


async def test_an_interrupted_run_resumes_asking_only_what_failed(
    aiohttp_server, policies, tmp_path
):
    candidate, baseline, c_url, b_url = await upstreams(aiohttp_server, copying_every_tenth)
    prompts = write_prompts(tmp_path / "prompts.jsonl", 30)
    args = [
        "--candidate",
        c_url,
        "--baseline",
        b_url,
        "--prompts",
        str(prompts),
        "--policies",
        str(policies),
        "--out",
        "run",
        "--retries",
        "1",
    ]
    candidate.script.fault = "500"
    code, stdout, stderr = await gate(*args, cwd=tmp_path)
    # a candidate that answers nothing cannot be judged
    assert code == 2
    assert "failed to answer" in stdout
    assert len(candidate.requests) == 60  # each prompt tried twice
    assert len(baseline.requests) == 30

    # the same folder again, without --resume: refused, nothing lost
    code, _, stderr = await gate(*args, cwd=tmp_path)
    assert code == 2
    assert "--resume" in stderr

    candidate.script.fault = ""
    code, stdout, stderr = await gate(*args, "--resume", cwd=tmp_path)
    # 3 copies in 30 answers against none: too few to tell from chance, so it passes
    assert code == 0, stderr
    assert len(candidate.requests) == 90  # only the failed ones asked again
    assert len(baseline.requests) == 30
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["answers"]["candidate"] == {"ok": 30, "failed": 0}
    copy = next(row for row in report["policies"] if row["policy"] == "copyright-verbatim")
    assert copy["candidate"]["hits"] == 3
    assert copy["difference"]["low"] < 0 < copy["difference"]["high"]

    # resuming with another prompt file would mix two runs
    other = write_prompts(tmp_path / "other.jsonl", 31)
    changed = [a if a != str(prompts) else str(other) for a in args]
    code, _, stderr = await gate(*changed, "--resume", cwd=tmp_path)
    assert code == 2
    assert "prompt_count, prompts, prompts_sha256" in stderr


async def test_bad_inputs_are_precise(policies, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "fine"}\n{"prompt": \n[1]\n{"id": "x", "prompt": "a"}\n'
        '{"id": "x", "prompt": "b"}\n{"messages": []}\n{"prompt": "a", "colour": 1}\n'
    )
    code, _, stderr = await gate(
        "--candidate",
        "http://127.0.0.1:9",
        "--prompts",
        str(bad),
        "--policies",
        str(policies),
        cwd=tmp_path,
    )
    assert code == 2
    lines = stderr.strip().splitlines()
    assert lines == [
        f"gateway gate: {bad}:2:12: not JSON: Expecting value",
        f"gateway gate: {bad}:3: each line must be a JSON object",
        f"gateway gate: {bad}:5: id 'x' is already on line 4",
        f"gateway gate: {bad}:6: messages must be a non-empty list of objects with a role",
        f"gateway gate: {bad}:7: unknown field(s) colour "
        "(allowed: id, messages, model, prompt, query, sources)",
    ]
    limits = tmp_path / "limits.yaml"
    limits.write_text("defaults:\n  max_rat: 0.1\n")
    prompts = write_prompts(tmp_path / "ok.jsonl", 2)
    code, _, stderr = await gate(
        "--candidate",
        "http://127.0.0.1:9",
        "--prompts",
        str(prompts),
        "--policies",
        str(policies),
        "--thresholds",
        str(limits),
        cwd=tmp_path,
    )
    assert code == 2
    assert f"{limits}:2:3: unknown-field: defaults.max_rat (did you mean max_rate?)" in stderr


def test_intervals_match_the_published_examples():
    from gateway.stats import difference, wilson

    # Newcombe (1998), table II, example (a): 56/70 against 48/80
    d = difference(wilson(56, 70), wilson(48, 80))
    assert (round(d.low, 4), round(d.high, 4)) == (0.0524, 0.3339)
    # no hits: the interval starts at exactly 0 and is not degenerate
    none = wilson(0, 200)
    assert none.low == 0.0 and 0.018 < none.high < 0.019
    assert wilson(0, 0).to_json()["high"] == 1.0


async def test_an_anthropic_upstream_is_asked_in_its_own_protocol(
    aiohttp_server, policies, tmp_path
):
    candidate = FakeUpstream()
    candidate.script.text = CLEAN
    server = await aiohttp_server(candidate.app)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps(
            {
                "id": "a",
                "messages": [
                    {"role": "system", "content": "Be terse."},
                    {"role": "user", "content": "Hello"},
                ],
            }
        )
        + "\n"
    )
    code, stdout, stderr = await gate(
        "--candidate",
        str(server.make_url("")),
        "--protocol",
        "anthropic",
        "--prompts",
        str(prompts),
        "--policies",
        str(policies),
        "--out",
        "a",
        cwd=tmp_path,
    )
    assert code == 0, stderr
    [request] = candidate.requests
    assert request["path"] == "/v1/messages"
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert request["body"]["system"] == "Be terse."
    assert request["body"]["messages"] == [{"role": "user", "content": "Hello"}]
    assert request["body"]["max_tokens"] == 1024
    assert "1 answers judged, 0 failed" in stdout


async def test_a_baseline_that_does_not_answer_cannot_wave_a_candidate_through(
    aiohttp_server, policies, tmp_path
):
    candidate, baseline, c_url, b_url = await upstreams(aiohttp_server, copying_every_tenth)
    baseline.script.fault = "500"
    prompts = write_prompts(tmp_path / "prompts.jsonl", 40)
    code, stdout, _ = await gate(
        "--candidate",
        c_url,
        "--baseline",
        b_url,
        "--prompts",
        str(prompts),
        "--policies",
        str(policies),
        "--retries",
        "0",
        "--out",
        "b",
        cwd=tmp_path,
    )
    assert code == 2
    assert "Not judged: the baseline failed to answer" in stdout
    assert json.loads((tmp_path / "b" / "report.json").read_text())["unanswered"] == ["baseline"]


async def test_a_line_cut_short_by_a_crash_is_asked_again(aiohttp_server, policies, tmp_path):
    candidate, _, c_url, _ = await upstreams(aiohttp_server, lambda body: CLEAN)
    prompts = write_prompts(tmp_path / "prompts.jsonl", 5)
    args = [
        "--candidate",
        c_url,
        "--prompts",
        str(prompts),
        "--policies",
        str(policies),
        "--out",
        "cut",
    ]
    code, _, stderr = await gate(*args, cwd=tmp_path)
    assert code == 0, stderr
    results = tmp_path / "cut" / "results.jsonl"
    lines = results.read_text().splitlines()
    # the process died while writing the last result: half a line, no newline
    results.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    code, stdout, stderr = await gate(*args, "--resume", cwd=tmp_path)
    assert code == 0, stderr
    assert len(candidate.requests) == 6  # the cut prompt only, asked again
    assert "5 answers judged, 0 failed" in stdout
    assert all(json.loads(line) for line in results.read_text().splitlines())
