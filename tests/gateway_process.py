"""The gateway as a real process, for tests that kill it, flood it or measure its memory."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import aiohttp

GATEWAY_BIN = Path(sys.executable).with_name("gateway")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(
    tmp_path: Path,
    upstream: str,
    proxy_port: int,
    admin_port: int,
    *,
    extra: str = "",
    route_extra: str = "",
    tokens: str = "",
    store_url: str | None = None,
    policies: str = "policies",
) -> Path:
    """A ``gateway.yaml`` with one route to ``upstream`` and state under ``tmp_path``.

    The store is a SQLite file there unless ``store_url`` names another.
    """
    path = tmp_path / "gateway.yaml"
    sqlite = f"sqlite:///{tmp_path / 'gateway.db'}"
    body = textwrap.dedent(f"""\
        listeners:
          proxy: {{host: 127.0.0.1, port: {proxy_port}}}
          admin: {{host: 127.0.0.1, port: {admin_port}}}
        routes:
          - name: default
            upstream: {upstream}
        """)
    body += textwrap.indent(textwrap.dedent(route_extra), "    ")
    body += textwrap.dedent(f"""\
        policies: ["{policies}"]
        store: {{url: "{store_url or sqlite}"}}
        data_dir: {tmp_path / "data"}
        log_level: warning
        """)
    if tokens:
        body += "auth:\n  tokens:\n" + textwrap.indent(textwrap.dedent(tokens), "    ")
    body += textwrap.dedent(extra)
    path.write_text(body)
    return path


@dataclass
class GatewayProcess:
    proc: asyncio.subprocess.Process
    proxy: str
    admin: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> tuple[int, int]:
        """Resident and peak resident memory, in bytes (Linux ``/proc``)."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
        return fields["VmRSS"], fields["VmHWM"]

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        assert self.proc.returncode == -signal.SIGKILL

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                await self.kill()


async def start_gateway(
    config: Path,
    admin_port: int,
    proxy_port: int,
    env: dict[str, str] | None = None,
    workers: int = 1,
) -> GatewayProcess:
    """Start ``gateway serve --config`` and wait until ``/readyz`` says ready.

    The store is the one the config names, whatever ``GATEWAY_STORE_URL`` says;
    ``env`` adds variables (a sink's secret, say). One worker unless told:
    the process is then the gateway itself, not a supervisor.
    """
    environ = {k: v for k, v in os.environ.items() if k != "GATEWAY_STORE_URL"}
    environ.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(env or {})})
    # a file, not a pipe: a pipe nobody reads would block a gateway that logs a lot
    log = config.parent / "gateway.log"
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            str(GATEWAY_BIN),
            "serve",
            "--config",
            str(config),
            "--workers",
            str(workers),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            env=environ,
            cwd=str(config.parent),
        )
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        await wait_ready(proc, admin, log, seconds=30)
    except AssertionError:
        proc.kill()
        raise
    return GatewayProcess(proc, f"http://127.0.0.1:{proxy_port}", admin, log)


async def wait_ready(proc, admin: str, log: Path, *, seconds: float) -> None:
    """Until ``/readyz`` answers 200; fail with the log's end if the process exits or stalls."""
    async with aiohttp.ClientSession() as session:
        for _ in range(int(seconds / 0.05)):
            if proc.returncode is not None:
                raise AssertionError(f"gateway exited: {log.read_text()[-2000:]}")
            try:
                async with session.get(f"{admin}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"gateway did not become ready: {log.read_text()[-2000:]}")
