"""What hostile clients, hostile upstreams and crashes cost the gateway, measured.

Each scenario runs the gateway as its own process (``gateway serve``) in a
fresh folder, with the misbehaving upstream of the tests (tests/hostile.py)
in this process. Prints one JSON document:

- ``sse_flood`` / ``body_flood``: 100 MiB of one SSE event that never ends,
  or of one JSON body: the status, the seconds to it, how much the upstream
  got to send before the gateway hung up, and the gateway's peak RSS growth
  against the cap;
- ``idle_and_slowloris``: 500 idle and 500 slowloris connections: how many
  were answered 408, the seconds until the last was closed, normal requests
  served meanwhile and their latency, RSS growth;
- ``reload_recovery``: seconds from a valid policy edit, made while a file
  with a control character is being refused, to the new policies in force
  (default ``reload_interval``);
- ``sigkill``: SIGKILLs at random points under load: answers that started,
  how many have no decision record after restart, breaches counted on
  incidents.

    python bench/hardening.py                     # everything (about two minutes)
    python bench/hardening.py --only sigkill --kills 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import ADMIN_TOKEN, POLICIES, leak_policy_with_rule, write_policies  # noqa: E402
from tests.gateway_process import GatewayProcess, free_port, start_gateway, write_config  # noqa: E402
from tests.hostile import HostileUpstream  # noqa: E402

MiB = 1024 * 1024
CHAT = "/v1/chat/completions"
TOKENS = f"- {{name: ops, token: {ADMIN_TOKEN}, roles: [admin]}}\n"


def body(stream: bool = False) -> dict:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


async def launch(upstream: str, policies: str = POLICIES, **config) -> tuple[GatewayProcess, Path]:
    folder = Path(tempfile.mkdtemp(prefix="gw-hardening-"))
    write_policies(folder / "policies", policies)
    proxy_port, admin_port = free_port(), free_port()
    path = write_config(folder, upstream, proxy_port, admin_port, tokens=TOKENS, **config)
    return await start_gateway(path, admin_port, proxy_port), folder


def reset_peak(gw: GatewayProcess) -> int:
    Path(f"/proc/{gw.pid}/clear_refs").write_text("5")
    return gw.rss()[0]


async def flood(mode: str, stream: bool, cap_key: str, cap: int) -> dict:
    async with HostileUpstream() as up:
        gw, _ = await launch(up.url, extra=f"limits: {{{cap_key}: {cap}}}\n")
        try:
            before = reset_peak(gw)
            started = time.perf_counter()
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    gw.proxy + CHAT, json=body(stream), headers={"x-hostile": mode}
                ) as resp:
                    status, code = resp.status, (await resp.json())["error"]["code"]
            seconds = time.perf_counter() - started
            peak = gw.rss()[1]
        finally:
            await gw.stop()
    return {
        "status": status,
        "code": code,
        "seconds": round(seconds, 3),
        "upstream_sent_mib": round(up.sent.get(mode, 0) / MiB, 1),
        "upstream_hung_up": up.hung_up.get(mode),
        "cap_mib": cap / MiB,
        "rss_before_mib": round(before / MiB, 1),
        "rss_growth_mib": round((peak - before) / MiB, 1),
    }


async def idle_and_slowloris(each: int = 500, header_timeout: float = 2.0) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    async with HostileUpstream() as up:
        gw, _ = await launch(
            up.url, extra=f"limits: {{header_timeout: {header_timeout}, max_connections: 4096}}\n"
        )
        host, port = "127.0.0.1", int(gw.proxy.rsplit(":", 1)[1])
        stop = asyncio.Event()
        closed_at: list[float] = []
        answers: list[bytes] = []
        t0 = time.perf_counter()

        async def hold(slow: bool) -> None:
            reader, writer = await asyncio.open_connection(host, port)
            if slow:
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            out = b""
            n = 0
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), 0.5)
                except TimeoutError:
                    if slow and not stop.is_set():
                        writer.write(f"X-Slow-{n}: y\r\n".encode())
                        n += 1
                    continue
                if not chunk:
                    break
                out += chunk
            closed_at.append(time.perf_counter() - t0)
            answers.append(out)
            writer.close()

        try:
            before = reset_peak(gw)
            clients = [asyncio.create_task(hold(i % 2 == 1)) for i in range(2 * each)]
            latencies = []
            async with aiohttp.ClientSession() as session:
                while not all(c.done() for c in clients):
                    started = time.perf_counter()
                    async with session.post(gw.proxy + CHAT, json=body()) as resp:
                        await resp.read()
                        assert resp.status == 200
                    latencies.append((time.perf_counter() - started) * 1000)
                    await asyncio.sleep(0.02)
            stop.set()
            peak = gw.rss()[1]
        finally:
            await gw.stop()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    latencies.sort()
    return {
        "connections": 2 * each,
        "header_timeout_s": header_timeout,
        "answered_408": sum(a.startswith(b"HTTP/1.1 408") for a in answers),
        "last_closed_after_s": round(max(closed_at), 2),
        "normal_requests_served": len(latencies),
        "normal_p50_ms": round(statistics.median(latencies), 2),
        "normal_max_ms": round(latencies[-1], 2),
        "rss_growth_mib": round((peak - before) / MiB, 1),
    }


async def reload_recovery(rounds: int = 10) -> dict:
    bell = POLICIES.replace("launch codes", "launch\x07codes")
    async with HostileUpstream() as up:
        gw, folder = await launch(up.url)
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        waits, positioned = [], True
        try:
            async with aiohttp.ClientSession() as session:

                async def state() -> dict:
                    url = gw.admin + "/governance/v1/policies"
                    async with session.get(url, headers=auth) as resp:
                        return await resp.json()

                target = folder / "policies" / "main.yaml"
                for i in range(rounds):
                    target.write_text(bell)
                    while not (now := await state())["last_reload_errors"]:
                        await asyncio.sleep(0.01)
                    positioned &= all(
                        e.startswith(f"{target}:4:") for e in now["last_reload_errors"]
                    )
                    started = time.perf_counter()
                    target.write_text(POLICIES.replace("launch codes", f"code {i}"))
                    while (await state())["revision"] == now["revision"]:
                        await asyncio.sleep(0.01)
                    waits.append(time.perf_counter() - started)
        finally:
            await gw.stop()
    return {
        "rounds": rounds,
        "errors_positioned": positioned,
        "seconds_to_in_force_median": round(statistics.median(waits), 3),
        "seconds_to_in_force_max": round(max(waits), 3),
    }


async def sigkill(kills: int = 20, workers: int = 8) -> dict:
    from tests.fakes import FakeUpstream  # the well-behaved upstream of the tests

    fake = FakeUpstream()
    fake.script.text = "Sure. The launch codes are 0000, as everyone knows by now."
    runner = aiohttp.web.AppRunner(fake.app)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    folder = Path(tempfile.mkdtemp(prefix="gw-hardening-"))
    write_policies(folder / "policies", leak_policy_with_rule())
    proxy_port, admin_port = free_port(), free_port()
    config = write_config(folder, f"http://127.0.0.1:{port}", proxy_port, admin_port)
    started: list[str] = []
    rng = random.Random(7)

    async def load(proxy: str, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    async with session.post(proxy + CHAT, json=body(rng.random() < 0.5)) as resp:
                        started.append(resp.headers["x-governance-decision-id"])
                        await resp.read()
                except (aiohttp.ClientError, TimeoutError):
                    return

    for _ in range(kills):
        gw = await start_gateway(config, admin_port, proxy_port)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(load(gw.proxy, stop)) for _ in range(workers)]
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        await gw.kill()
        stop.set()
        await asyncio.gather(*tasks)
    gw = await start_gateway(config, admin_port, proxy_port)
    await gw.stop()
    await runner.cleanup()
    with sqlite3.connect(folder / "gateway.db") as conn:
        ids = {row[0] for row in conn.execute("SELECT id FROM decisions")}
        (breaches,) = conn.execute(
            "SELECT COALESCE(SUM(breach_count), 0) FROM incidents WHERE rule_id = 'leaks'"
        ).fetchone()
        (interrupted,) = conn.execute(
            "SELECT COUNT(*) FROM decisions WHERE record LIKE '%\"interrupted\"%'"
        ).fetchone()
    return {
        "kills": kills,
        "answers_started": len(started),
        "started_without_record": len(set(started) - ids),
        "records_rebuilt_as_interrupted": interrupted,
        "breaches_counted_on_incidents": breaches,
    }


SCENARIOS = {
    "sse_flood": lambda a: flood("huge-event", True, "max_upstream_event_bytes", 4 * MiB),
    "body_flood": lambda a: flood("huge-body", False, "max_upstream_body_bytes", 8 * MiB),
    "idle_and_slowloris": lambda a: idle_and_slowloris(),
    "reload_recovery": lambda a: reload_recovery(),
    "sigkill": lambda a: sigkill(a.kills),
}


async def main(args: argparse.Namespace) -> None:
    out: dict = {"benchmark": "hardening"}
    for name, run in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        out[name] = await run(args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS))
    parser.add_argument("--kills", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
