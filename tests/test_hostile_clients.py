"""Hostile and careless clients cannot pin the gateway: idle and slowloris connections
are closed by the timeouts, caps shed with 503 and Retry-After, and every refusal is
JSON with a stable code, while normal requests keep succeeding.

The gateway runs as a real process; the clients speak raw TCP where HTTP
libraries would be too polite.
"""

from __future__ import annotations

import asyncio
import json
import resource
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ADMIN_TOKEN, write_policies
from tests.gateway_process import GatewayProcess, free_port, start_gateway, write_config
from tests.hostile import HostileUpstream

CHAT = "/v1/chat/completions"
HEADER_TIMEOUT = 2
IDLE = 2

pytestmark = pytest.mark.slow


def body(stream: bool = False) -> dict:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


@pytest.fixture(scope="module", autouse=True)
def many_files():
    """Room for a thousand client sockets here and as many in the gateway (it inherits this)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
async def hostile():
    async with HostileUpstream() as upstream:
        yield upstream


async def launch(tmp_path: Path, upstream: str, **limits) -> GatewayProcess:
    write_policies(tmp_path / "policies")
    proxy_port, admin_port = free_port(), free_port()
    settings = {
        "header_timeout": HEADER_TIMEOUT,
        "keepalive_timeout": 3,
        "body_timeout": 2,
        "max_connections": 1500,
        "max_streams": 2,
        "retry_after": 7,
        **limits,
    }
    config = write_config(
        tmp_path,
        upstream,
        proxy_port,
        admin_port,
        route_extra=f"timeouts: {{connect: 2, first_byte: 5, idle: {IDLE}, total: 60}}\n",
        extra="limits:\n" + "".join(f"  {k}: {v}\n" for k, v in settings.items()),
        tokens=f"- {{name: ops, token: {ADMIN_TOKEN}, roles: [admin]}}\n",
    )
    return await start_gateway(config, admin_port, proxy_port)


@pytest.fixture
async def gateway(tmp_path: Path, hostile: HostileUpstream):
    gw = await launch(tmp_path, hostile.url)
    try:
        yield gw
    finally:
        await gw.stop()


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def read_all(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``seconds`` pass)."""
    out = b""
    async with asyncio.timeout(seconds):
        while chunk := await reader.read(65536):
            out += chunk
    return out


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, payload


async def normal_request(session: aiohttp.ClientSession, gw: GatewayProcess) -> None:
    async with session.post(f"{gw.proxy}{CHAT}", json=body()) as resp:
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"]


async def test_idle_and_slowloris_connections_are_closed_while_requests_succeed(gateway):
    host, port = host_port(gateway.proxy)
    stop = asyncio.Event()
    Path(f"/proc/{gateway.pid}/clear_refs").write_text("5")
    before = gateway.rss()[0]

    async def idle() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            return await read_all(reader, HEADER_TIMEOUT + 40)
        finally:
            writer.close()

    async def slowloris() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            n = 0
            while not stop.is_set():
                await asyncio.sleep(0.5)
                writer.write(f"X-Slow-{n}: y\r\n".encode())
                n += 1

        feeding = asyncio.create_task(trickle())
        try:
            return await read_all(reader, HEADER_TIMEOUT + 40)
        finally:
            feeding.cancel()
            writer.close()

    clients = [asyncio.create_task(idle()) for _ in range(500)]
    clients += [asyncio.create_task(slowloris()) for _ in range(500)]
    # normal traffic keeps being served while the thousand connections are held
    async with aiohttp.ClientSession() as session:
        served = 0
        while not all(c.done() for c in clients):
            await normal_request(session, gateway)
            served += 1
            await asyncio.sleep(0.05)
        stop.set()
        answers = await asyncio.gather(*clients)
        assert served >= 5
        for raw in answers:
            status, headers, payload = split_response(raw)
            assert status == 408
            assert headers["content-type"] == "application/json"
            assert json.loads(payload)["error"]["code"] == "request-timeout"
        metrics = await (await session.get(f"{gateway.admin}/metrics")).text()
        assert 'gateway_shed_total{reason="header_timeout"} 1000.0' in metrics
        await normal_request(session, gateway)
    # a thousand held connections cost the process little memory
    peak = gateway.rss()[1]
    print("rss before / peak (MiB):", before / 2**20, peak / 2**20)
    assert peak - before < 32 * 2**20, (before, peak)


async def test_leading_blank_lines_do_not_pass_for_headers(gateway):
    """Blank lines before a request are skipped by the parser; they must not stop the clock."""
    host, port = host_port(gateway.proxy)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"\r\n\r\nPOST /v1/chat/completions HTTP/1.1\r\n")

    async def trickle() -> None:
        for n in range(100):
            await asyncio.sleep(0.3)
            writer.write(f"X-Slow-{n}: y\r\n".encode())

    feeding = asyncio.create_task(trickle())
    try:
        raw = await read_all(reader, HEADER_TIMEOUT + 10)
    finally:
        feeding.cancel()
        writer.close()
    status, _, payload = split_response(raw)
    assert status == 408
    assert json.loads(payload)["error"]["code"] == "request-timeout"


async def test_a_slow_body_is_timed_out(gateway):
    host, port = host_port(gateway.proxy)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"model": "gpt-test"'
    )
    raw = await read_all(reader, 15)
    writer.close()
    status, headers, payload = split_response(raw)
    assert status == 408
    assert json.loads(payload)["error"]["code"] == "request-timeout"


@pytest.mark.parametrize("listener", ["proxy", "admin"])
async def test_bytes_that_are_not_http_get_a_json_400(gateway, listener):
    host, port = host_port(getattr(gateway, listener))
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n")
    raw = await read_all(reader, 10)
    writer.close()
    status, headers, payload = split_response(raw)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    error = json.loads(payload)["error"]
    assert error["code"] == "malformed-http"
    assert error["message"].startswith("malformed HTTP request")


async def test_connections_over_the_cap_get_503_with_retry_after(tmp_path, hostile):
    gw = await launch(tmp_path, hostile.url, max_connections=20, header_timeout=3)
    try:
        host, port = host_port(gw.proxy)
        held = [await asyncio.open_connection(host, port) for _ in range(20)]
        reader, writer = await asyncio.open_connection(host, port)
        raw = await read_all(reader, 10)
        writer.close()
        status, headers, payload = split_response(raw)
        assert status == 503
        assert headers["retry-after"] == "7"
        assert json.loads(payload)["error"]["code"] == "overloaded"
        # once the idle ones time out, the listener serves again
        for r, _ in held:
            await read_all(r, 15)
        for _, w in held:
            w.close()
        async with aiohttp.ClientSession() as session:
            await normal_request(session, gw)
            metrics = await (await session.get(f"{gw.admin}/metrics")).text()
            assert 'gateway_shed_total{reason="connections"} 1.0' in metrics
    finally:
        await gw.stop()


async def test_streams_over_the_cap_get_503_in_the_protocol_shape(gateway, hostile):
    async with aiohttp.ClientSession() as session:
        # two endless streams fill the cap
        first = await session.post(
            f"{gateway.proxy}{CHAT}", json=body(True), headers={"x-hostile": "endless"}
        )
        second = await session.post(
            f"{gateway.proxy}{CHAT}", json=body(True), headers={"x-hostile": "endless"}
        )
        assert first.status == second.status == 200
        async with session.post(f"{gateway.proxy}{CHAT}", json=body(True)) as resp:
            assert resp.status == 503
            assert resp.headers["retry-after"] == "7"
            data = await resp.json()
            assert data["error"]["code"] == "overloaded"
            assert data["error"]["type"] == "api_error"
        # answers that are not streams are not held back by the stream cap
        await normal_request(session, gateway)
        first.close()
        second.close()
        # the slots come back when the streams end
        for _ in range(100):
            async with session.post(f"{gateway.proxy}{CHAT}", json=body(True)) as resp:
                if resp.status == 200:
                    await resp.read()
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("stream slots were not released")


async def test_a_client_that_stops_reading_releases_the_upstream(gateway, hostile):
    host, port = host_port(gateway.proxy)
    reader, writer = await asyncio.open_connection(host, port)
    payload = json.dumps(body(True)).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Hostile: fast-endless\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    # never read: the socket buffers fill, the gateway's writes stall, and it gives up
    for _ in range(300):
        if hostile.hung_up.get("fast-endless"):
            break
        await asyncio.sleep(0.1)
    writer.close()
    assert hostile.hung_up.get("fast-endless"), "the gateway kept reading for a stalled client"
    async with aiohttp.ClientSession() as session:
        await normal_request(session, gateway)


async def test_a_client_that_leaves_mid_stream_is_recorded_and_the_upstream_released(
    gateway, hostile
):
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{gateway.proxy}{CHAT}", json=body(True), headers={"x-hostile": "endless"}
        )
        decision_id = resp.headers["x-governance-decision-id"]
        await resp.content.readline()
        resp.close()
        for _ in range(100):
            if hostile.hung_up.get("endless"):
                break
            await asyncio.sleep(0.1)
        assert hostile.hung_up.get("endless")
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        for _ in range(100):
            got = await session.get(
                f"{gateway.admin}/governance/v1/decisions/{decision_id}", headers=auth
            )
            if got.status == 200:
                break
            await asyncio.sleep(0.1)
        record = await got.json()
        assert record["client_disconnected"] is True
        await normal_request(session, gateway)
