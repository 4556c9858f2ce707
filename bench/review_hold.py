"""Benchmark the review queue; prints one JSON object.

1. What holding a response adds. The same answer goes through the real
   gateway (real loopback HTTP, a fake upstream in-process) under two
   policies that differ only in their action: ``block`` (answered at once)
   and ``review`` (stored in SQLite with WAL and synchronous=FULL, fsync'd,
   before the answer). The difference of the medians is what holding adds;
   the store commit alone is reported too.
2. The queue page with 10,000 items: server time per request (query, counts,
   approval rates, template) measured by the client over loopback, the
   template alone (Server-Timing), and the full page load in headless
   Chromium (navigation timing ``loadEventEnd``).

Usage: .venv/bin/python bench/review_hold.py [--requests 300] [--items 10000]
       [--dir /path/on/the/disk/to/measure] [--no-browser]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.app import create_admin_app, create_app  # noqa: E402
from gateway.config import Route, Settings, Store  # noqa: E402
from gateway.proxy.state import GATEWAY  # noqa: E402
from gateway.review.store import INSERT_SQL, new_id, row_values  # noqa: E402
from tests.fakes import FakeUpstream  # noqa: E402

TOKEN = "bench-reviewer-token"
POLICIES = """\
policies:
  - id: hold
    kind: phrases
    phrases: ["hold this"]
    action: review
    severity: high
  - id: stop
    kind: phrases
    phrases: ["stop this"]
    action: block
    severity: high
"""
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)], 3)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 3),
        "p90": pct(values, 0.9),
        "p99": pct(values, 0.99),
        "n": len(values),
    }


async def serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def filesystem_of(path: Path) -> str:
    best = ("", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if str(path).startswith(mount) and len(mount) > len(best[0]):
                best = (mount, fstype)
    except OSError:
        pass
    return best[1]


def fake_item(i: int, now: float) -> dict:
    sev = ("low", "medium", "high", "critical")[i % 4]
    text = f"Answer {i}: hold this <b>please</b> " + "lorem ipsum " * 20
    return {
        "id": new_id(),
        "decision_id": new_id(),
        "created_at": now - i,
        "updated_at": now,
        "state": "pending" if i % 5 else "approved",
        "outcome": None if i % 5 else "approved",
        "route": "default",
        "protocol": "openai-chat",
        "path": "/v1/chat/completions",
        "model": "gpt-test",
        "stream": False,
        "policy": f"policy-{i % 7}",
        "policies": [f"policy-{i % 7}"],
        "severity": sev,
        "severity_rank": i % 4,
        "priority": (i % 4) * 10,
        "sla_deadline": now + (i % 500) * 60 - 3000,
        "expires_at": now + 86400,
        "expire_action": "reject",
        "retain_until": now + 86400 * 30,
        "overdue": False,
        "escalations": 0,
        "assignee": None if i % 3 else "rita",
        "key_id": "key_x",
        "tenant": None,
        "text_stored": True,
        "text_hash": "0" * 64,
        "request": {"method": "POST", "path": "/v1/chat/completions"},
        "response": None,
        "segments": {"0": text},
        "record": {"policies": [], "segment_keys": ["0"]},
        "edited": None,
        "reason": None,
        "decided_by": None if i % 5 else "rita",
        "decided_at": None if i % 5 else now,
        "version": 1,
        "op_token": None,
    }


def sqlite_commit_floor(base: Path, n: int = 100) -> float:
    """p50 ms of a bare one-row commit in WAL + synchronous=FULL here: the disk's fsync cost."""
    import sqlite3

    conn = sqlite3.connect(str(base / "floor.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    times = []
    for i in range(n):
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * 2000))
        conn.execute("COMMIT")
        times.append((time.perf_counter() - started) * 1000)
    conn.close()
    return round(statistics.median(times), 3)


async def bench_hold(base: Path, requests: int) -> dict:
    from gateway.review.store import ReviewStore

    base.mkdir(parents=True, exist_ok=True)
    floor = sqlite_commit_floor(base)
    inserts: list[float] = []
    plain_insert = ReviewStore.insert

    async def timed_insert(self, item, actor="gateway"):
        started = time.perf_counter()
        try:
            return await plain_insert(self, item, actor)
        finally:
            inserts.append((time.perf_counter() - started) * 1000)

    ReviewStore.insert = timed_insert  # type: ignore[method-assign]
    fake = FakeUpstream()
    upstream_port, proxy_port = free_port(), free_port()
    up = await serve(fake.app, upstream_port)
    policies = base / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "main.yaml").write_text(POLICIES)
    settings = Settings(
        routes=[Route(name="default", upstream=f"http://127.0.0.1:{upstream_port}")],
        policies=[str(policies)],
        store=Store(url=f"sqlite:///{base / 'hold.db'}"),
        data_dir=str(base / "data"),
        auth={"tokens": [{"name": "rita", "token": TOKEN}]},
    )
    app = create_app(settings)
    gw = app[GATEWAY]
    proxy = await serve(app, proxy_port)
    url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    times: dict[str, list[float]] = {"block": [], "review": []}
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(requests * 2 + 40):
                kind = "review" if i % 2 else "block"
                verb = "hold" if kind == "review" else "stop"
                fake.script.text = f"Reply {i}: please {verb} this."
                started = time.perf_counter()
                async with session.post(
                    url, json=body, headers={"authorization": "Bearer sk-b"}
                ) as resp:
                    await resp.read()
                    assert resp.headers["x-governance-decision"] == kind, resp.headers
                elapsed = (time.perf_counter() - started) * 1000
                if i >= 40:  # warm-up: connections, caches, first template
                    times[kind].append(elapsed)
        store_ms = gw.metrics.registry.get_sample_value("gateway_review_hold_seconds_sum")
        store_n = gw.metrics.registry.get_sample_value("gateway_review_hold_seconds_count")
        held = (await gw.store.fetchone("SELECT COUNT(*) AS n FROM review_items"))["n"]
        journal = await gw.store.fetchone("PRAGMA journal_mode")
        sync = await gw.store.fetchone("PRAGMA synchronous")
    finally:
        await proxy.cleanup()
        await up.cleanup()
        ReviewStore.insert = plain_insert  # type: ignore[method-assign]
    block, review = summary(times["block"]), summary(times["review"])
    return {
        "load_average_1m": os.getloadavg()[0],
        "bare_sqlite_fsync_commit_p50_ms": floor,
        "hold_store_insert_ms": summary(inserts[20:]),
        "filesystem": filesystem_of(base),
        "sqlite": {
            "journal_mode": list(journal.values())[0],
            "synchronous": {2: "FULL", 3: "EXTRA"}.get(
                list(sync.values())[0], list(sync.values())[0]
            ),
        },
        "held_items_stored": held,
        "end_to_end_ms": {"block": block, "review": review},
        "hold_adds_p50_ms": round(review["p50"] - block["p50"], 3),
        "store_commit_mean_ms": round(store_ms / store_n * 1000, 3) if store_n else None,
    }


async def bench_queue(base: Path, items: int, browser: bool) -> dict:
    policies = base / "policies"
    settings = Settings(
        routes=[Route(name="default", upstream="http://127.0.0.1:9")],
        policies=[str(policies)],
        store=Store(url=f"sqlite:///{base / 'queue.db'}"),
        data_dir=str(base / "data"),
        auth={"tokens": [{"name": "rita", "token": TOKEN}]},
    )
    app = create_app(settings)
    gw = app[GATEWAY]
    admin_port = free_port()
    admin = await serve(create_admin_app(gw), admin_port)
    base_url = f"http://127.0.0.1:{admin_port}"
    out: dict = {"items": items}
    try:
        now = time.time()
        await gw.store.executemany(
            INSERT_SQL, [row_values(fake_item(i, now)) for i in range(items)]
        )
        # unsafe: keep cookies set by an IP address host (127.0.0.1)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            form = await (await session.get(f"{base_url}/review/login")).text()
            csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
            async with session.post(
                f"{base_url}/review/login", data={"csrf": csrf, "token": TOKEN, "next": "/review/"}
            ) as r:
                assert r.status == 200, r.status
            server, template = [], []
            for i in range(40):
                started = time.perf_counter()
                async with session.get(f"{base_url}/review/") as resp:
                    html = await resp.text()
                    assert resp.status == 200
                elapsed = (time.perf_counter() - started) * 1000
                if i >= 5:
                    server.append(elapsed)
                    timing = resp.headers["server-timing"]
                    template.append(float(timing.split("dur=")[1]))
            out["rows_on_page"] = html.count('class="row ')
            counts = re.search(r"<b>(\d+)</b> pending", html)
            out["pending_count_shown"] = int(counts.group(1)) if counts else None
            out["server_ms"] = summary(server)
            out["template_ms"] = summary(template)
            cookies = [
                {"name": c.key, "value": c.value, "url": base_url + "/review/"}
                for c in session.cookie_jar
            ]
        if browser and Path(CHROMIUM).exists():
            from playwright.async_api import async_playwright

            async with async_playwright() as pw:
                b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                ctx = await b.new_context()
                await ctx.add_cookies(cookies)
                page = await ctx.new_page()
                loads, responses, dcls, paints = [], [], [], []
                for i in range(12):
                    await page.goto(f"{base_url}/review/", wait_until="load")
                    nav = await page.evaluate(
                        "() => { const n = performance.getEntriesByType('navigation')[0];"
                        " const p = performance.getEntriesByName('first-contentful-paint')[0];"
                        " return [n.responseEnd - n.startTime, n.loadEventEnd - n.startTime,"
                        " n.domContentLoadedEventEnd - n.startTime, p ? p.startTime : null]; }"
                    )
                    if i >= 2:
                        responses.append(nav[0])
                        loads.append(nav[1])
                        dcls.append(nav[2])
                        if nav[3] is not None:
                            paints.append(nav[3])
                out["browser_response_end_ms"] = summary(responses)
                out["browser_dom_content_loaded_ms"] = summary(dcls)
                if paints:
                    out["browser_first_contentful_paint_ms"] = summary(paints)
                out["browser_load_ms"] = summary(loads)
                await b.close()
        elif browser:
            out["browser_load_ms"] = f"skipped: {CHROMIUM} missing"
    finally:
        await admin.cleanup()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--dir", default=None, help="directory for the SQLite files")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or os.getcwd(), prefix=".bench-review-") as d:
        base = Path(d)
        hold = await bench_hold(base / "hold", args.requests)
        (base / "queue" / "policies").mkdir(parents=True)
        (base / "queue" / "policies" / "main.yaml").write_text(POLICIES)
        queue = await bench_queue(base / "queue", args.items, not args.no_browser)
    print(
        json.dumps(
            {
                "hold": hold,
                "queue_page": queue,
                "targets": {"hold_adds_p50_ms": 5, "queue_page_ms": 200},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
