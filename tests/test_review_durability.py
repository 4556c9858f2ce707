"""An acknowledged hold survives SIGKILL: the gateway runs as a real process here."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import REVIEWER_TOKEN, write_policies
from tests.test_review_api import REVIEW_POLICIES, SAUCE

ROUNDS = 20
GATEWAY_BIN = Path(sys.executable).with_name("gateway")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, upstream: str, proxy_port: int, admin_port: int) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        listeners:
          proxy: {{host: 127.0.0.1, port: {proxy_port}}}
          admin: {{host: 127.0.0.1, port: {admin_port}}}
        routes:
          - name: default
            upstream: {upstream}
        policies: [policies]
        store: {{url: "sqlite:///{tmp_path / "gateway.db"}"}}
        data_dir: {tmp_path / "data"}
        log_level: warning
        auth:
          tokens:
            - {{name: rita, token: {REVIEWER_TOKEN}, roles: [reviewer]}}
        """)
    )
    return path


async def start_gateway(tmp_path: Path, upstream: str):
    proxy_port, admin_port = free_port(), free_port()
    config = write_config(tmp_path, upstream, proxy_port, admin_port)
    proc = await asyncio.create_subprocess_exec(
        str(GATEWAY_BIN),
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    admin = f"http://127.0.0.1:{admin_port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(400):
            if proc.returncode is not None:
                err = await proc.stderr.read()
                raise AssertionError(f"gateway exited: {err.decode()[-2000:]}")
            try:
                async with session.get(f"{admin}/readyz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        else:
            proc.kill()
            raise AssertionError("gateway did not become ready")
    return proc, f"http://127.0.0.1:{proxy_port}", admin


async def kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
async def test_acknowledged_holds_survive_sigkill(fake, tmp_path):
    write_policies(tmp_path / "policies", REVIEW_POLICIES)
    fake.script.text = SAUCE
    acknowledged: list[str] = []
    headers = {"authorization": "Bearer sk-durable"}
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(ROUNDS):
            proc, proxy, admin = await start_gateway(tmp_path, fake.url)
            try:
                # every item acknowledged before the last kill is in the queue after restart
                listing = await (
                    await session.get(
                        f"{admin}/governance/v1/reviews?limit=1000",
                        headers={"authorization": f"Bearer {REVIEWER_TOKEN}"},
                    )
                ).json()
                assert {i["id"] for i in listing["items"]} == set(acknowledged)
                async with session.post(
                    f"{proxy}/v1/chat/completions", json=body, headers=headers
                ) as resp:
                    assert resp.status == 200
                    await resp.read()
                    review_id = resp.headers["x-governance-review-id"]
            finally:
                await kill(proc)
            acknowledged.append(review_id)
        proc, proxy, admin = await start_gateway(tmp_path, fake.url)
        try:
            listing = await (
                await session.get(
                    f"{admin}/governance/v1/reviews?limit=1000",
                    headers={"authorization": f"Bearer {REVIEWER_TOKEN}"},
                )
            ).json()
            assert sorted(i["id"] for i in listing["items"]) == sorted(acknowledged)
            assert len(acknowledged) == ROUNDS
            poll = await session.get(
                f"{admin}/governance/v1/reviews/{acknowledged[0]}/result", headers=headers
            )
            assert (await poll.json())["status"] == "pending"
        finally:
            await kill(proc)
