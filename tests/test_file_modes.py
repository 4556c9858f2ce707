"""Secrets and state on disk are the gateway user's alone: folders 0700, files 0600.

The gateway starts for real (``serve``, with both listeners on ephemeral
ports) under the usual umask of 022, which on its own would leave every file
readable by everyone. Files left permissive by an earlier run are tightened.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.config import Listener, Listeners, Route, Settings, Store
from gateway.server import serve
from gateway.store.sqlite import SQLiteStore
from gateway.web.auth import TokenBook
from tests.conftest import write_policies


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def usual_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def settings(tmp_path: Path, data: Path, store: Path, **extra) -> Settings:
    write_policies(tmp_path / "policies", "policies:\n  - {id: p, kind: phrases, phrases: [x]}\n")
    return Settings(
        listeners=Listeners(proxy=Listener(port=0), admin={"port": 0}),
        routes=[Route(name="default", upstream="http://127.0.0.1:9")],
        policies=[str(tmp_path / "policies")],
        store=Store(url=f"sqlite:///{store}"),
        data_dir=str(data),
        **extra,
    )


@asynccontextmanager
async def running(s: Settings) -> AsyncIterator[None]:
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(s, ready=ready, stop=stop))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    assert waiter in done, "the gateway did not start"
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def test_a_fresh_start_makes_everything_private(tmp_path):
    data = tmp_path / "state" / ".gateway"
    db = data / "gateway.db"
    async with running(settings(tmp_path, data, db)):
        assert mode(data) == 0o700
        token = data / "admin-token"
        assert token.read_text().strip()
        assert mode(token) == 0o600
        assert mode(db) == 0o600
        # SQLite's write-ahead log and shared-memory index hold the same text as the database
        for side in ("gateway.db-wal", "gateway.db-shm"):
            assert (data / side).exists(), side
            assert mode(data / side) == 0o600, side
    # only the folder the gateway made is private; the one above it is the user's own
    assert mode(tmp_path / "state") == 0o755


async def test_a_start_tightens_what_an_earlier_run_left_open(tmp_path):
    data = tmp_path / ".gateway"
    data.mkdir(mode=0o755)
    token = data / "admin-token"
    token.write_text("an-old-secret\n")
    db = data / "gateway.db"
    # another reader (a backup script) has the database open in WAL mode
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("PRAGMA journal_mode=WAL")
        other.execute("CREATE TABLE note (t TEXT)")
        other.execute("INSERT INTO note VALUES ('x')")
        paths = [data, token, db, data / "gateway.db-wal", data / "gateway.db-shm"]
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)
        async with running(settings(tmp_path, data, db)):
            assert mode(data) == 0o700
            for path in paths[1:]:
                assert mode(path) == 0o600, path
            # the token itself is kept: scripts that read it keep working
            assert token.read_text() == "an-old-secret\n"
    finally:
        other.close()


async def test_a_data_dir_is_tightened_even_with_configured_tokens(tmp_path):
    data = tmp_path / ".gateway"
    data.mkdir(mode=0o777)
    data.chmod(0o777)
    tokens = {"tokens": [{"name": "a", "token": "t", "roles": ["admin"]}]}
    async with running(settings(tmp_path, data, tmp_path / "elsewhere.db", auth=tokens)):
        assert mode(data) == 0o700
        assert not (data / "admin-token").exists()


def test_an_empty_token_file_gets_a_secret_and_mode_0600(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    token = data / "admin-token"
    token.write_text("")
    token.chmod(0o666)
    book = TokenBook(settings(tmp_path, data, tmp_path / "g.db"))
    secret = token.read_text().strip()
    assert secret and book.lookup(secret) is not None
    assert mode(token) == 0o600 and mode(data) == 0o700


async def test_the_store_keeps_the_mode_of_a_shared_folder(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    store = SQLiteStore(f"sqlite:///{shared / 'g.db'}")
    await store.open()
    try:
        await store.execute("CREATE TABLE IF NOT EXISTS t (a INTEGER)")
        assert mode(shared) == 0o755
        assert mode(shared / "g.db") == 0o600
    finally:
        await store.close()
