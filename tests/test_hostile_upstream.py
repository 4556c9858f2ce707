"""A hostile upstream never crashes, stalls or bloats the gateway: each misbehaviour
gets its exact error, the upstream is hung up on, and the gateway stays healthy.

The gateway runs as a real process, so its memory is its own to measure.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import write_policies
from tests.gateway_process import GatewayProcess, free_port, start_gateway, write_config
from tests.hostile import HostileUpstream

MiB = 1024 * 1024
EVENT_CAP = 4 * MiB
BODY_CAP = 8 * MiB
CHAT = "/v1/chat/completions"

pytestmark = pytest.mark.slow


def body(stream: bool) -> dict:
    return {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }


@pytest.fixture
async def hostile():
    async with HostileUpstream() as upstream:
        yield upstream


@pytest.fixture
async def gateway(tmp_path: Path, hostile: HostileUpstream):
    write_policies(tmp_path / "policies")
    proxy_port, admin_port = free_port(), free_port()
    config = write_config(
        tmp_path,
        hostile.url,
        proxy_port,
        admin_port,
        route_extra="timeouts: {connect: 2, first_byte: 2, idle: 2, total: 4}\n",
        extra=f"""\
            limits:
              max_upstream_body_bytes: {BODY_CAP}
              max_upstream_event_bytes: {EVENT_CAP}
            """,
    )
    gw = await start_gateway(config, admin_port, proxy_port)
    try:
        yield gw
    finally:
        await gw.stop()


def reset_peak(gw: GatewayProcess) -> int:
    """Reset the process's peak-RSS mark (Linux clear_refs), returning the RSS now."""
    Path(f"/proc/{gw.pid}/clear_refs").write_text("5")
    return gw.rss()[0]


async def expect_error(resp: aiohttp.ClientResponse, status: int, code: str) -> None:
    assert resp.status == status, await resp.text()
    data = await resp.json()
    assert data["error"]["code"] == code
    assert data["error"]["message"]
    assert resp.headers["x-governance-error-code"] == code


async def still_healthy(session: aiohttp.ClientSession, gw: GatewayProcess) -> None:
    async with session.get(f"{gw.admin}/healthz") as resp:
        assert resp.status == 200
    async with session.post(f"{gw.proxy}{CHAT}", json=body(False)) as resp:
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("mode", "stream", "status", "code"),
    [
        ("garbage", False, 502, "upstream-malformed-response"),
        ("wrong-shape", False, 502, "upstream-malformed-response"),
        ("stall-headers", False, 504, "upstream-timeout"),
        ("stall-headers", True, 504, "upstream-timeout"),
        ("stall-body", False, 504, "upstream-timeout"),
        ("reset", False, 502, "upstream-disconnected"),
        ("garbage-stream", True, 502, "upstream-malformed-response"),
    ],
)
async def test_misbehaviour_before_the_answer_gets_its_error(
    gateway: GatewayProcess, mode: str, stream: bool, status: int, code: str
):
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{gateway.proxy}{CHAT}", json=body(stream), headers={"x-hostile": mode}
        ) as resp:
            await expect_error(resp, status, code)
        await still_healthy(session, gateway)


async def stream_error(resp: aiohttp.ClientResponse) -> tuple[str, dict]:
    """The text a stream delivered and the error event that ended it."""
    assert resp.status == 200
    text, error = "", None
    async for line in resp.content:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        event = json.loads(line[6:])
        if "error" in event:
            error = event["error"]
            continue
        text += event["choices"][0]["delta"].get("content") or ""
    assert error is not None, f"no error event after {text!r}"
    return text, error


@pytest.mark.parametrize(
    ("mode", "code"),
    [("endless", "upstream-timeout"), ("reset-stream", "upstream-disconnected")],
)
async def test_misbehaviour_mid_stream_ends_with_an_error_event(
    gateway: GatewayProcess, hostile: HostileUpstream, mode: str, code: str
):
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{gateway.proxy}{CHAT}", json=body(True), headers={"x-hostile": mode}
        ) as resp:
            text, error = await stream_error(resp)
        assert error["code"] == code
        assert text  # what was scanned before the failure was delivered
        await still_healthy(session, gateway)
    if mode == "endless":
        assert hostile.hung_up["endless"]


@pytest.mark.parametrize(
    ("mode", "stream", "cap"), [("huge-event", True, EVENT_CAP), ("huge-body", False, BODY_CAP)]
)
async def test_an_answer_over_its_cap_is_refused_and_the_upstream_dropped(
    gateway: GatewayProcess, hostile: HostileUpstream, mode: str, stream: bool, cap: int
):
    """100 MiB of one SSE event that never ends, or of one JSON body."""
    before = reset_peak(gateway)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{gateway.proxy}{CHAT}", json=body(stream), headers={"x-hostile": mode}
        ) as resp:
            await expect_error(resp, 502, "upstream-malformed-response")
        peak = gateway.rss()[1]
        await still_healthy(session, gateway)
    # the gateway hung up long before the 100 MiB were sent, and held about the cap at most
    assert hostile.hung_up[mode]
    assert hostile.sent[mode] < 50 * MiB
    print(f"{mode}: rss before / peak (MiB):", before / MiB, peak / MiB)
    assert peak - before < 2 * cap, (before, peak)
