"""What per-key limits add to a request: in memory, through Redis, and with Redis down.

Two measurements, each printed as JSON (microseconds):

- ``admit``: the limiter's check alone, called back to back for one client
  (requests a minute and a stream slot, given back at once);
- ``request``: a non-streamed chat request through the whole gateway, built
  in this process in front of an in-process upstream, sent one at a time
  over loopback; limits off, per process, through Redis, and with Redis
  unreachable (``open`` mode: the breaker skips it, the process counts alone).

    python bench/ratelimit.py                       # Redis at 127.0.0.1:6379
    python bench/ratelimit.py --redis redis://host:6379/0 --requests 5000

Keys are written under a fresh prefix and deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.app import build_gateway, create_app  # noqa: E402
from gateway.config import Route, Settings, Store  # noqa: E402
from gateway.observability.metrics import Metrics  # noqa: E402
from gateway.proxy.ratelimit import KeyLimiter  # noqa: E402

POLICY = "policies:\n  - {id: no-secret, kind: phrases, phrases: [internal use only]}\n"
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-test",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "A short answer."},
            "finish_reason": "stop",
        }
    ],
}
# so the bench never meets the limit it measures
HUGE = 10**9


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": round(statistics.median(ordered) * 1e6, 1),
        "p99_us": round(ordered[int(len(ordered) * 0.99) - 1] * 1e6, 1),
        "mean_us": round(statistics.fmean(ordered) * 1e6, 1),
    }


def settings(tmp: Path, upstream: str, state: dict[str, Any] | None, limited: bool) -> Settings:
    per_key = {"requests_per_minute": HUGE, "concurrent_streams": HUGE} if limited else {}
    return Settings(
        routes=[Route(name="default", upstream=upstream)],
        policies=[str(tmp / "policies")],
        store=Store(url=f"sqlite:///{tmp / f'{uuid.uuid4().hex}.db'}"),
        data_dir=str(tmp / "data" / uuid.uuid4().hex),
        limits={"per_key": per_key},
        state=state or {},
    )


async def bench_admit(tmp: Path, state: dict[str, Any] | None, n: int) -> dict[str, float]:
    limiter = KeyLimiter(settings(tmp, "http://unused", state, True), Metrics())
    route = Route(name="default", upstream="http://unused")
    headers = {"authorization": "Bearer sk-bench-0123456789"}
    await limiter.start()
    samples = []
    try:
        for _ in range(n + 200):
            started = time.perf_counter()
            held = await limiter.admit(route, headers, stream=True)
            samples.append(time.perf_counter() - started)
            await limiter.release(held)
    finally:
        await limiter.stop()
    return summary(samples[200:])


async def bench_requests(
    tmp: Path, upstream: str, state: dict[str, Any] | None, limited: bool, n: int
) -> dict[str, float]:
    app = create_app(build_gateway(settings(tmp, upstream, state, limited)))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": "Bearer sk-bench-0123456789"}
    samples = []
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(n + 200):
                started = time.perf_counter()
                async with http.post(url, json=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                samples.append(time.perf_counter() - started)
    finally:
        await runner.cleanup()
    return summary(samples[200:])


async def upstream_server() -> tuple[web.AppRunner, str]:
    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--down", default="redis://127.0.0.1:1/0", help="a Redis URL that fails")
    parser.add_argument("--checks", type=int, default=20000)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    modes: dict[str, tuple[dict[str, Any] | None, bool]] = {
        "off": (None, False),
        "memory": (None, True),
        "redis": ({"redis": args.redis, "redis_prefix": prefix}, True),
        "redis-down-open": ({"redis": args.down, "redis_prefix": prefix}, True),
    }
    out: dict[str, Any] = {"admit": {}, "request": {}}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "policies").mkdir()
        (tmp / "policies" / "main.yaml").write_text(POLICY)
        for mode, (state, limited) in modes.items():
            if limited:
                out["admit"][mode] = await bench_admit(tmp, state, args.checks)
        runner, upstream = await upstream_server()
        try:
            # two passes, the order reversed in the second, so warm-up favours none
            for order in (list(modes), list(reversed(modes))):
                for mode in order:
                    state, limited = modes[mode]
                    result = await bench_requests(tmp, upstream, state, limited, args.requests)
                    out["request"].setdefault(mode, []).append(result)
        finally:
            await runner.cleanup()
    from redis.asyncio import Redis

    client = Redis.from_url(args.redis)
    async for key in client.scan_iter(match=f"{prefix}:*"):
        await client.delete(key)
    await client.aclose()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
