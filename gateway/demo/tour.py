"""``gateway demo``: the gateway in front of the bundled simulator, and a short tour.

Everything runs in this one process on loopback: the demo upstream (clearly
a simulator, see ``gateway.demo.upstream``), the proxy and admin listeners,
and a client using the official ``openai`` and ``anthropic`` SDKs.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path

from aiohttp import web

from gateway.demo.upstream import DemoUpstream

ROOT = Path(__file__).resolve().parents[2]


def _say(text: str = "") -> None:
    print(text, flush=True)


def _sample_quote() -> str | None:
    """An answer that copies 40 words of the shipped public-domain sample corpus."""
    corpus = ROOT / "indexes" / "sample" / "corpus.jsonl"
    if not corpus.is_file():
        return None
    with corpus.open(encoding="utf-8") as fh:
        doc = json.loads(fh.readline())
    words = doc["text"].split()
    quote = " ".join(words[60:100])
    return f"As a president once told Congress in {doc.get('year', 'an address')}: {quote} ..."


def run_demo(args) -> int:
    return asyncio.run(_demo(args))


def _check_port(port: int, what: str, flag: str) -> None:
    """Say at once that a port is taken, not after the first run's minute of index building.

    The listener's own bind still reports a port taken in between.
    """
    from gateway.server import listen_error

    with socket.socket() as probe:
        # as the listeners bind: a port left in TIME_WAIT by an earlier run is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise listen_error(exc, what, "127.0.0.1", port, flag, flag) from None


async def _demo(args) -> int:
    from gateway.config import quickstart
    from gateway.observability.logs import setup_logging
    from gateway.server import listen_error, serve

    setup_logging("warning")
    _check_port(args.upstream_port, "demo upstream", "--upstream-port")
    _check_port(args.port, "proxy listener", "--port")
    _check_port(args.admin_port, "admin listener", "--admin-port")
    history = _sample_quote()
    if history is not None:
        from gateway.index import ensure_sample, sample_is_current

        if not await asyncio.to_thread(sample_is_current, ROOT / "indexes"):
            _say("Building the sample copyright index (the first run only, about a minute)...")
            await asyncio.to_thread(ensure_sample, ROOT / "indexes", progress=True)
    extra = {"history": history} if history else None
    upstream = web.AppRunner(DemoUpstream(args.pace_ms, extra).app, access_log=None)
    await upstream.setup()
    try:
        await web.TCPSite(upstream, "127.0.0.1", args.upstream_port).start()
    except OSError as exc:
        await upstream.cleanup()
        raise listen_error(
            exc, "demo upstream", "127.0.0.1", args.upstream_port, "--upstream-port", ""
        ) from None
    policies = args.policies or (
        [str(ROOT / "policies")] if (ROOT / "policies").is_dir() else ["policies"]
    )
    settings = quickstart(
        f"http://127.0.0.1:{args.upstream_port}",
        policies,
        port=args.port,
        admin_port=args.admin_port,
    )
    settings = settings.model_copy(update={"data_dir": str(Path(".gateway").resolve())})
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(settings, ready=ready, stop=stop))
    done, _ = await asyncio.wait(
        [server, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    if server in done:
        await upstream.cleanup()
        server.result()  # the reason it stopped, e.g. a port in use
    base = f"http://127.0.0.1:{args.port}"
    _say(f"Demo upstream (a simulator, not a model) on http://127.0.0.1:{args.upstream_port}")
    _say(f"Gateway proxy on {base}/v1, admin on http://127.0.0.1:{args.admin_port}")
    _say()
    try:
        failures = await _tour(base, args.admin_port)
        if args.serve:
            _say("Serving until Ctrl-C. Point OPENAI_BASE_URL at " + base + "/v1")
            await stop.wait()
    finally:
        stop.set()
        await server
        await upstream.cleanup()
    return 1 if failures else 0


async def _tour(base: str, admin_port: int) -> int:
    import anthropic
    import openai

    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="demo-key", max_retries=0)
    failures = 0

    def check(ok: bool, what: str) -> None:
        nonlocal failures
        _say(f"   {'ok' if ok else 'UNEXPECTED'}: {what}")
        failures += 0 if ok else 1

    _say("1. A clean answer passes through unchanged")
    raw = await client.chat.completions.with_raw_response.create(
        model="demo-model", messages=[{"role": "user", "content": "How do I grow tomatoes?"}]
    )
    answer = raw.parse()
    _say(f"   answer: {(answer.choices[0].message.content or '')[:90]}...")
    check(
        raw.headers.get("x-governance-decision") == "allow",
        f"decision {raw.headers.get('x-governance-decision')}, "
        f"id {raw.headers.get('x-governance-decision-id')}",
    )
    _say()

    _say("2. An answer quoting an internal document is blocked")
    raw = await client.chat.completions.with_raw_response.create(
        model="demo-model", messages=[{"role": "user", "content": "Share the internal deploy note"}]
    )
    answer = raw.parse()
    _say(f"   answer: {answer.choices[0].message.content}")
    check(
        answer.choices[0].finish_reason == "content_filter",
        f"finish_reason {answer.choices[0].finish_reason}",
    )
    _say()

    _say("3. A streamed answer is cut mid-way when a secret key appears")
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model="demo-model", stream=True, messages=[{"role": "user", "content": "Tell me a story"}]
    )
    received, finish = [], None
    sys.stdout.write("   stream: ")
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                received.append(choice.delta.content)
                sys.stdout.write(choice.delta.content)
                sys.stdout.flush()
            finish = choice.finish_reason or finish
    _say(f"\n   ({len(''.join(received))} characters in {time.perf_counter() - started:.1f}s)")
    check(
        finish == "content_filter" and "sk-live" not in "".join(received),
        f"stream ended with finish_reason {finish}; the key never left the gateway",
    )
    _say()

    _say("4. An e-mail address is redacted, the rest of the answer kept")
    answer = await client.chat.completions.create(
        model="demo-model", messages=[{"role": "user", "content": "How do I contact support?"}]
    )
    text = answer.choices[0].message.content or ""
    _say(f"   answer: {text}")
    check("@" not in text and "[email]" in text, "address masked")
    _say()

    _say("5. The same over Anthropic's Messages API, streamed")
    aclient = anthropic.AsyncAnthropic(base_url=base, api_key="demo-key", max_retries=0)
    pieces, stop_reason = [], None
    async with aclient.messages.stream(
        model="demo-model",
        max_tokens=200,
        messages=[{"role": "user", "content": "Tell me a story"}],
    ) as astream:
        async for text_piece in astream.text_stream:
            pieces.append(text_piece)
        final = await astream.get_final_message()
        stop_reason = final.stop_reason
    check(
        stop_reason == "refusal" and "sk-live" not in "".join(pieces),
        f"stop_reason {stop_reason} after {len(''.join(pieces))} characters",
    )
    _say()

    _say("6. An answer copying a State of the Union address is stopped (copyright index)")
    answer = await client.chat.completions.create(
        model="demo-model", messages=[{"role": "user", "content": "Quote a historic address"}]
    )
    quoted = answer.choices[0]
    _say(f"   answer: {quoted.message.content}")
    check(quoted.finish_reason == "content_filter", f"finish_reason {quoted.finish_reason}")
    _say()

    token_path = Path(".gateway/admin-token")
    token = token_path.read_text().strip() if token_path.exists() else ""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"http://127.0.0.1:{admin_port}/governance/v1/decisions?limit=5",
            headers={"authorization": f"Bearer {token}"},
        ) as resp:
            records = (await resp.json()).get("decisions", [])
    _say(f"Latest decision records (GET /governance/v1/decisions, bearer token in {token_path}):")
    for rec in records:
        summary = {
            k: rec[k]
            for k in ("decision_id", "action", "breached", "chars_released", "added_latency_ms")
        }
        _say("   " + json.dumps(summary))
    _say()
    _say("Tour complete." if not failures else f"Tour finished with {failures} surprise(s).")
    return failures
