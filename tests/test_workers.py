"""``gateway serve --workers N``: N processes on the same ports, kept running by a parent.

The gateway runs as real processes. A worker is known by its decision
journal (``data_dir/journal/p<pid>-….lock``), which each process keeps
while it lives and deletes at a clean stop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.workers import EXIT_WORKERS_FAILING, Supervisor, fresh_metrics_dir
from tests.conftest import write_policies
from tests.gateway_process import (
    GATEWAY_BIN,
    GatewayProcess,
    free_port,
    start_gateway,
    write_config,
)

POLICY = "policies:\n  - {id: no-secret, kind: phrases, phrases: [internal use only]}\n"
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}]}


def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "journal"


def worker_pids(tmp_path: Path) -> set[int]:
    """The pids of the processes holding a journal (each worker holds one)."""
    return {int(p.name[1:].split("-")[0]) for p in journal_dir(tmp_path).glob("p*.lock")}


def records_by_pid(tmp_path: Path) -> dict[int, int]:
    """How many decision records each process's journal holds."""
    counts: dict[int, int] = {}
    for segment in journal_dir(tmp_path).glob("p*.jsonl"):
        pid = int(segment.name[1:].split("-")[0])
        lines = segment.read_bytes().rstrip(b"\x00").splitlines()
        counts[pid] = counts.get(pid, 0) + sum(1 for line in lines if line.startswith(b'{"r":'))
    return counts


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes: it serves nothing and holds no port
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def reaped(pid: int) -> bool:
    """Gone for good: its parent has collected it, so every thread has let go of its sockets.

    A killed process shows as a zombie while its other threads still exit,
    and until then its listening socket takes (and then resets) connections.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


async def until(check, what: str, deadline: float = 20.0):
    """Poll ``check`` until it returns something true; fail after ``deadline`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        found = check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def start_workers(tmp_path: Path, upstream: str, workers: int = 2) -> GatewayProcess:
    write_policies(tmp_path / "policies", POLICY)
    proxy_port, admin_port = free_port(), free_port()
    config = write_config(tmp_path, upstream, proxy_port, admin_port)
    gw = await start_gateway(config, admin_port, proxy_port, workers=workers)
    # the first worker answered /readyz; the others start once it listens
    await until(lambda: len(worker_pids(tmp_path)) == workers, f"{workers} workers")
    return gw


async def ask(session: aiohttp.ClientSession, proxy: str) -> dict:
    async with session.post(f"{proxy}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def ask_on_new_connections(proxy: str, count: int) -> None:
    # a new connection each time: the kernel picks the worker per connection
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(count):
            answer = await ask(session, proxy)
            assert answer["choices"][0]["message"]["content"].startswith("Hello")


async def scrape_requests(admin: str) -> float:
    """``gateway_requests_total`` summed over its series, from one scrape on a new connection."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.get(f"{admin}/metrics") as resp,
    ):
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_requests_total{")
    )


async def until_scraped(admin: str, expected: float, deadline: float = 10.0) -> None:
    """Scrape until every worker's snapshot (written about once a second) counts ``expected``.

    A scrape shows its own worker's counts live and the others' from their
    snapshots, so it must agree several times in a row, on whichever worker
    each scrape lands.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    agreed = 0
    while agreed < 5:
        seen = await scrape_requests(admin)
        agreed = agreed + 1 if seen == expected else 0
        assert loop.time() < end, f"scrapes count {seen}, not {expected}"
        await asyncio.sleep(0.1)


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


async def test_two_workers_serve_one_port_and_stop_cleanly(fake, tmp_path: Path):
    gw = await start_workers(tmp_path, fake.url)
    try:
        pids = worker_pids(tmp_path)
        assert gw.pid not in pids  # the parent serves nothing itself
        assert {parent_of(pid) for pid in pids} == {gw.pid}
        await ask_on_new_connections(gw.proxy, 40)
        # a record is journaled once its exchange is over, just after the answer
        served = await until(
            lambda: (counts := records_by_pid(tmp_path)) and sum(counts.values()) == 40 and counts,
            "40 journaled records",
        )
        assert {pid for pid, n in served.items() if n} == pids, served
        # a scrape lands on one worker and counts what every worker served
        await until_scraped(gw.admin, 40)
        for _ in range(6):
            assert await scrape_requests(gw.admin) == 40
        # a worker's own log lines say which worker wrote them
        fake.script.fault = "500"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(10):
                async with s.post(f"{gw.proxy}/v1/chat/completions", json=CHAT) as resp:
                    assert resp.status >= 500
        upstream_failed = [
            line for line in log_lines(gw.log) if line.get("logger", "").startswith("gateway.proxy")
        ]
        assert upstream_failed
        assert {line.get("worker") for line in upstream_failed} <= {0, 1}
        assert None not in {line.get("worker") for line in upstream_failed}

        gw.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(gw.proc.wait(), 40) == 0
    finally:
        await gw.stop()
    assert not [pid for pid in pids if alive(pid)]
    # every record was committed and every journal deleted
    assert not list(journal_dir(tmp_path).iterdir())


async def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(fake, tmp_path: Path):
    gw = await start_workers(tmp_path, fake.url)
    try:
        victim, survivor = sorted(worker_pids(tmp_path))
        await ask_on_new_connections(gw.proxy, 20)
        # once both snapshots hold them, what the victim counted outlives it
        await until_scraped(gw.admin, 20)
        os.kill(victim, signal.SIGKILL)
        await until(lambda: reaped(victim), "the killed worker to be gone")
        # whichever worker a connection lands on answers
        await ask_on_new_connections(gw.proxy, 10)
        replaced = await until(
            lambda: (worker_pids(tmp_path) - {victim, survivor}) or None, "a new worker"
        )
        (new,) = replaced
        assert parent_of(new) == gw.pid
        assert alive(survivor)
        # the new worker replays the killed one's journal and deletes it
        await until(lambda: victim not in worker_pids(tmp_path), "the dead journal's replay")
        await ask_on_new_connections(gw.proxy, 10)
        await until_scraped(gw.admin, 40)
        restarted = [
            line
            for line in log_lines(gw.log)
            if line["msg"] == "gateway worker died; restarting it"
        ]
        assert [(line["pid"], line["exit_status"]) for line in restarted] == [
            (victim, -signal.SIGKILL)
        ]
        assert restarted[0]["worker"] in (0, 1)
    finally:
        await gw.stop()
    assert gw.proc.returncode == 0
    assert not list(journal_dir(tmp_path).iterdir())


async def test_workers_stop_when_the_parent_is_killed(fake, tmp_path: Path):
    gw = await start_workers(tmp_path, fake.url)
    pids = worker_pids(tmp_path)
    await gw.kill()
    await until(lambda: not any(alive(pid) for pid in pids), "the workers to stop")


def serve(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    write_policies(tmp_path / "policies", POLICY)
    return subprocess.run(
        [str(GATEWAY_BIN), "serve", "--upstream", "http://127.0.0.1:9", *flags],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_worker_count_is_a_usage_error(tmp_path: Path, value: str):
    result = serve(tmp_path, "--workers", value)
    assert result.returncode == 2
    assert "argument --workers:" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_worker_count_in_the_file_points_at_it(tmp_path: Path):
    config = write_config(tmp_path, "http://127.0.0.1:9", free_port(), free_port())
    text = config.read_text().replace("listeners:\n", "listeners:\n  workers: 0\n")
    config.write_text(text)
    result = subprocess.run(
        [str(GATEWAY_BIN), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{config}:2:" in result.stderr
    assert "listeners.workers" in result.stderr


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_store_with_workers_is_refused(tmp_path: Path, url: str):
    result = serve(
        tmp_path,
        "--policies",
        "policies",
        "--store",
        url,
        "--port",
        str(free_port()),
        "--admin-port",
        str(free_port()),
        "--workers",
        "2",
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "in-memory" in lines[0] and "--workers 1" in lines[0]
    assert "sqlite:///path.db" in lines[0] and "PostgreSQL" in lines[0]


def test_an_in_memory_store_in_the_file_with_workers_is_refused(tmp_path: Path):
    config = write_config(
        tmp_path, "http://127.0.0.1:9", free_port(), free_port(), store_url="sqlite:///:memory:"
    )
    text = config.read_text().replace("listeners:\n", "listeners:\n  workers: 2\n")
    config.write_text(text)
    result = subprocess.run(
        [str(GATEWAY_BIN), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "in-memory" in result.stderr and "--workers 1" in result.stderr
    # no file named after the in-memory database was made beside the config
    assert not (tmp_path / ":memory:").exists()


def test_a_busy_port_with_workers_is_one_line(tmp_path: Path):
    with __import__("socket").socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = serve(
            tmp_path,
            "--policies",
            "policies",
            "--store",
            f"sqlite:///{tmp_path / 'g.db'}",
            "--port",
            str(port),
            "--admin-port",
            str(free_port()),
            "--workers",
            "2",
        )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"gateway: cannot start the proxy listener on 127.0.0.1:{port}: port {port} "
        "is already in use; change --port or listeners.proxy.port"
    ]


# -- the supervisor with stand-in workers ------------------------------------------------

# a worker that says it listens, then lives ``argv[1]`` seconds and exits 1
FLAKY = """
import os, sys, time
os.write(int(os.environ["GATEWAY_WORKER_READY_FD"]), b"ready\\n")
time.sleep(float(sys.argv[1]))
sys.exit(1)
"""


async def test_a_worker_that_keeps_dying_at_start_is_given_up_on(tmp_path: Path):
    supervisor = Supervisor(
        2,
        lambda slot: [sys.executable, "-c", FLAKY, "0" if slot else "600"],
        backoff_first=0.01,
        max_quick_failures=4,
        grace=5,
    )
    code = await asyncio.wait_for(supervisor.run(), 30)
    assert code == EXIT_WORKERS_FAILING
    assert supervisor.slots[1].restarts == 3
    # the healthy slot was stopped with the rest
    assert supervisor.slots[0].proc is not None
    assert supervisor.slots[0].proc.returncode == -signal.SIGTERM


async def test_a_worker_that_never_listens_stops_the_start(tmp_path: Path):
    supervisor = Supervisor(2, lambda slot: [sys.executable, "-c", "raise SystemExit(4)"])
    assert await asyncio.wait_for(supervisor.run(), 30) == 4
    # the second slot is not started after the first failed
    assert supervisor.slots[1].proc is None


def test_a_killed_parents_metrics_directory_is_swept_by_the_next(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    stale = tmp_path / f"gateway-metrics-{gone.stdout.strip()}-abc"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"x")
    live = tmp_path / f"gateway-metrics-{os.getpid()}-def"
    live.mkdir()
    fresh = Path(fresh_metrics_dir())
    assert fresh.parent == tmp_path and fresh.is_dir() and not list(fresh.iterdir())
    assert not stale.exists()
    assert live.exists()
