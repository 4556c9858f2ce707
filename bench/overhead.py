"""Gateway-added latency against a direct call to the same upstream, in one run.

Three processes on loopback: a fast upstream (no model, a fixed ~2,000
character answer), the gateway in front of it, and this client. Requests to
the upstream directly and through the gateway are interleaved, so both see
the same machine noise. Prints JSON: per scenario, per round p50/p99 of
direct and gateway times, the added p50/p99 and the ratio, and the medians
over rounds.

    python bench/overhead.py                      # phrases policies (policies/main.yaml)
    python bench/overhead.py --policies policies/bias.yaml --label bias
    python bench/overhead.py --rounds 5 --requests 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]

UPSTREAM = r"""
import asyncio, json, sys, time
from aiohttp import web

# answers ({"text", "sources"}) served in turn, so with many no cache sees a repeat
ANSWERS = json.load(open(sys.argv[2]))
SERVED = [0]
CHUNK = 4

def next_answer():
    SERVED[0] += 1
    answer = ANSWERS[SERVED[0] % len(ANSWERS)]
    return answer["text"], answer["sources"]

async def chat(request):
    body = await request.json()
    TEXT, SOURCES = next_answer()
    base = {"id": "chatcmpl-bench", "created": int(time.time()), "model": "bench",
            "system_fingerprint": "fp_bench"}
    if not body.get("stream"):
        return web.json_response({**base, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": TEXT},
             "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 500, "total_tokens": 510},
            **({"sources": SOURCES} if SOURCES else {})})
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    chunk = {**base, "object": "chat.completion.chunk"}
    def ev(delta, finish=None):
        return ("data: " + json.dumps({**chunk, "choices": [{"index": 0, "delta": delta,
                "logprobs": None, "finish_reason": finish}]}) + "\n\n").encode()
    first = ev({"role": "assistant", "content": ""})
    if SOURCES:
        first = ("data: " + json.dumps({**chunk, "choices": [], "sources": SOURCES})
                 + "\n\n").encode() + first
    await resp.write(first)
    for i in range(0, len(TEXT), CHUNK):
        await resp.write(ev({"content": TEXT[i:i + CHUNK]}))
    await resp.write(ev({}, "stop"))
    await resp.write(b"data: [DONE]\n\n")
    return resp

app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

# about 2,000 characters of ordinary prose that trips none of the shipped policies
PARAGRAPH = (
    "Tomatoes grow best in full sun with at least six hours of light a day. Water them "
    "deeply twice a week, mulch to keep the soil moist, and stake the plants early so the "
    "stems do not snap once the fruit sets. Pinch out the side shoots on cordon varieties, "
    "feed with a high potash fertiliser once the first truss has set, and pick the fruit as "
    "soon as it colours. "
)
TEXT = (PARAGRAPH * 6)[:2000]
QUESTION = "How do I grow tomatoes?"


# a grounded RAG answer whose every sentence differs from request to request
GARDEN = [
    "Tomatoes grow best in full sun with at least {} hours of light a day and soil above {} "
    "degrees.",
    "Water them deeply {} times a week with about {} litres per plant, and mulch {} "
    "centimetres deep to keep the soil moist.",
    "Stake the plants when they are {} centimetres tall so the stems do not snap once the "
    "fruit sets.",
    "Pinch out the side shoots on cordon varieties every {} days and stop the plant after {} "
    "trusses.",
    "Feed with a high potash fertiliser every {} days once the first truss has set.",
    "Pick the fruit as soon as it colours, about {} days after the flowers open.",
]


def garden_text(rng, chars: int) -> str:
    parts: list[str] = []
    while sum(len(p) + 1 for p in parts) < chars:
        template = GARDEN[len(parts) % len(GARDEN)]
        parts.append(template.format(*(rng.randint(2, 99) for _ in range(template.count("{}")))))
    return " ".join(parts)


# neutral sentences that name a protected group, so the bias classifier runs
GROUP_SENTENCE = "{} in our allotment society planted {} tomato plants in {} beds this year."
GROUPS = ["Retired women", "Immigrants", "Teenagers", "Muslim families", "Disabled members"]


def grounded_answers(n: int, group_sentences: int = 0) -> list[dict]:
    """``n`` different ~2,000-character answers, each with its own three cited sources.

    With ``group_sentences``, that many sentences of each answer name a
    protected group (neutrally); the first source holds them too.
    """
    import random

    rng = random.Random(5)
    out = []
    for _ in range(n):
        named = [
            GROUP_SENTENCE.format(rng.choice(GROUPS), rng.randint(2, 999), rng.randint(2, 99))
            for _ in range(group_sentences)
        ]
        body = garden_text(rng, 2000 - sum(len(g) + 1 for g in named))
        sources = [
            {
                "id": f"kb-{i}",
                "version": "1",
                "updated_at": "2099-01-01T00:00:00Z",
                # every template once: each answer sentence has its source
                "text": garden_text(rng, 580),
            }
            for i in range(3)
        ]
        sources[0]["text"] = " ".join([*named, sources[0]["text"]])
        out.append({"text": " ".join([*named, body])[:2100], "sources": sources})
    return out


def varied_answers(n: int) -> list[str]:
    """``n`` different ~2,000-character answers of real news sentences (MSRP)."""
    import random

    path = ROOT.parent / "shared" / "data" / "paraphrase" / "msr_paraphrase_test.txt"
    with open(path, encoding="utf-8-sig") as fh:
        rows = [line.rstrip("\n").split("\t") for line in fh][1:]
    sentences = [r[3] for r in rows if len(r) == 5] + [r[4] for r in rows if len(r) == 5]
    rng = random.Random(11)
    out = []
    for _ in range(n):
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < 2000:
            parts.append(rng.choice(sentences))
        out.append(" ".join(parts)[:2100])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_up(session: aiohttp.ClientSession, url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def questions(varied: bool):
    """The client's questions: one, or (varied) a different one almost every time."""
    import random

    rng = random.Random(9)
    while True:
        litres = rng.randint(2, 999)
        yield f"How do I grow tomatoes in a {litres}-litre pot?" if varied else QUESTION


async def one_whole(session, url, question: str) -> float:
    body = {"model": "bench", "messages": [{"role": "user", "content": question}]}
    started = time.perf_counter()
    async with session.post(url, json=body) as resp:
        data = await resp.read()
    elapsed = time.perf_counter() - started
    if resp.status != 200 or len(data) < 2000:
        raise SystemExit(f"bad answer {resp.status}: {data[:200]!r}")
    return elapsed


async def one_stream(session, url, question: str) -> tuple[float, float, float]:
    """Time to first text, time from the last text to the end, and the total."""
    body = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": question}]}
    started = time.perf_counter()
    first = last = None
    async with session.post(url, json=body) as resp:
        async for line in resp.content:
            if (
                line.startswith(b"data: {")
                and b'"content":"' in line.replace(b" ", b"")
                and b'"content":""' not in line.replace(b" ", b"")
            ):
                now = time.perf_counter()
                first = first or now
                last = now
        end = time.perf_counter()
    if first is None:
        raise SystemExit("stream carried no text")
    return first - started, end - last, end - started


def summarise(direct: list[float], gateway: list[float]) -> dict:
    out = {
        "direct_p50_ms": pct(direct, 0.5) * 1000,
        "direct_p99_ms": pct(direct, 0.99) * 1000,
        "gateway_p50_ms": pct(gateway, 0.5) * 1000,
        "gateway_p99_ms": pct(gateway, 0.99) * 1000,
    }
    out["added_p50_ms"] = out["gateway_p50_ms"] - out["direct_p50_ms"]
    out["added_p99_ms"] = out["gateway_p99_ms"] - out["direct_p99_ms"]
    out["ratio_p50"] = out["gateway_p50_ms"] / out["direct_p50_ms"]
    return {k: round(v, 3) for k, v in out.items()}


async def measure(args, direct_url: str, gateway_url: str) -> dict:
    rounds = []
    ask = questions(args.varied)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(args.warmup):
            await one_whole(session, gateway_url, next(ask))
            await one_stream(session, gateway_url, next(ask))
        for _ in range(args.rounds):
            whole_d, whole_g = [], []
            ttft_d, ttft_g, tail_d, tail_g, total_d, total_g = [], [], [], [], [], []
            for _ in range(args.requests):
                whole_d.append(await one_whole(session, direct_url, next(ask)))
                whole_g.append(await one_whole(session, gateway_url, next(ask)))
            for _ in range(max(args.requests // 3, 10)):
                f, t, a = await one_stream(session, direct_url, next(ask))
                ttft_d.append(f)
                tail_d.append(t)
                total_d.append(a)
                f, t, a = await one_stream(session, gateway_url, next(ask))
                ttft_g.append(f)
                tail_g.append(t)
                total_g.append(a)
            rounds.append(
                {
                    "non_stream": summarise(whole_d, whole_g),
                    "stream_ttft": summarise(ttft_d, ttft_g),
                    "stream_tail": summarise(tail_d, tail_g),
                    "stream_total": summarise(total_d, total_g),
                }
            )
    medians = {
        section: {
            key: round(statistics.median(r[section][key] for r in rounds), 3)
            for key in rounds[0][section]
        }
        for section in rounds[0]
    }
    return {"rounds": rounds, "median_over_rounds": medians}


async def own_time(admin_port: int, token_file: Path) -> dict:
    """The gateway's own processing time per request, from its decision records.

    It separates what the gateway computes from the cost of the extra network
    hop, which any proxy pays.
    """
    headers = {"authorization": f"Bearer {token_file.read_text().strip()}"}
    url = f"http://127.0.0.1:{admin_port}/governance/v1/decisions?limit=1000"
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        records = (await resp.json())["decisions"]
    out = {}
    for stream in (False, True):
        values = [r["added_latency_ms"] for r in records if r["stream"] is stream]
        if values:
            out["stream" if stream else "non_stream"] = {
                "records": len(values),
                "p50_ms": round(pct(values, 0.5), 3),
                "p99_ms": round(pct(values, 0.99), 3),
            }
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policies",
        action="append",
        help="policy files for the gateway (default policies/main.yaml)",
    )
    parser.add_argument("--label", default="phrases")
    parser.add_argument(
        "--route", default="default", help="route name (RAG policies apply to the route named rag)"
    )
    parser.add_argument(
        "--sources",
        action="store_true",
        help="the upstream cites RAG sources (fresh, relevant ones)",
    )
    parser.add_argument(
        "--incident-rules", action="store_true", help="add an incident rule for every policy"
    )
    parser.add_argument(
        "--varied",
        action="store_true",
        help=(
            "every answer (and question) differs, so no cache sees a repeat: MSRP news "
            "sentences, or with --sources a grounded answer with its own sources"
        ),
    )
    parser.add_argument(
        "--group-sentences",
        type=int,
        default=0,
        help="with --varied --sources: sentences per answer that name a protected group",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    policies = [
        str(Path(p).resolve()) for p in (args.policies or [ROOT / "policies" / "main.yaml"])
    ]
    up_port, gw_port, admin_port = free_port(), free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    if args.incident_rules:
        rules = tmp / "incident_rules.yaml"
        rules.write_text("policies: []\nincident_rules:\n  - {id: every-breach, source: policy}\n")
        policies.append(str(rules))
    sources = []
    if args.sources:
        sources = [
            {
                "id": f"kb-{i}",
                "version": "1",
                "updated_at": "2099-01-01T00:00:00Z",
                "text": PARAGRAPH,
            }
            for i in range(3)
        ]
    config = {
        "listeners": {"proxy": {"port": gw_port}, "admin": {"port": admin_port}},
        "routes": [{"name": args.route, "upstream": f"http://127.0.0.1:{up_port}"}],
        "policies": policies,
        "store": {"url": f"sqlite:///{tmp / 'bench.db'}"},
        "indexes": {"sample": str(ROOT / "indexes" / "sample")},
    }
    (tmp / "gateway.yaml").write_text(json.dumps(config))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    answers = [{"text": TEXT, "sources": sources}]
    # one answer per request of the whole run, so none is served twice
    served = 2 * args.warmup + args.rounds * 2 * (args.requests + max(args.requests // 3, 10))
    if args.varied and args.sources:
        answers = grounded_answers(served, args.group_sentences)
    elif args.varied:
        answers = [{"text": t, "sources": []} for t in varied_answers(served)]
    (tmp / "answers.json").write_text(json.dumps(answers))
    upstream = [sys.executable, "-c", UPSTREAM, str(up_port), str(tmp / "answers.json")]
    procs = [subprocess.Popen(upstream, env=env)]
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(tmp / "gateway.yaml")]
    procs.append(subprocess.Popen(cmd, cwd=tmp, env=env, stderr=subprocess.DEVNULL))
    try:
        async with aiohttp.ClientSession() as session:
            # ready, not just up: the policies' models load in the background
            await wait_up(session, f"http://127.0.0.1:{admin_port}/readyz")
        result = await measure(
            args,
            f"http://127.0.0.1:{up_port}/v1/chat/completions",
            f"http://127.0.0.1:{gw_port}/v1/chat/completions",
        )
        result["gateway_own_time"] = await own_time(admin_port, tmp / ".gateway" / "admin-token")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(
        json.dumps(
            {
                "benchmark": "overhead",
                "label": args.label,
                "route": args.route,
                "upstream_cites_sources": bool(sources),
                "incident_rules": args.incident_rules,
                "policies": policies,
                "response_chars": len(TEXT),
                "varied_answers": args.varied,
                "group_sentences_per_answer": args.group_sentences,
                "stream_chunk_chars": 4,
                "concurrency": 1,
                "rounds": args.rounds,
                "requests_per_round": args.requests,
                **result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
