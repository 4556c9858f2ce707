"""A soak of two gateway instances on one PostgreSQL and one Redis, with restarts of both.

Two instances, each ``gateway serve --workers 2``, share the local
PostgreSQL (a schema of their own) and Redis. A paced load of chat requests
(a third streamed) goes to them in turn, as a load balancer would send it;
the upstream answers about 12% of them with text a ``block`` policy stops
and 8% with text a ``review`` policy holds, so about 20% breach. An incident
rule watches the block policy and delivers its events to a webhook sink.
Midway PostgreSQL is restarted, later Redis.

First a short ramp finds the highest rate the instances sustain here; the
soak then runs at ``--load`` of it. Both sides are counted: the client notes
every answer (status, decision id, review id); after a clean stop the store
is read back. Prints one JSON document:

- ``client``: requests sent, answered, by status and error code;
- ``lost``: decision records of answered requests missing from the store,
  review ids a client was given with no item, block answers not counted on
  the incident, outbox events not delivered or delivered twice;
- ``memory``: each worker's resident set after warm-up and at the end;
- ``rate``: the ramp and the rate held.

    python bench/soak.py                          # 5 minutes at 70% of the highest rate
    python bench/soak.py --seconds 60 --load 0.5  # a shorter look

Needs PostgreSQL on 127.0.0.1:5432 (database ``test``) and Redis on
127.0.0.1:6379, both restartable from here (``pg_ctlcluster``, ``redis-server``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.gateway_process import free_port  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
TOKEN = "soak-admin-token"
SINK_SECRET = "soak-sink-secret"
CHAT = "/v1/chat/completions"

POLICIES = """\
policies:
  - id: no-codes
    kind: phrases
    phrases: ["launch codes"]
    action: block
    severity: high
  - id: hold-sauce
    kind: phrases
    phrases: ["secret sauce"]
    action: review
    severity: medium
incident_rules:
  # one incident per model (the load uses 40), raised once it gets busy: about 80
  # events for the outbox to deliver
  - id: codes
    source: policy
    policies: [no-codes]
    dedup_key: [policy, model]
    escalate:
      - {count: 20, window: 60, severity: SEV1}
"""

# the upstream and the sink, in a process of their own; the reply's text follows
# a word in the question, so the client knows what each answer should do
UPSTREAM = r"""
import asyncio, json, sys, time
from collections import Counter
from aiohttp import web

TEXTS = {
    "block": "Here you are. The launch codes are 0000, as everyone knows by now. " * 3,
    "review": "Our recipe uses the secret sauce from grandma, mixed well and served. " * 3,
    "clean": "A calm and helpful answer about gardens, weather and the sea. " * 3,
}
deliveries = Counter()

def completion(text):
    return {"id": "chatcmpl-soak", "object": "chat.completion", "created": int(time.time()),
            "model": "soak", "choices": [{"index": 0, "message": {"role": "assistant",
            "content": text}, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45}}

async def chat(request):
    body = await request.json()
    kind = body["messages"][-1]["content"].split()[-1]
    text = TEXTS.get(kind, TEXTS["clean"])
    if not body.get("stream"):
        return web.json_response(completion(text))
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    words = text.split(" ")
    try:
        for i in range(0, len(words), 6):
            piece = " ".join(words[i:i + 6]) + " "
            chunk = {"id": "chatcmpl-soak", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": "soak",
                     "choices": [{"index": 0, "delta": {"content": piece},
                                  "finish_reason": None}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        end = {"id": "chatcmpl-soak", "object": "chat.completion.chunk",
               "created": int(time.time()), "model": "soak",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await resp.write(b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n")
    except ConnectionError:
        pass  # the gateway cut a breaching stream: it stops reading
    return resp

async def sink(request):
    deliveries[request.headers["x-gateway-delivery"]] += 1
    return web.json_response({"ok": True})

async def stats(request):
    return web.json_response(dict(deliveries))

app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
app.router.add_post("/sink", sink)
app.router.add_get("/sink/stats", stats)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def config(home: Path, upstream: str, proxy: int, admin: int, store: str, workers: int) -> Path:
    path = home / "gateway.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            listeners:
              proxy: {{host: 127.0.0.1, port: {proxy}}}
              admin: {{host: 127.0.0.1, port: {admin}}}
              workers: {workers}
            routes:
              - name: default
                upstream: {upstream}
            policies: [policies]
            store: {{url: "{store}"}}
            state: {{redis: "{REDIS}"}}
            data_dir: {home / "data"}
            log_level: warning
            auth:
              tokens:
                - {{name: ops, token: {TOKEN}, roles: [admin]}}
            incidents:
              sinks:
                - {{name: hook, type: webhook, url: "{upstream}/sink", secret_env: SOAK_SINK}}
            """)
    )
    (home / "policies").mkdir(exist_ok=True)
    (home / "policies" / "main.yaml").write_text(POLICIES)
    return path


class Instance:
    def __init__(self, home: Path, upstream: str, store: str, workers: int) -> None:
        self.home = home
        self.proxy_port, self.admin_port = free_port(), free_port()
        self.config = config(home, upstream, self.proxy_port, self.admin_port, store, workers)
        self.proc: subprocess.Popen | None = None

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "SOAK_SINK": SINK_SECRET}
        env.pop("GATEWAY_STORE_URL", None)
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/gateway"), "serve", "--config", str(self.config)],
            cwd=self.home,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(self.home / "gateway.log").open("ab"),
        )

    def workers(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


async def wait_ready(session: aiohttp.ClientSession, inst: Instance, seconds: float = 180) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            async with session.get(f"{inst.admin}/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit(
        f"instance {inst.home.name} not ready: {(inst.home / 'gateway.log').read_text()[-2000:]}"
    )


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.status: Counter[int] = Counter()
        self.codes: Counter[tuple[int, str]] = Counter()
        self.decisions: set[str] = set()
        self.reviews: set[str] = set()
        self.blocks = 0
        self.failures: Counter[str] = Counter()


def question(rng: random.Random) -> tuple[dict, str]:
    roll = rng.random()
    kind = "block" if roll < 0.12 else "review" if roll < 0.20 else "clean"
    body = {
        "model": f"gpt-soak-{rng.randrange(40)}",
        "messages": [{"role": "user", "content": f"tell me about {kind}"}],
        "stream": rng.random() < 1 / 3,
    }
    return body, kind


async def one(session: aiohttp.ClientSession, url: str, body: dict, tally: Tally) -> None:
    tally.sent += 1
    try:
        async with session.post(url + CHAT, json=body) as resp:
            raw = await resp.read()
            tally.status[resp.status] += 1
            decision = resp.headers.get("x-governance-decision-id")
            if resp.status >= 400:
                code = resp.headers.get("x-governance-error-code")
                if code is None:
                    try:
                        code = json.loads(raw)["error"]["code"]
                    except (ValueError, KeyError, TypeError):
                        code = f"http-{resp.status}"
                tally.codes[(resp.status, code)] += 1
            if decision and resp.status < 500:
                tally.decisions.add(decision)
            if resp.headers.get("x-governance-review-id"):
                tally.reviews.add(resp.headers["x-governance-review-id"])
            if resp.headers.get("x-governance-decision") == "block":
                tally.blocks += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.failures[type(exc).__name__] += 1


async def paced(
    session: aiohttp.ClientSession,
    targets: list[str],
    rate: float,
    seconds: float,
    tally: Tally,
    rng: random.Random,
    on_tick=None,
) -> float:
    """Send at ``rate`` per second for ``seconds``; the rate actually achieved."""
    start = time.monotonic()
    tasks: set[asyncio.Task] = set()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) - sent
        for _ in range(max(0, min(due, 200))):
            body, _ = question(rng)
            task = asyncio.create_task(one(session, targets[sent % len(targets)], body, tally))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if on_tick is not None:
            await on_tick(elapsed)
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)
    return sent / (time.monotonic() - start)


async def ramp(session, targets, rng, seen: Tally) -> dict:
    """The highest rate answered without backlog: try rising rates for a few seconds each.

    What the ramp's answers leave in the store is noted in ``seen`` too.
    """
    best = 0.0
    tried = []
    for rate in (100, 200, 300, 400, 500, 650, 800, 1000, 1300, 1600, 2000, 2500):
        tally = Tally()
        began = time.monotonic()
        await paced(session, targets, rate, 5.0, tally, rng)
        took = time.monotonic() - began
        answered = sum(tally.status.values())
        achieved = answered / took
        # kept up: nearly every request of the step answered within the step's time
        ok = (
            achieved >= 0.97 * rate
            and took < 5.5
            and not tally.failures
            and all(s < 500 for s in tally.status)
        )
        tried.append(
            {"rate": rate, "achieved": round(achieved, 1), "seconds": round(took, 2), "ok": ok}
        )
        seen.decisions |= tally.decisions
        seen.reviews |= tally.reviews
        seen.blocks += tally.blocks
        if not ok:
            break
        best = rate
    return {"tried": tried, "highest": best}


def restart_postgres() -> None:
    cluster = os.listdir("/etc/postgresql")[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart"], check=True
    )


def restart_redis() -> None:
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"], check=False)
    time.sleep(1.0)
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
    )


async def store_counts(schema: str, tally: Tally) -> dict:
    conn = await asyncpg.connect(PG, server_settings={"search_path": schema})
    try:
        ids = {r["id"] for r in await conn.fetch("SELECT id FROM decisions")}
        reviews = {r["id"] for r in await conn.fetch("SELECT id FROM review_items")}
        breaches = await conn.fetchval(
            "SELECT COALESCE(SUM(breach_count), 0) FROM incidents WHERE rule_id = 'codes'"
        )
        incidents = await conn.fetchval("SELECT COUNT(*) FROM incidents WHERE rule_id = 'codes'")
        outbox_left = await conn.fetchval("SELECT COUNT(*) FROM incident_outbox")
        events = await conn.fetchval("SELECT COUNT(*) FROM incident_events")
    finally:
        await conn.close()
    return {
        "decisions_stored": len(ids),
        "decisions_missing": len(tally.decisions - ids),
        "review_items": len(reviews),
        "review_ids_missing": len(tally.reviews - reviews),
        "incidents": incidents,
        "incident_breaches": breaches,
        "blocks_answered": tally.blocks,
        "blocks_not_counted": max(0, tally.blocks - breaches),
        "blocks_counted_twice": max(0, breaches - tally.blocks),
        "incident_events": events,
        "outbox_left": outbox_left,
    }


async def main(args: argparse.Namespace) -> None:
    schema = f"soak_{uuid.uuid4().hex[:10]}"
    store = f"{PG}?schema={schema}"
    work = Path(tempfile.mkdtemp(prefix="gw-soak-"))
    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port)])
    up_url = f"http://127.0.0.1:{up_port}"
    instances = []
    for name in ("a", "b"):
        home = work / name
        home.mkdir()
        instances.append(Instance(home, up_url, store, args.workers))
    rng = random.Random(7)
    report: dict = {"schema": schema, "workers_per_instance": args.workers}
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=60)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.sleep(1.0)
            instances[0].start()
            await wait_ready(session, instances[0])
            instances[1].start()
            await wait_ready(session, instances[1])
            targets = [i.proxy for i in instances]
            seen = Tally()
            found = await ramp(session, targets, rng, seen)
            rate = max(50.0, found["highest"] * args.load) if args.rate is None else args.rate
            report["rate"] = {**found, "held": rate}
            tally = Tally()
            marks: dict[str, float] = {}
            memory: dict[str, dict[str, int]] = {"warm": {}, "end": {}}

            async def tick(elapsed: float) -> None:
                if "warm" not in marks and elapsed >= args.warmup:
                    marks["warm"] = elapsed
                    for inst in instances:
                        for pid in inst.workers():
                            memory["warm"][f"{inst.home.name}:{pid}"] = rss_kib(pid)
                if "pg" not in marks and elapsed >= args.seconds * 0.35:
                    marks["pg"] = elapsed
                    await asyncio.to_thread(restart_postgres)
                if "redis" not in marks and elapsed >= args.seconds * 0.65:
                    marks["redis"] = elapsed
                    await asyncio.to_thread(restart_redis)

            achieved = await paced(session, targets, rate, args.seconds, tally, rng, tick)
            for inst in instances:
                for pid in inst.workers():
                    memory["end"][f"{inst.home.name}:{pid}"] = rss_kib(pid)
            report["rate"]["achieved"] = round(achieved, 1)
            report["restarts_at_seconds"] = {
                k: round(v, 1) for k, v in marks.items() if k != "warm"
            }
            # a clean stop drains and commits what each instance still holds
            report["exit_codes"] = [await asyncio.to_thread(inst.stop) for inst in instances]
            async with session.get(f"{up_url}/sink/stats") as resp:
                deliveries = await resp.json()
        # the store holds the ramp's answers too: compare against everything answered
        seen.decisions |= tally.decisions
        seen.reviews |= tally.reviews
        seen.blocks += tally.blocks
        counts = await store_counts(schema, seen)
        counts["outbox_delivered_twice"] = sum(1 for n in deliveries.values() if n > 1)
        counts["outbox_deliveries"] = len(deliveries)
        # every incident event goes to the one sink: each must have arrived
        counts["outbox_not_delivered"] = max(0, counts["incident_events"] - len(deliveries))
        growth = {
            key: round(100.0 * (memory["end"][key] - warm) / warm, 1)
            for key, warm in memory["warm"].items()
            if warm and key in memory["end"]
        }
        report["client"] = {
            "sent": tally.sent,
            "answered": sum(tally.status.values()),
            "status": dict(sorted(tally.status.items())),
            "error_codes": {f"{s} {c}": n for (s, c), n in sorted(tally.codes.items())},
            "transport_failures": dict(tally.failures),
        }
        report["store"] = counts
        report["memory_kib"] = memory
        report["memory_growth_percent"] = growth
        report["five_xx_other_than_shedding"] = sum(
            n
            for (status, code), n in tally.codes.items()
            if status >= 500 and code not in SHED_CODES
        )
    finally:
        for inst in instances:
            if inst.proc is not None and inst.proc.poll() is None:
                inst.proc.kill()
        upstream.terminate()
        if not args.keep:
            conn = await asyncpg.connect(PG)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()
    print(json.dumps(report, indent=2))


# documented 503s: shedding under load, a hold the store cannot take while it restarts
SHED_CODES = {"overloaded", "review-unavailable", "limits-unavailable"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--load", type=float, default=0.7, help="share of the highest rate")
    parser.add_argument("--rate", type=float, help="requests per second; skips the ramp")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL schema")
    asyncio.run(main(parser.parse_args()))
